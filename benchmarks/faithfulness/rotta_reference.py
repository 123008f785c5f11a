"""RoTTA over ``rbn`` against the official ``BIT-DA/RoTTA`` adapter, augmentation replaced on both sides.

The official repository is not part of tta: fetch it (``git clone https://github.com/BIT-DA/RoTTA``) and
pass its folder. Its adapter is built without the yacs config; its augmentation is replaced by the
identity (or, with ``--flip``, by a horizontal flip on both sides) and its timeliness weighting by the
same formula on the CPU (the original calls ``.cuda()``). Prints the largest teacher-logit difference
over the first 10 memory updates and over all (README, "## Methods")::

    python -m benchmarks.faithfulness.rotta_reference --official /path/to/RoTTA [--flip]
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import SimpleNamespace

import torch

import streams
import tta
from benchmarks.source_model import load_bundled_model


def cpu_timeliness_reweighting(ages: list[float]) -> torch.Tensor:
    """The official ``timeliness_reweighting`` formula (its memory already divides ages by the capacity)."""
    a = torch.tensor(ages).float()
    return torch.exp(-a) / (1 + torch.exp(-a))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="folder of the BIT-DA/RoTTA repository")
    parser.add_argument("--flip", action="store_true", help="a horizontal flip as the augmentation on both sides")
    args = parser.parse_args()
    sys.path.insert(0, args.official)
    official = importlib.import_module("core.adapter.rotta")

    augment = (lambda x: x.flip(-1)) if args.flip else (lambda x: x)
    official.get_tta_transforms = lambda cfg: augment
    official.timeliness_reweighting = cpu_timeliness_reweighting
    config = SimpleNamespace(
        ADAPTER=SimpleNamespace(RoTTA=SimpleNamespace(
            MEMORY_SIZE=64, UPDATE_FREQUENCY=64, NU=0.001, ALPHA=0.05, LAMBDA_T=1.0, LAMBDA_U=1.0)),
        CORRUPTION=SimpleNamespace(NUM_CLASS=10),
        OPTIM=SimpleNamespace(STEPS=1),
    )
    reference = official.RoTTA(
        config, load_bundled_model(), lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    )
    ours = tta.attach_method(tta.adapt(load_bundled_model(), "rbn"), "rotta", augment="none")
    if args.flip:
        ours.augmented = augment

    stream = streams.Stream("fmnist", corruptions=["fog"], severities=5, order="dirichlet:0.1",
                            n_examples=1000, batch_size=64, seed=0)
    worst, worst_10 = 0.0, 0.0
    with torch.no_grad():
        for x, _, _ in stream:
            gap = (ours(x) - reference(x)).abs().max().item()
            worst = max(worst, gap)
            if int(ours.updates) <= 10:
                worst_10 = max(worst_10, gap)
    student = [p for p in reference.model.parameters() if p.requires_grad]
    student_gap = max((a - b).abs().max().item() for a, b in zip(ours.params, student))
    print(f"teacher logits, largest difference over the first 10 memory updates: {worst_10:.3g}; "
          f"over all {int(ours.updates)}: {worst:.3g}; student affine parameters: {student_gap:.3g}")


if __name__ == "__main__":
    main()
