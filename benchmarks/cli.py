"""``tta-bench``: run the benchmark grid, rebuild its report, time the policies, train the source model.

A thin front end (style guide, principle 6): it parses arguments, calls :mod:`benchmarks.grid`,
:mod:`benchmarks.results`, :mod:`benchmarks.evaluate`, :mod:`benchmarks.report` and
:mod:`benchmarks.speed`, and is the only module of the benchmark that prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def _load_model(spec: str, dataset: str, device: Any) -> Any:
    from benchmarks.models import load_model

    return load_model(spec, dataset=dataset, device=device)


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
    )


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from benchmarks import evaluate, report, results

    config = _config_from_args(args)
    device = _device(args.device)
    store = results.ResultStore.open(args.out, config)
    keys = grid.row_keys(config)
    todo = [key for key in keys if not store.done(key)]
    print(
        f"{len(keys)} results in the grid ({len(config.policies)} policies x {len(grid.expand(config))} "
        f"streams); {len(keys) - len(todo)} already in {store.results_path}"
    )
    if todo:
        model = _load_model(config.model, config.dataset, device)
        for policy in config.policies:  # fail on a bad option value before the first hour of work
            evaluate.adapted_copy(model, policy, config.options.get(policy))
        errors_so_far: list[float] = []
        bar = tqdm(total=len(keys), initial=len(keys) - len(todo), unit="result", dynamic_ncols=True,
                   disable=args.no_progress)

        def on_batch(run: grid.Run, domain: Any, tallies: dict[str, dict[Any, Any]]) -> None:
            n = sum(t.n for per_domain in tallies.values() for t in per_domain.values())
            wrong = sum(t.errors for per_domain in tallies.values() for t in per_domain.values())
            where = f"{run.setting} {run.order} seed {run.seed}"
            if domain is not None:
                where += f" {domain[0]}"
            bar.set_description(where, refresh=False)
            postfix = {"err": f"{100.0 * wrong / max(n, 1):.1f}%"}
            if errors_so_far:
                postfix["mean err"] = f"{statistics.fmean(errors_so_far):.1f}%"
            bar.set_postfix(postfix)

        def on_rows(rows: list[dict[str, Any]]) -> None:
            errors_so_far.extend(row["error"] for row in rows)
            bar.update(len(rows))

        try:
            evaluate.run_grid(
                config,
                model,
                done=store.done,
                save=store.append,
                data_dir=args.data_dir,
                cache_dir=args.cache_dir,
                device=device,
                progress=evaluate.Progress(on_batch=on_batch, on_rows=on_rows),
            )
        except KeyboardInterrupt:
            bar.close()
            print(
                f"\ninterrupted: {len(store.rows())} of {len(keys)} results are saved in {store.results_path}; "
                "rerun the same command to resume",
                file=sys.stderr,
            )
            return 130
        bar.close()
    rows = store.rows()
    paths = report.write_report(store.folder, rows, config=config.to_json())
    print()
    print(f"Mean error (%) over domains, {config.dataset}, model {config.model}:")
    print(report.summary_table(rows, policies=config.policies))
    print()
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


# ------------------------------------------------------------------------------------------- report


def cmd_report(args: argparse.Namespace) -> int:
    from benchmarks import report, results

    folder = Path(args.dir)
    rows = results.read_rows(folder / results.RESULTS_NAME)
    if not rows:
        raise _Fail(f"{folder / results.RESULTS_NAME}: no results found")
    config_path = folder / results.CONFIG_NAME
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else None
    paths = report.write_report(folder, rows, config=config)
    policies = config.get("policies") if config else None
    print(report.summary_table(rows, policies=policies))
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
    options = grid.parse_options(args.option, policies)
    if args.dataset not in speed.INPUT_SHAPES:
        raise _Fail(f"unknown dataset {args.dataset!r}; choose from: {', '.join(speed.INPUT_SHAPES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    model = _load_model(grid.normalize_model(args.model), args.dataset, device)
    print(
        f"timing {len(policies)} policies on {args.model} ({args.dataset} input), batch {args.batch_size}, "
        f"{device}, {torch.get_num_threads()} threads: median of {args.repeats} runs of "
        f"{args.batches_per_repeat} batches after {args.warmup} warm-up batches"
    )
    measured = speed.measure_speed(
        model,
        policies,
        input_shape=speed.INPUT_SHAPES[args.dataset],
        batch_size=args.batch_size,
        options=options,
        warmup=args.warmup,
        repeats=args.repeats,
        batches_per_repeat=args.batches_per_repeat,
        device=device,
    )
    table = [[r.policy, f"{r.images_per_s:,.0f}" if r.images_per_s >= 100 else f"{r.images_per_s:.1f}",
              f"{r.ratio_to_source:.2f}"] for r in measured]
    print(tabulate(table, headers=["policy", "images/s", "x source"], tablefmt="github", disable_numparse=True))
    return 0


# ------------------------------------------------------------------------------------- train-source


def cmd_train_source(args: argparse.Namespace) -> int:
    import torch

    from benchmarks.train_source import train_source

    if args.threads:
        torch.set_num_threads(args.threads)
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
    out = args.out
    if out is None:
        from benchmarks.source_model import WEIGHTS_PATH

        out = WEIGHTS_PATH
    result = train_source(out, **options)
    print(json.dumps(result, indent=2, default=str))
    return 0


# ------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``tta-bench`` argument parser (subcommands run, report, speed, train-source)."""
    parser = argparse.ArgumentParser(
        prog="tta-bench", description="Benchmark test-time normalization policies on corrupted test streams."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,report,speed,train-source}")

    run = sub.add_parser("run", help="evaluate policies over a grid of streams; resumable",
                         description="Evaluate policies over the grid policies x settings x orders x seeds "
                                     "x domains. Results are appended to OUT/results.jsonl as they finish; "
                                     "rerunning the same command resumes.")
    run.add_argument("--dataset", default="fmnist-c", help=f"one of {', '.join(grid.DATASETS)} (default fmnist-c)")
    run.add_argument("--data-dir", default=None,
                     help="folder holding CIFAR-10-C/, CIFAR-100-C/ or ImageNet-C/ (not needed for fmnist-c)")
    run.add_argument("--cache-dir", default=None,
                     help="where corrupted images are cached (default: the streams default, $TTA_CACHE_DIR)")
    run.add_argument("--model", default="bundled",
                     help="bundled, robustbench:<name>, torchvision:<name>, timm:<name>, or a checkpoint path")
    run.add_argument("--policies", default="all", help="comma list of policies, or all (default)")
    run.add_argument("--setting", default="single", help="comma list of single, continual, mixed, gradual")
    run.add_argument("--order", default="iid", help="comma list of iid, sorted, dirichlet:<delta>, slots:<gamma>")
    run.add_argument("--corruptions", default="all",
                     help="comma list, all (the 15, default) or none (the clean test set)")
    run.add_argument("--severity", default="5", help="severity 1-5, or a comma list (default 5)")
    run.add_argument("--batch-size", type=int, default=64)
    run.add_argument("--n-examples", type=int, default=None, help="images per domain (default: all)")
    run.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
    run.add_argument("--option", action="append", default=[], metavar="POLICY.KEY=VALUE",
                     help="a policy option, e.g. alpha_bn.alpha=0.2 (repeatable; value is a Python literal)")
    run.add_argument("--out", required=True, metavar="DIR", help="results folder (created; reused to resume)")
    run.add_argument("--device", default=DEFAULT_DEVICE, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="rebuild report.md, results.csv and errors.png from DIR/results.jsonl")
    rep.add_argument("dir", metavar="DIR")
    rep.set_defaults(func=cmd_report)

    spd = sub.add_parser("speed", help="images/s of each policy and the ratio to source")
    spd.add_argument("--dataset", default="fmnist-c", help="decides the input size and the model's classes")
    spd.add_argument("--model", default="bundled")
    spd.add_argument("--policies", default="all")
    spd.add_argument("--batch-size", type=int, default=64)
    spd.add_argument("--option", action="append", default=[], metavar="POLICY.KEY=VALUE")
    spd.add_argument("--warmup", type=int, default=3, help="untimed batches per policy first (default 3)")
    spd.add_argument("--repeats", type=int, default=10, help="timed runs per policy; the median is reported")
    spd.add_argument("--batches-per-repeat", type=int, default=5, help="batches in one timed run")
    spd.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    spd.add_argument("--device", default=DEFAULT_DEVICE)
    spd.set_defaults(func=cmd_speed)

    trn = sub.add_parser("train-source", help="train the bundled Fashion-MNIST model")
    trn.add_argument("--out", default=None, help="checkpoint path (default: the bundled weights file)")
    trn.add_argument("--epochs", type=int, default=None, help="default: the shipped checkpoint's recipe")
    trn.add_argument("--seed", type=int, default=0)
    trn.add_argument("--root", default=None, help="folder with the raw Fashion-MNIST training files")
    trn.add_argument("--batch-size", type=int, default=None)
    trn.add_argument("--lr", type=float, default=None)
    trn.add_argument("--threads", type=int, default=None)
    trn.add_argument("--device", default=DEFAULT_DEVICE)
    trn.set_defaults(func=cmd_train_source)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tta-bench``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (_Fail, ValueError, FileNotFoundError) as error:
        print(f"tta-bench {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
