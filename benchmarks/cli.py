"""``tta-bench``: run the benchmark grid, rebuild its report, time methods and policies, train the source model.

A thin front end: it parses arguments, calls the functions a notebook would (:func:`tta_bench.run.run_grid`,
:mod:`tta_bench.report`, :mod:`tta_bench.speed`, :func:`tta_bench.train_source.train_source`), and is the
only module of the benchmark that prints. The guide and the generated reference are on :doc:`/cli`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tta
import tta_streams
from tta_bench import grid
from tta_bench.model_families import FAMILIES

if TYPE_CHECKING:
    from tta_bench import run

DEFAULT_DEVICE = "auto"


class _Fail(Exception):
    """A user error: printed as one message, exit status 2."""


def _load_model(
    spec: str,
    dataset: str,
    device: Any,
    args: argparse.Namespace,
    arch: str | None = None,
    model_args: dict[str, Any] | None = None,
) -> Any:
    from tta_bench.models import load_model

    return load_model(
        spec,
        dataset=dataset,
        device=device,
        model_dir=args.model_dir,
        arch=arch,
        model_args=model_args,
        trust_pickle=args.trust_pickle,
    )


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
        window=args.window,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from tta_bench import run

    printer = _ProgressPrinter(show_bar=sys.stdout.isatty() and not args.no_progress)
    try:
        result = run.run_grid(
            lambda: _config_from_args(args),
            args.out,
            model_name=args.model,
            model_dir=args.model_dir,
            trust_pickle=args.trust_pickle,
            executor=args.executor,
            workers=args.workers,
            threads=args.threads,
            device=args.device,
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
            ray_address=args.ray_address,
            cpus_per_task=args.cpus_per_task,
            gpus_per_task=args.gpus_per_task,
            images=args.images,
            progress=printer,
        )
    finally:
        printer.close()
    with_method = result.config.methods != (grid.NO_METHOD,)
    if result.status == "interrupted":
        print(
            f"\ninterrupted: {len(result.rows)} of {result.total} results are saved in {result.results_path}; "
            "rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    if result.status == "failed":
        from tta_bench.executors import RETRIES

        print(
            f"\nthe grid is incomplete: {len(result.failures)} of {result.units} units failed after {RETRIES + 1} "
            f"attempts; the other {len(result.rows)} of {result.total} results are saved in "
            f"{result.results_path}:",
            file=sys.stderr,
        )
        for outcome in result.failures:
            print(f"  {outcome.unit.describe(with_method=with_method)}: {outcome.error}", file=sys.stderr)
        print("rerun the same command to retry them", file=sys.stderr)
        return 1
    config = result.config
    print()
    print(f"Mean error (%) over domains, {config.dataset}, model {config.model}:")
    _print_report(result.rows, config.to_json(), config.policies, config.methods, result.report)
    return 0


class _ProgressPrinter:
    """Prints a grid's progress (:mod:`tta_bench.run` events): a redrawn bar on a terminal; elsewhere
    (CI logs, a file, ``--no-progress``) one line per result."""

    def __init__(self, *, show_bar: bool) -> None:
        self.show_bar = show_bar
        self.bar: Any = None
        self.with_method = False

    def __call__(self, event: run.Event) -> None:
        from tta_bench import results, run

        if isinstance(event, run.GridPlanned):
            config = event.config
            self.with_method = config.methods != (grid.NO_METHOD,)  # name the method in every line, unless only none
            methods = f"{len(config.methods)} methods x " if self.with_method else ""
            print(
                f"{event.total} results in the grid ({methods}{len(config.policies)} policies x {event.streams} "
                f"streams); {event.done} already in {event.results_path}",
                flush=True,
            )
        elif isinstance(event, run.CleanErrorMeasured):
            print(f"clean error of the unadapted model: {event.error:.1f}% on {event.n} clean test images", flush=True)
        elif isinstance(event, run.UnitsStarted):
            if self.show_bar:
                from tqdm import tqdm

                self.bar = tqdm(total=event.total, initial=event.done, unit="result", dynamic_ncols=True)
        elif isinstance(event, run.BatchDone):
            if self.bar is None:
                return
            self.bar.set_description(event.unit.describe(with_method=self.with_method).split(" (")[0], refresh=False)
            postfix = {}
            for (method, policy), per_domain in event.tallies.items():  # each learner's running error in this episode
                n = sum(t.n for t in per_domain.values())
                wrong = sum(t.errors for t in per_domain.values())
                postfix[f"{method}/{policy}" if self.with_method else policy] = f"{100.0 * wrong / max(n, 1):.1f}%"
            self.bar.set_postfix(postfix)
        elif isinstance(event, run.UnitFinished):
            units_now = f"units: {event.outcome.running} running, {event.done}/{event.units} done"
            if self.bar is not None:
                self.bar.update(len(event.rows))
                self.bar.set_description(units_now)
                return
            for i, row in enumerate(event.rows, start=event.finished - len(event.rows) + 1):
                described = results.describe_key(grid.row_key(row), with_method=self.with_method)
                print(f"[{i}/{event.total}] {described}: error {row['error']:.1f}% ({units_now})", flush=True)
            if event.outcome.error is not None:
                print(
                    f"failed: {event.outcome.unit.describe(with_method=self.with_method)}: {event.outcome.error} "
                    f"({units_now})",
                    flush=True,
                )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _print_report(
    rows: list[dict[str, Any]],
    config: dict[str, Any] | None,
    policies: Sequence[str] | None,
    methods: Sequence[str] | None,
    paths: dict[str, Path],
) -> None:
    from tta_bench import report

    print(report.summary_table(rows, policies=policies, methods=methods, config=config))
    print()
    for name, path in paths.items():
        print(f"{name}: {path}")


# ------------------------------------------------------------------------------------------- report


def cmd_report(args: argparse.Namespace) -> int:
    from tta_bench import metadata, report, results

    folder = Path(args.dir)
    path = results.results_file(folder)
    rows, duplicates = results.read_results(path)
    if not rows:
        raise _Fail(f"{path}: no results found")
    if duplicates:
        print(
            f"warning: {len(duplicates)} result(s) stored more than once in {path}, "
            f"each counted once (the first stored): "
            f"{'; '.join(results.describe_key(grid.row_key(row)) for row in duplicates)}",
            file=sys.stderr,
        )
    config = results.read_config_json(folder)
    meta = metadata.read_meta(folder)
    policies = config["policies"] if config else None
    methods = config.get("methods", [grid.NO_METHOD]) if config else None
    rows = report.in_grid_order(rows, config)
    try:
        report.compared_pairs(rows, args.compare)
    except ValueError as error:
        raise _Fail(str(error)) from None
    out = Path(args.out) if args.out else folder
    if args.out:
        out.mkdir(parents=True, exist_ok=True)
    paths = report.write_report(out, rows, config=config, metadata=meta, compare=args.compare)
    _print_report(rows, config, policies, methods, paths)
    return 0


# -------------------------------------------------------------------------------------------- speed


def cmd_speed(args: argparse.Namespace) -> int:
    import torch
    from tabulate import tabulate

    from tta_bench import speed
    from tta_bench.run import resolve_device, set_threads

    policies = grid.parse_policies(args.policies)
    methods = grid.parse_methods(args.methods)
    options = grid.parse_options(args.option, policies, methods)
    dataset = tta_streams.get_dataset(args.dataset)
    speed.check_sizes(
        batch_size=args.batch_size, warmup=args.warmup, repeats=args.repeats, batches_per_repeat=args.batches_per_repeat
    )
    set_threads(args.threads)
    device = resolve_device(args.device)
    model = _load_model(
        grid.normalize_model(args.model), args.dataset, device, args, args.arch, grid.parse_model_args(args.model_arg)
    )
    with_method = methods != (grid.NO_METHOD,)
    counted = f"{len(methods)} methods x {len(policies)}" if with_method else f"{len(policies)}"
    heading = (
        f"timing {counted} policies on {args.model} ({args.dataset} input), batch {args.batch_size}, "
        f"{device}, {torch.get_num_threads()} threads{', compiled (inductor)' if args.compile else ''}: "
        f"median of {args.repeats} round-robin runs of {args.batches_per_repeat} batches after "
        f"{args.warmup} warm-up batches"
    )
    print(heading)
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

    table = [
        [
            *([r.method] if with_method else []),
            r.policy,
            rate(r.images_per_s),
            f"{r.ratio_to_unadapted:.2f}",
            f"{r.spread[0]:.2f}-{r.spread[1]:.2f}",
            f"{r.ratio_to_source:.2f}",
            *([f"{r.compile_s:.1f}", "yes" if r.recompiles_on_batch_change else "no"] if args.compile else []),
        ]
        for r in measured
    ]
    headers = [
        *(["method"] if with_method else []),
        "policy",
        "images/s",
        "x unadapted",
        "spread (IQR)",
        "x source",
        *(["first call (s)", "recompiles on batch change"] if args.compile else []),
    ]
    first = measured[0]
    compiled = (
        (
            f" (compiled: first call {first.unadapted_compile_s:.1f} s; a batch of {first.other_batch_size} "
            f"{'recompiles' if first.unadapted_recompiles else 'reuses the graph'})"
        )
        if args.compile
        else ""
    )
    unadapted = (
        f"unadapted model: {rate(first.unadapted_images_per_s)} images/s{compiled}; spread: quartiles of the "
        "per-round ratios to it"
    )
    text = tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)
    print(unadapted)
    print(text)
    if args.out:
        from tta_bench.metadata import environment, utc_now

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        env = ", ".join(f"{key} {value}" for key, value in environment(device).items())
        out.write_text(f"{heading}.\n\n{unadapted}.\n\n{text}\n\nMeasured {utc_now()}: {env}.\n", encoding="utf-8")
        print(f"table: {out}")
    return 0


# ------------------------------------------------------------------------------------- train-source


def cmd_train_source(args: argparse.Namespace) -> int:
    from tta_bench.run import resolve_device, set_threads
    from tta_bench.train_source import default_out, train_source

    set_threads(args.threads)
    logging.getLogger().setLevel(logging.INFO)
    options: dict[str, Any] = {"seed": args.seed, "root": args.root}
    if args.epochs is not None:
        options["epochs"] = args.epochs
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    if args.lr is not None:
        options["lr"] = args.lr
    if args.device != DEFAULT_DEVICE:
        options["device"] = resolve_device(args.device)
    out = Path(args.out).expanduser() if args.out else default_out(args.arch)
    if out.exists() and out.is_dir():
        raise _Fail(f"--out {args.out}: is a folder; name the checkpoint file")
    result = train_source(out, arch=args.arch, **options)
    print(json.dumps(result, indent=2, default=str))
    arch = "bundled" if args.arch == "resnet" else f"tta_bench.model_families:{FAMILIES[args.arch].__name__}"
    print(f"wrote {out}; evaluate it with: tta-bench run --model {out} --arch {arch} ...")
    return 0


# ------------------------------------------------------------------------------------------- parser


THREADS_HELP = (
    "CPU threads for torch (torch.set_num_threads). Default: PyTorch's own (one per core), the fastest "
    "on an idle machine; on a shared or loaded machine pass 1, as contended OpenMP threads can be "
    "several times slower than one"
)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="bundled",
        help="bundled, robustbench:<name>, torchvision:<name>, timm:<name>, "
        "package.module:callable, or a file: a state dict (with --arch), or a whole "
        "pickled model (only with --trust-pickle)",
    )
    parser.add_argument(
        "--arch",
        default=None,
        help="architecture of a state-dict --model file: bundled, torchvision:<name>, "
        "timm:<name> or package.module:callable; the file is read with "
        "weights_only=True, so no code in it runs",
    )
    parser.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument of a package.module:callable model or of --arch, e.g. "
        "num_classes=10 (repeatable; value is a Python literal, never evaluated code)",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a --model file that is a whole pickled nn.Module (torch.save(model)). "
        "Unpickling runs whatever code the file contains: use only for files you "
        "trust",
    )
    parser.add_argument(
        "--model-dir", default=None, help="RobustBench checkpoint folder (default: $TTA_CACHE_DIR/models)"
    )


def _dataset_folders() -> str:
    """The folders ``--data-dir`` may hold, from the dataset catalogue: ``"A/, B/ or C/"``."""
    folders = [
        f"{info.folder}/" for info in map(tta_streams.get_dataset, tta_streams.list_datasets()) if info.needs_files
    ]
    return " or ".join([", ".join(folders[:-1]), folders[-1]]) if len(folders) > 1 else "".join(folders)


def build_parser() -> argparse.ArgumentParser:
    """The ``tta-bench`` argument parser (subcommands run, report, speed, train-source); the documentation's
    CLI reference is generated from it."""
    parser = argparse.ArgumentParser(
        prog="tta-bench", description="Benchmark test-time normalization policies on corrupted test streams."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {tta.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,report,speed,train-source}")

    run = sub.add_parser(
        "run",
        help="evaluate methods and policies over a grid of streams; resumable",
        description="Evaluate over the grid methods x policies x settings x orders x seeds "
        "x domains. Results are appended to OUT/results.jsonl as they finish; "
        "rerunning the same command resumes. One run at a time per OUT folder "
        "(a second is refused). Models take images in [0, 1].",
    )
    run.add_argument(
        "--dataset", default="fmnist-c", help=f"one of {', '.join(tta_streams.list_datasets())} (default fmnist-c)"
    )
    run.add_argument("--data-dir", default=None, help=f"folder holding {_dataset_folders()} (not needed for fmnist-c)")
    run.add_argument(
        "--images",
        default=None,
        metavar="FILE",
        help="your own images instead of the dataset's: a file written by torch.save({'images': "
        "N x C x H x W uint8 (or floats in [0, 1]), 'labels': N ints, 'classes': names "
        "(optional)}), read with weights_only=True; --dataset names what they stand in for "
        "(the model's kind of input), the rows and config.json their fingerprint",
    )
    run.add_argument(
        "--cache-dir",
        default=None,
        help="where corrupted images are cached (default: the streams default, $TTA_CACHE_DIR)",
    )
    _add_model_arguments(run)
    run.add_argument("--policies", default="all", help="comma list of policies, or all (default)")
    run.add_argument(
        "--methods",
        default=grid.NO_METHOD,
        help=f"comma list of methods stacked on each policy ({', '.join(tta.list_methods())}), or all; "
        "default none: the policies alone",
    )
    run.add_argument(
        "--setting",
        default="single",
        help="comma list of single, continual, mixed, gradual, unitta:<code> (e.g. unitta:nu1u)",
    )
    run.add_argument(
        "--order",
        default="iid",
        help="comma list of iid, sorted, dirichlet:<delta>, slots:<gamma>, optionally after imbalanced:<IF>[:random]+ "
        "(e.g. imbalanced:100+slots:0.1)",
    )
    run.add_argument(
        "--corruptions", default="all", help="comma list, all (the 15, default) or none (the clean test set)"
    )
    run.add_argument("--severity", default="5", help="severity 1-5, or a comma list (default 5)")
    run.add_argument(
        "--table",
        default=None,
        choices=grid.TABLES,
        help="corruption parameter table (default: chosen from the image size)",
    )
    run.add_argument("--batch-size", type=int, default=64)
    run.add_argument(
        "--window",
        type=int,
        default=None,
        metavar="N",
        help="frame by frame: each image (--batch-size 1) is predicted through a window of the last N frames "
        "(tta.SlidingWindow), which adapts once every N frames",
    )
    run.add_argument("--n-examples", type=int, default=None, help="images per domain (default: all)")
    run.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
    run.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="a policy or method option, e.g. alpha_bn.alpha=0.2 or tent.lr=1e-4 (repeatable; "
        "value is a Python literal)",
    )
    run.add_argument("--out", required=True, metavar="DIR", help="results folder (created; reused to resume)")
    run.add_argument("--device", default=DEFAULT_DEVICE, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    run.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per unit (default 1, or --cpus-per-task on Ray: the same for every "
        "executor and number of workers, so that the rows are too; use cores through "
        "--workers)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local worker processes running the grid's units at once (default 1: in this "
        "process), e.g. the number of cores; each runs its units with --threads",
    )
    run.add_argument(
        "--executor",
        default="local",
        choices=("local", "ray"),
        help="local (this machine, --workers) or ray: the units as Ray tasks on a cluster "
        "(needs the extra: pip install 'tta-norm[ray]')",
    )
    run.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to connect to, e.g. auto or ray://host:10001 (default: $RAY_ADDRESS, else a new local Ray)",
    )
    run.add_argument(
        "--cpus-per-task",
        type=float,
        default=1.0,
        help="Ray CPUs per unit (default 1; also the task's torch threads unless --threads)",
    )
    run.add_argument(
        "--gpus-per-task",
        type=float,
        default=0.0,
        help="Ray GPUs per unit, e.g. 1 or 0.5 (default 0; needed for --device cuda)",
    )
    run.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar: one line per finished result instead (always so when stdout is not a terminal)",
    )
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="rebuild report.md, results.csv and errors.png from DIR/results.jsonl")
    rep.add_argument(
        "dir", metavar="DIR", help="a results folder (its results.jsonl or results.jsonl.gz, config.json and meta.json)"
    )
    rep.add_argument("--out", metavar="OUT", help="write the report files into OUT instead of DIR (created if missing)")
    rep.add_argument(
        "--compare",
        metavar="POLICY[+METHOD]",
        action="append",
        default=[],
        help="give this pair a column in the table of the best policies: its error and its distance to the best "
        "of all in each (setting, order) (repeatable)",
    )
    rep.set_defaults(func=cmd_report)

    spd = sub.add_parser(
        "speed", help="images/s of each method x policy and its ratios to the unadapted model and to source"
    )
    spd.add_argument("--dataset", default="fmnist-c", help="decides the input size and the model's classes")
    _add_model_arguments(spd)
    spd.add_argument("--policies", default="all")
    spd.add_argument(
        "--methods", default=grid.NO_METHOD, help="comma list of methods, or all; default none (the policies alone)"
    )
    spd.add_argument("--batch-size", type=int, default=64)
    spd.add_argument("--option", action="append", default=[], metavar="NAME.KEY=VALUE")
    spd.add_argument("--warmup", type=int, default=3, help="untimed batches per policy first (default 3)")
    spd.add_argument("--repeats", type=int, default=10, help="timed runs per policy; the median is reported")
    spd.add_argument("--batches-per-repeat", type=int, default=5, help="batches in one timed run")
    spd.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    spd.add_argument("--device", default=DEFAULT_DEVICE)
    spd.add_argument("--out", metavar="FILE", help="also write the table, with the environment, to FILE (Markdown)")
    spd.add_argument(
        "--compile",
        action="store_true",
        help="time torch.compile(model, fullgraph=True) of every model, the unadapted one included",
    )
    spd.set_defaults(func=cmd_speed)

    trn = sub.add_parser("train-source", help="train the bundled Fashion-MNIST model")
    trn.add_argument(
        "--out",
        default=None,
        help="checkpoint path (default: fmnist_resnet.pt in the tta cache, $TTA_CACHE_DIR); "
        "the shipped weights are replaced only if this names their file",
    )
    trn.add_argument(
        "--arch",
        default="resnet",
        choices=tuple(FAMILIES),
        help="the model family: resnet (the bundled model's, default), vgg or preact (tta_bench.model_families)",
    )
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
    from tta_bench.results import FolderInUseError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (_Fail, ValueError, FileNotFoundError, FolderInUseError) as error:
        print(f"tta-bench {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
