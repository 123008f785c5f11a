"""Tent over ``tbn`` against the official ``DequanWang/tent`` (``tent.py``, unmodified), same 20 batches.

The official repository is not part of tta: fetch it (``git clone https://github.com/DequanWang/tent``)
and pass its folder. Prints the largest logit and affine-parameter differences (README, "## Methods")::

    python -m studies.faithfulness.tent_reference --official /path/to/tent
"""

from __future__ import annotations

import argparse
import importlib
import sys

import torch

import tta
import tta_streams
from tta_bench.source_model import load_bundled_model


def official_tent(official: object, lr: float = 1e-3) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """The official Tent around a fresh bundled model, with the README's Adam settings."""
    model = official.configure_model(load_bundled_model())
    params, _ = official.collect_params(model)
    official.check_model(model)
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    return official.Tent(model, optimizer, steps=1, episodic=False), params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="folder of the DequanWang/tent repository")
    args = parser.parse_args()
    sys.path.insert(0, args.official)
    official = importlib.import_module("tent")

    stream = tta_streams.Stream("fmnist", corruptions=["fog"], severities=5, n_examples=1280, batch_size=64, seed=0)
    batches = [x for x, _, _ in stream]
    reference, reference_params = official_tent(official)
    learner = tta.attach_method(tta.adapt(load_bundled_model(), "tbn"), "tent")
    worst = max((learner(x) - reference(x).detach()).abs().max().item() for x in batches)
    params_gap = max((p - q).abs().max().item() for p, q in zip(reference_params, learner.params))
    print(
        f"largest logit difference over {len(batches)} batches: {worst:.3e}; "
        f"largest affine-parameter difference: {params_gap:.3e}"
    )

    # The gradient through the batch statistics matters: without it the two drift apart.
    detached = tta.attach_method(tta.adapt(load_bundled_model(), "tbn"), "tent")
    for layer in detached.layers:
        layer.stats_grad = False
    reference, _ = official_tent(official)
    gap = max((detached(x) - reference(x).detach()).abs().max().item() for x in batches)
    print(f"with the statistics detached (stats_grad False): {gap:.3e}")


if __name__ == "__main__":
    main()
