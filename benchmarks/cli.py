"""``tta-bench``: run the benchmark grid, rebuild its report, time methods and policies, train the source model.

A thin front end (style guide, principle 6): it parses arguments, calls :mod:`benchmarks.grid`,
:mod:`benchmarks.results`, :mod:`benchmarks.evaluate`, :mod:`benchmarks.report` and
:mod:`benchmarks.speed`, and is the only module of the benchmark that prints.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import streams
import tta
from benchmarks import grid

DEFAULT_DEVICE = "auto"


class _Fail(Exception):
    """A user error: printed as one message, exit status 2."""


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise _Fail(f"--device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise _Fail(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def _load_model(spec: str, dataset: str, device: Any, args: argparse.Namespace,
                arch: str | None = None, model_args: dict[str, Any] | None = None) -> Any:
    from benchmarks.models import load_model

    return load_model(spec, dataset=dataset, device=device, model_dir=args.model_dir, arch=arch,
                      model_args=model_args, trust_pickle=args.trust_pickle)


def _set_threads(threads: int | None) -> None:
    import torch

    if threads is None:
        return
    if threads < 1:
        raise _Fail(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def _out_folder(text: str) -> Path:
    """``--out`` as a path, refused (before anything is written) if it or a parent is not a folder, or
    the folder it would be created in is not writable."""
    out = Path(text).expanduser()
    if out.exists() and not out.is_dir():
        raise _Fail(f"--out {text}: exists and is not a folder; name a folder (new or a results folder)")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise _Fail(f"--out {text}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _Fail(f"--out {text}: no permission to write in {existing}")
    return out


# ---------------------------------------------------------------------------------------------- run


def _config_from_args(args: argparse.Namespace) -> grid.GridConfig:
    return grid.make_config(
        dataset=args.dataset,
        model=args.model,
        policies=args.policies,
        settings=args.setting,
        orders=args.order,
        corruptions=args.corruptions,
        severities=args.severity,
        seeds=args.seeds,
        batch_size=args.batch_size,
        n_examples=args.n_examples,
        options=args.option,
        arch=args.arch,
        model_args=args.model_arg,
        table=args.table,
        methods=args.methods,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from benchmarks import evaluate, metadata, results

    started, started_at = time.monotonic(), metadata.utc_now()
    out = _out_folder(args.out)
    # The lock comes first, so that a second run on the same folder is refused at once, whatever else;
    # a folder created here that stays empty is removed when the run ends.
    with results.FolderLock(out, created=results.make_folder(out)):
        # Everything that can fail on the arguments fails here, before anything is written into --out.
        config = _config_from_args(args)
        _executor_args(args)
        _set_threads(_unit_threads(args))  # serial units run in this process
        device = _device(args.device)
        model = _load_model(config.model, config.dataset, device, args, config.arch, config.model_args)
        if args.executor == "ray" or args.workers > 1:
            _check_sendable(model, args)
        source = evaluate.load_source(config, data_dir=args.data_dir)
        try:
            batch = evaluate.first_batch(config, source, cache_dir=args.cache_dir)
        except ImportError as error:  # e.g. a corruption's package is not installed
            raise _Fail(str(error)) from None
        evaluate.check_model_and_policies(config, model, batch, device=device)
        meta = metadata.read_meta(out)
        store = results.ResultStore.open(out, config)
        run_entry: dict[str, Any] = {"started": started_at, **metadata.environment(device),
                                     "executor": args.executor, "workers": args.workers,
                                     "worker_threads": _unit_threads(args)}
        before = len(store.rows())
        try:
            status = _run_grid(args, config, model, source, store, meta, device)
        finally:
            run_entry["seconds"] = round(time.monotonic() - started, 1)
            run_entry["results_added"] = len(store.rows()) - before
            meta.setdefault("runs", []).append(run_entry)
            metadata.write_meta(out, meta)
        if status:
            return status
        return _write_report(store.folder, store.rows(), config.to_json(), meta, config.policies, config.methods)


def _check_sendable(model: Any, args: argparse.Namespace) -> None:
    """Refuse a model the executor cannot send to its worker processes or tasks."""
    from benchmarks import executors

    try:
        executors.check_sendable(model, ray=args.executor == "ray")
    except ValueError as error:
        raise _Fail(f"--model {args.model}: {error}") from None


def _executor_args(args: argparse.Namespace) -> None:
    """Refuse executor flags that do not fit together, before anything is written."""
    if args.workers < 1:
        raise _Fail(f"--workers must be >= 1, got {args.workers}")
    if args.executor == "ray":
        if args.workers != 1:
            raise _Fail("--workers is for --executor local; on Ray the cluster's CPUs and --cpus-per-task "
                        "decide how many units run at once")
        if args.cpus_per_task <= 0 or args.gpus_per_task < 0:
            raise _Fail(f"--cpus-per-task must be > 0 and --gpus-per-task >= 0, got {args.cpus_per_task} "
                        f"and {args.gpus_per_task}")
        if args.device not in ("auto", "cpu") and args.gpus_per_task == 0:
            raise _Fail(f"--device {args.device} with --executor ray needs --gpus-per-task (e.g. 1, or 0.5 to "
                        "share a GPU): Ray hides the GPUs from tasks that do not ask for one")
        from benchmarks import executors

        try:
            executors.import_ray()
        except ImportError as error:
            raise _Fail(str(error)) from None
    else:
        given = [flag for flag, value, default in (("--ray-address", args.ray_address, None),
                                                    ("--cpus-per-task", args.cpus_per_task, 1.0),
                                                    ("--gpus-per-task", args.gpus_per_task, 0.0))
                 if value != default]
        if given:
            raise _Fail(f"{', '.join(given)}: only with --executor ray")


def _unit_threads(args: argparse.Namespace) -> int:
    """torch threads per unit: ``--threads``, else on Ray the task's ``--cpus-per-task``, else 1.

    The default does not depend on ``--workers``, so every executor and worker count gives the same
    rows: BatchNorm's fused statistics kernel (``stats.batch_moments``) sums a channels-last input in
    one partial per thread, so another thread count changes the last bits of the statistics, and
    now and then a prediction (measured: 1 row in 990 of a grid run at 2 threads and at 1). One
    thread per unit is also the efficient split of this benchmark's small units: cores are used by
    running units side by side (``--workers N``), not by splitting each small convolution.
    """
    if args.threads is not None:
        return args.threads
    if args.executor == "ray":
        return max(1, int(args.cpus_per_task))
    return 1


def _run_grid(args: argparse.Namespace, config: grid.GridConfig, model: Any, source: Any,
              store: Any, meta: dict[str, Any], device: Any) -> int:
    """Run the grid's missing rows into ``store`` on the chosen executor, showing progress; 130 if
    interrupted, 1 if a unit failed (the others' rows are kept), else 0."""
    from tqdm import tqdm

    from benchmarks import evaluate, executors, metadata, results

    keys = grid.row_keys(config)
    todo = [key for key in keys if not store.done(key)]
    with_method = config.methods != (grid.NO_METHOD,)  # name the method in every line, unless only none
    methods = f"{len(config.methods)} methods x " if with_method else ""
    print(
        f"{len(keys)} results in the grid ({methods}{len(config.policies)} policies x {len(grid.expand(config))} "
        f"streams); {len(keys) - len(todo)} already in {store.results_path}", flush=True
    )
    if "clean_error" not in meta:  # once per folder; a resumed run reuses it
        try:
            meta["clean_error"] = evaluate.clean_error(config, model, source, cache_dir=args.cache_dir, device=device)
        except (ValueError, OSError, RuntimeError) as error:  # e.g. no clean split: recorded, not fatal
            meta["clean_error"] = {"unavailable": str(error)}
        metadata.write_meta(store.folder, meta)
        if "error" in meta["clean_error"]:
            print(f"clean error of the unadapted model: {meta['clean_error']['error']:.1f}% "
                  f"on {meta['clean_error']['n']} clean test images", flush=True)
    units = evaluate.units(config, store.done)
    if not units:
        return 0
    # A redrawn bar only on a terminal; elsewhere (CI logs, a file, --no-progress) one line per result.
    bar = tqdm(total=len(keys), initial=len(keys) - len(todo), unit="result", dynamic_ncols=True) \
        if sys.stdout.isatty() and not args.no_progress else None
    finished = len(keys) - len(todo)

    def on_batch(unit: evaluate.Unit, tallies: dict[tuple[str, str], dict[Any, Any]]) -> None:
        if bar is None:
            return
        bar.set_description(unit.describe(with_method=with_method).split(" (")[0], refresh=False)
        postfix = {}
        for (method, policy), per_domain in tallies.items():  # each learner's running error in this episode
            n = sum(t.n for t in per_domain.values())
            wrong = sum(t.errors for t in per_domain.values())
            postfix[f"{method}/{policy}" if with_method else policy] = f"{100.0 * wrong / max(n, 1):.1f}%"
        bar.set_postfix(postfix)

    serial = args.executor == "local" and args.workers == 1
    # workers get the model on the CPU (a Ray node may have no GPU) and move it to their own device
    job = executors.Job(config, model if serial else copy.deepcopy(model).cpu(), data_dir=args.data_dir,
                        cache_dir=args.cache_dir,
                        device="auto" if args.executor == "ray" and args.device == "auto" else str(device),
                        threads=_unit_threads(args))
    if args.executor == "ray":
        outcomes = executors.run_on_ray(job, units, address=args.ray_address, cpus_per_task=args.cpus_per_task,
                                        gpus_per_task=args.gpus_per_task)
    elif serial:
        outcomes = executors.run_here(job, units, source=source, on_batch=on_batch)
    else:
        outcomes = executors.run_in_processes(job, units, workers=args.workers)
    failed: list[executors.Outcome] = []
    with contextlib.closing(outcomes):
        try:
            for done, outcome in enumerate(outcomes, start=1):
                if outcome.error is not None:
                    failed.append(outcome)
                rows = [row for row in outcome.rows if not store.done(grid.row_key(row))]
                store.append(rows)
                finished += len(rows)
                units_now = f"units: {outcome.running} running, {done}/{len(units)} done"
                if bar is not None:
                    bar.update(len(rows))
                    bar.set_description(units_now)
                    continue
                for i, row in enumerate(rows, start=finished - len(rows) + 1):
                    described = results.describe_key(grid.row_key(row), with_method=with_method)
                    print(f"[{i}/{len(keys)}] {described}: error {row['error']:.1f}% ({units_now})", flush=True)
                if outcome.error is not None:
                    print(f"failed: {outcome.unit.describe(with_method=with_method)}: {outcome.error} ({units_now})",
                          flush=True)
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            print(
                f"\ninterrupted: {len(store.rows())} of {len(keys)} results are saved in {store.results_path}; "
                "rerun the same command to resume",
                file=sys.stderr,
            )
            return 130
    if bar is not None:
        bar.close()
    if failed:
        print(f"\nthe grid is incomplete: {len(failed)} of {len(units)} units failed after {executors.RETRIES + 1} "
              f"attempts; the other {len(store.rows())} of {len(keys)} results are saved in {store.results_path}:",
              file=sys.stderr)
        for outcome in failed:
            print(f"  {outcome.unit.describe(with_method=with_method)}: {outcome.error}", file=sys.stderr)
        print("rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def _write_report(folder: Path, rows: list[dict[str, Any]], config: dict[str, Any] | None,
                  meta: dict[str, Any], policies: Sequence[str] | None, methods: Sequence[str] | None) -> int:
    from benchmarks import report

    rows = report.in_grid_order(rows, config)
    paths = report.write_report(folder, rows, config=config, metadata=meta)
    print()
    if config:
        print(f"Mean error (%) over domains, {config['dataset']}, model {config['model']}:")
    print(report.summary_table(rows, policies=policies, methods=methods, config=config))
    print()
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


# ------------------------------------------------------------------------------------------- report


def cmd_report(args: argparse.Namespace) -> int:
    from benchmarks import metadata, report, results

    folder = Path(args.dir)
    rows, duplicates = results.read_results(folder / results.RESULTS_NAME)
    if not rows:
        raise _Fail(f"{folder / results.RESULTS_NAME}: no results found")
    if duplicates:
        print(f"warning: {len(duplicates)} result(s) stored more than once in {folder / results.RESULTS_NAME}, "
              f"each counted once (the first stored): "
              f"{'; '.join(results.describe_key(grid.row_key(row)) for row in duplicates)}", file=sys.stderr)
    config = results.read_config_json(folder)
    meta = metadata.read_meta(folder)
    policies = config["policies"] if config else None
    methods = config.get("methods", [grid.NO_METHOD]) if config else None
    rows = report.in_grid_order(rows, config)
    paths = report.write_report(folder, rows, config=config, metadata=meta)
    print(report.summary_table(rows, policies=policies, methods=methods, config=config))
    print()
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


# -------------------------------------------------------------------------------------------- speed


def cmd_speed(args: argparse.Namespace) -> int:
    import torch
    from tabulate import tabulate

    from benchmarks import speed

    policies = grid.parse_policies(args.policies)
    methods = grid.parse_methods(args.methods)
    options = grid.parse_options(args.option, policies, methods)
    dataset = streams.get_dataset(args.dataset)
    speed.check_sizes(batch_size=args.batch_size, warmup=args.warmup, repeats=args.repeats,
                      batches_per_repeat=args.batches_per_repeat)
    _set_threads(args.threads)
    device = _device(args.device)
    model = _load_model(grid.normalize_model(args.model), args.dataset, device, args, args.arch,
                        grid.parse_model_args(args.model_arg))
    with_method = methods != (grid.NO_METHOD,)
    counted = f"{len(methods)} methods x {len(policies)}" if with_method else f"{len(policies)}"
    print(
        f"timing {counted} policies on {args.model} ({args.dataset} input), batch {args.batch_size}, "
        f"{device}, {torch.get_num_threads()} threads{', compiled (inductor)' if args.compile else ''}: "
        f"median of {args.repeats} round-robin runs of {args.batches_per_repeat} batches after "
        f"{args.warmup} warm-up batches"
    )
    measured = speed.measure_speed(
        model,
        policies,
        input_shape=dataset.input_shape,
        batch_size=args.batch_size,
        options=options,
        methods=methods,
        warmup=args.warmup,
        repeats=args.repeats,
        batches_per_repeat=args.batches_per_repeat,
        device=device,
        compile=args.compile,
    )

    def rate(images_per_s: float) -> str:
        return f"{images_per_s:,.0f}" if images_per_s >= 100 else f"{images_per_s:.1f}"

    table = [[*([r.method] if with_method else []), r.policy, rate(r.images_per_s), f"{r.ratio_to_unadapted:.2f}",
              f"{r.spread[0]:.2f}-{r.spread[1]:.2f}", f"{r.ratio_to_source:.2f}",
              *([f"{r.compile_s:.1f}", "yes" if r.recompiles_on_batch_change else "no"] if args.compile else [])]
             for r in measured]
    headers = [*(["method"] if with_method else []), "policy", "images/s", "x unadapted", "spread (IQR)",
               "x source", *(["first call (s)", "recompiles on batch change"] if args.compile else [])]
    first = measured[0]
    compiled = (f" (compiled: first call {first.unadapted_compile_s:.1f} s; a batch of {first.other_batch_size} "
                f"{'recompiles' if first.unadapted_recompiles else 'reuses the graph'})") if args.compile else ""
    print(f"unadapted model: {rate(first.unadapted_images_per_s)} images/s{compiled}; spread: quartiles of the "
          "per-round ratios to it")
    print(tabulate(table, headers=headers, tablefmt="github", disable_numparse=True))
    return 0


# ------------------------------------------------------------------------------------- train-source


def cmd_train_source(args: argparse.Namespace) -> int:
    from benchmarks.train_source import default_out, train_source

    _set_threads(args.threads)
    logging.getLogger().setLevel(logging.INFO)
    options: dict[str, Any] = {"seed": args.seed, "root": args.root}
    if args.epochs is not None:
        options["epochs"] = args.epochs
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    if args.lr is not None:
        options["lr"] = args.lr
    if args.device != DEFAULT_DEVICE:
        options["device"] = _device(args.device)
    out = Path(args.out).expanduser() if args.out else default_out()
    if out.exists() and out.is_dir():
        raise _Fail(f"--out {args.out}: is a folder; name the checkpoint file")
    result = train_source(out, **options)
    print(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}; evaluate it with: tta-bench run --model {out} --arch bundled ...")
    return 0


# ------------------------------------------------------------------------------------------- parser


THREADS_HELP = (
    "CPU threads for torch (torch.set_num_threads). Default: PyTorch's own (one per core), the fastest "
    "on an idle machine; on a shared or loaded machine pass 1, as contended OpenMP threads can be "
    "several times slower than one"
)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="bundled",
                        help="bundled, robustbench:<name>, torchvision:<name>, timm:<name>, "
                             "package.module:callable, or a file: a state dict (with --arch), or a whole "
                             "pickled model (only with --trust-pickle)")
    parser.add_argument("--arch", default=None,
                        help="architecture of a state-dict --model file: bundled, torchvision:<name>, "
                             "timm:<name> or package.module:callable; the file is read with "
                             "weights_only=True, so no code in it runs")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword argument of a package.module:callable model or of --arch, e.g. "
                             "num_classes=10 (repeatable; value is a Python literal, never evaluated code)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow a --model file that is a whole pickled nn.Module (torch.save(model)). "
                             "Unpickling runs whatever code the file contains: use only for files you "
                             "trust")
    parser.add_argument("--model-dir", default=None,
                        help="RobustBench checkpoint folder (default: $TTA_CACHE_DIR/models)")


def _dataset_folders() -> str:
    """The folders ``--data-dir`` may hold, from the dataset catalogue: ``"A/, B/ or C/"``."""
    folders = [f"{info.folder}/" for info in map(streams.get_dataset, streams.list_datasets()) if info.needs_files]
    return " or ".join([", ".join(folders[:-1]), folders[-1]]) if len(folders) > 1 else "".join(folders)


def build_parser() -> argparse.ArgumentParser:
    """The ``tta-bench`` argument parser (subcommands run, report, speed, train-source)."""
    parser = argparse.ArgumentParser(
        prog="tta-bench", description="Benchmark test-time normalization policies on corrupted test streams."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {tta.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,report,speed,train-source}")

    run = sub.add_parser("run", help="evaluate methods and policies over a grid of streams; resumable",
                         description="Evaluate over the grid methods x policies x settings x orders x seeds "
                                     "x domains. Results are appended to OUT/results.jsonl as they finish; "
                                     "rerunning the same command resumes. One run at a time per OUT folder "
                                     "(a second is refused). Models take images in [0, 1].")
    run.add_argument("--dataset", default="fmnist-c", help=f"one of {', '.join(streams.list_datasets())} (default fmnist-c)")
    run.add_argument("--data-dir", default=None, help=f"folder holding {_dataset_folders()} (not needed for fmnist-c)")
    run.add_argument("--cache-dir", default=None,
                     help="where corrupted images are cached (default: the streams default, $TTA_CACHE_DIR)")
    _add_model_arguments(run)
    run.add_argument("--policies", default="all", help="comma list of policies, or all (default)")
    run.add_argument("--methods", default=grid.NO_METHOD,
                     help=f"comma list of methods stacked on each policy ({', '.join(tta.list_methods())}), or all; "
                          "default none: the policies alone")
    run.add_argument("--setting", default="single", help="comma list of single, continual, mixed, gradual")
    run.add_argument("--order", default="iid", help="comma list of iid, sorted, dirichlet:<delta>, slots:<gamma>")
    run.add_argument("--corruptions", default="all",
                     help="comma list, all (the 15, default) or none (the clean test set)")
    run.add_argument("--severity", default="5", help="severity 1-5, or a comma list (default 5)")
    run.add_argument("--table", default=None, choices=grid.TABLES,
                     help="corruption parameter table (default: chosen from the image size)")
    run.add_argument("--batch-size", type=int, default=64)
    run.add_argument("--n-examples", type=int, default=None, help="images per domain (default: all)")
    run.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
    run.add_argument("--option", action="append", default=[], metavar="NAME.KEY=VALUE",
                     help="a policy or method option, e.g. alpha_bn.alpha=0.2 or tent.lr=1e-4 (repeatable; "
                          "value is a Python literal)")
    run.add_argument("--out", required=True, metavar="DIR", help="results folder (created; reused to resume)")
    run.add_argument("--device", default=DEFAULT_DEVICE, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    run.add_argument("--threads", type=int, default=None,
                     help="torch threads per unit (default 1, or --cpus-per-task on Ray: the same for every "
                          "executor and number of workers, so that the rows are too; use cores through "
                          "--workers)")
    run.add_argument("--workers", type=int, default=1,
                     help="local worker processes running the grid's units at once (default 1: in this "
                          "process), e.g. the number of cores; each runs its units with --threads")
    run.add_argument("--executor", default="local", choices=("local", "ray"),
                     help="local (this machine, --workers) or ray: the units as Ray tasks on a cluster "
                          "(needs the extra: pip install 'tta[ray]')")
    run.add_argument("--ray-address", default=None,
                     help="Ray cluster to connect to, e.g. auto or ray://host:10001 (default: $RAY_ADDRESS, "
                          "else a new local Ray)")
    run.add_argument("--cpus-per-task", type=float, default=1.0,
                     help="Ray CPUs per unit (default 1; also the task's torch threads unless --threads)")
    run.add_argument("--gpus-per-task", type=float, default=0.0,
                     help="Ray GPUs per unit, e.g. 1 or 0.5 (default 0; needed for --device cuda)")
    run.add_argument("--no-progress", action="store_true",
                     help="no progress bar: one line per finished result instead (always so when stdout "
                          "is not a terminal)")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="rebuild report.md, results.csv and errors.png from DIR/results.jsonl")
    rep.add_argument("dir", metavar="DIR")
    rep.set_defaults(func=cmd_report)

    spd = sub.add_parser("speed", help="images/s of each method x policy and its ratios to the unadapted model "
                                       "and to source")
    spd.add_argument("--dataset", default="fmnist-c", help="decides the input size and the model's classes")
    _add_model_arguments(spd)
    spd.add_argument("--policies", default="all")
    spd.add_argument("--methods", default=grid.NO_METHOD,
                     help="comma list of methods, or all; default none (the policies alone)")
    spd.add_argument("--batch-size", type=int, default=64)
    spd.add_argument("--option", action="append", default=[], metavar="NAME.KEY=VALUE")
    spd.add_argument("--warmup", type=int, default=3, help="untimed batches per policy first (default 3)")
    spd.add_argument("--repeats", type=int, default=10, help="timed runs per policy; the median is reported")
    spd.add_argument("--batches-per-repeat", type=int, default=5, help="batches in one timed run")
    spd.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    spd.add_argument("--device", default=DEFAULT_DEVICE)
    spd.add_argument("--compile", action="store_true",
                     help="time torch.compile(model, fullgraph=True) of every model, the unadapted one included")
    spd.set_defaults(func=cmd_speed)

    trn = sub.add_parser("train-source", help="train the bundled Fashion-MNIST model")
    trn.add_argument("--out", default=None,
                     help="checkpoint path (default: fmnist_resnet.pt in the tta cache, $TTA_CACHE_DIR); "
                          "the shipped weights are replaced only if this names their file")
    trn.add_argument("--epochs", type=int, default=None, help="default: the shipped checkpoint's recipe")
    trn.add_argument("--seed", type=int, default=0)
    trn.add_argument("--root", default=None, help="folder with the raw Fashion-MNIST training files")
    trn.add_argument("--batch-size", type=int, default=None)
    trn.add_argument("--lr", type=float, default=None)
    trn.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    trn.add_argument("--device", default=DEFAULT_DEVICE)
    trn.set_defaults(func=cmd_train_source)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tta-bench``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from benchmarks.results import FolderInUseError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (_Fail, ValueError, FileNotFoundError, FolderInUseError) as error:
        print(f"tta-bench {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
