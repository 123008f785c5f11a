"""Corruption throughput, ours vs corrupt-tta (docs/corruptions.md): images/s per corruption at severity 5.

Run ``python -m studies.corruption_speed``. Batch of 256 images, 28x28 grayscale and 32x32 RGB,
2 CPU threads for torch and OpenCV. corrupt-tta (the reference) runs image by image on H x W x 3 arrays,
as it is meant to be used (grayscale replicated to three channels), followed by numpy's uint8 cast;
ours corrupts the whole uint8 batch in one call. Each side is timed as the best of ``--repeats`` runs,
both with the ImageNet parameter table (the only one corrupt-tta has). Prints one table per image kind;
not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from tabulate import tabulate

from studies.corruption_reference import sample_images
from tta_streams.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS, corrupt
from tta_streams.parsing import parse_corruptions


def _best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _reference_fn(name: str):
    from corrupt_tta import corruptions as ref

    return getattr(ref, name)


def measure(names: list[str], channels: int, size: int, batch: int, repeats: int, severity: int = 5) -> list[dict]:
    """Images/s of ours (whole batch per call) and of corrupt-tta (one call per image)."""
    x = sample_images(batch, size, channels=channels)
    hwc = [np.repeat(im.permute(1, 2, 0).numpy(), 3 // channels, axis=2).copy() for im in x]
    rows = []
    for name in names:
        # the ImageNet table, the parameters corrupt-tta knows: both sides do the same work
        corrupt(x[:8], name, severity, seed=0, table="imagenet")  # warm caches (kernels, textures)
        ours = _best_time(lambda name=name: corrupt(x, name, severity, seed=0, table="imagenet"), repeats)
        ref_fn = _reference_fn(name)
        np.random.seed(0)

        def run_ref(ref_fn=ref_fn) -> None:
            for im in hwc:
                out = np.uint8(ref_fn(im, severity))
                if channels == 1:
                    out = out[..., 0]

        ref = _best_time(run_ref, repeats)
        rows.append({"corruption": name, "ours": batch / ours, "ref": batch / ref, "speedup": ref / ours})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--corruptions", default="all", help="comma list, or 'all' (the 19)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        import cv2

        cv2.setNumThreads(args.threads)
    except ImportError as exc:
        raise SystemExit("the reference needs corrupt-tta: pip install corrupt-tta") from exc
    names = (
        list(CORRUPTIONS + EXTRA_CORRUPTIONS)
        if args.corruptions == "all"
        else list(parse_corruptions(args.corruptions))
    )
    for channels, size, label in ((1, 28, "28x28 grayscale"), (3, 32, "32x32 RGB")):
        rows = measure(names, channels, size, args.batch, args.repeats)
        table = [[r["corruption"], f"{r['ours']:,.0f}", f"{r['ref']:,.0f}", f"{r['speedup']:.1f}x"] for r in rows]
        main15 = [r for r in rows if r["corruption"] in CORRUPTIONS]
        if main15:
            mean_speedup = statistics.mean(r["speedup"] for r in main15)
            ratio_of_means = statistics.mean(r["ours"] for r in main15) / statistics.mean(r["ref"] for r in main15)
            geo_speedup = statistics.geometric_mean(r["speedup"] for r in main15)
            table.append(["mean over the 15 (speedups)", "", "", f"{mean_speedup:.1f}x"])
            table.append(["geometric mean over the 15", "", "", f"{geo_speedup:.1f}x"])
            table.append(["mean over the 15 (img/s ratio)", "", "", f"{ratio_of_means:.1f}x"])
            slowest = min(main15, key=lambda r: r["speedup"])
            table.append(["slowest relative (of the 15)", slowest["corruption"], "", f"{slowest['speedup']:.1f}x"])
        print(f"\n{label}, batch {args.batch}, severity 5, {args.threads} threads (images/s)")
        print(tabulate(table, headers=["corruption", "ours", "corrupt-tta", "speedup"]))


if __name__ == "__main__":
    main()
