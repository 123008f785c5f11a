"""Time to build and iterate a stream, first run (empty corruption cache) and cached (docs/streams.md).

Run ``python -m studies.stream_speed``: by default the continual stream of all 15 corruptions at
severity 5 over the embedded Fashion-MNIST test split (10,000 images per domain), batch 64. Prints the
wall time of each pass and, for the first, the time spent in each domain (mostly corrupting it).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

import tta_streams


def time_stream(cache_dir: str, args: argparse.Namespace) -> tuple[float, float, int, dict[str, float]]:
    """(build seconds, build + iterate seconds, images, seconds per corruption) of one full pass."""
    start = time.perf_counter()
    stream = tta_streams.Stream(
        "fmnist",
        corruptions="all",
        severities=args.severity,
        order=args.order,
        setting=args.setting,
        batch_size=args.batch_size,
        seed=args.seed,
        cache_dir=cache_dir,
    )
    built = time.perf_counter() - start
    per_domain: dict[str, float] = {}
    images, last = 0, time.perf_counter()
    for batch in stream:
        images += len(batch.y)
        now = time.perf_counter()
        corruption = batch.domain[0][0]
        per_domain[corruption] = per_domain.get(corruption, 0.0) + now - last
        last = now
    return built, time.perf_counter() - start, images, per_domain


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default="continual")
    parser.add_argument("--order", default="iid")
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache_dir:
        for label in ("first run", "cached"):
            built, total, images, per_domain = time_stream(cache_dir, args)
            print(f"{label}: build {built:.2f} s, build + iterate {total:.1f} s, {images:,} images")
            if label == "first run":
                print("  per corruption (s): " + ", ".join(f"{k} {v:.1f}" for k, v in per_domain.items()))


if __name__ == "__main__":
    main()
