"""RoTTA over ``rbn`` against the official ``BIT-DA/RoTTA`` adapter.

The official repository is not part of tta: fetch it (``git clone https://github.com/BIT-DA/RoTTA``) and
pass its folder. Its adapter is built without the yacs config, its timeliness weighting by the same
formula on the CPU (the original calls ``.cuda()``). Two comparisons (README, "## Methods")::

    python -m studies.faithfulness.rotta_reference --official /path/to/RoTTA [--flip]
    python -m studies.faithfulness.rotta_reference --official /path/to/RoTTA --errors [--n-examples N]

The first replaces the augmentation by the identity (or, with ``--flip``, a horizontal flip) on both
sides and prints the largest teacher-logit difference over the first 10 memory updates and over all.
The second keeps each side's own strong augmentation (the official pipeline, with its ``RandomAffine``
arguments renamed for current torchvision; random draws differ, so only the errors can agree) and
prints the error of each on every corruption of one continual stream, and the means.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import random
import sys
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import torch
import torchvision.transforms as transforms
from torch import nn

import tta
import tta_streams
from tta_bench.source_model import load_bundled_model


def cpu_timeliness_reweighting(ages: list[float]) -> torch.Tensor:
    """The official ``timeliness_reweighting`` formula (its memory already divides ages by the capacity)."""
    a = torch.tensor(ages).float()
    return torch.exp(-a) / (1 + torch.exp(-a))


class RenamedRandomAffine(transforms.RandomAffine):
    """torchvision's ``RandomAffine`` taking the official code's old argument names (``resample``,
    ``fillcolor``; removed from torchvision since), with the same meaning."""

    def __init__(self, *args: object, resample: object = None, fillcolor: object = None, **kwargs: object) -> None:
        interpolation = (
            transforms.InterpolationMode.BILINEAR if resample is not None else transforms.InterpolationMode.NEAREST
        )
        super().__init__(*args, interpolation=interpolation, fill=0 if fillcolor is None else fillcolor, **kwargs)


@contextlib.contextmanager
def renamed_random_affine() -> Iterator[None]:
    original = transforms.RandomAffine
    transforms.RandomAffine = RenamedRandomAffine
    try:
        yield
    finally:
        transforms.RandomAffine = original


def official_learner(official: object, model: nn.Module, augment: Callable | None, image_size: int) -> nn.Module:
    """The official adapter on ``model``; ``augment`` replaces its strong augmentation, None keeps it."""
    official.timeliness_reweighting = cpu_timeliness_reweighting
    config = SimpleNamespace(
        ADAPTER=SimpleNamespace(
            RoTTA=SimpleNamespace(MEMORY_SIZE=64, UPDATE_FREQUENCY=64, NU=0.001, ALPHA=0.05, LAMBDA_T=1.0, LAMBDA_U=1.0)
        ),
        CORRUPTION=SimpleNamespace(NUM_CLASS=10),
        OPTIM=SimpleNamespace(STEPS=1),
        INPUT=SimpleNamespace(SIZE=(image_size, image_size)),
    )
    if augment is not None:
        official.get_tta_transforms = lambda cfg: augment
    with renamed_random_affine():
        return official.RoTTA(
            config, model, lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
        )


def compare_logits(official: object, flip: bool) -> None:
    augment = (lambda x: x.flip(-1)) if flip else (lambda x: x)
    reference = official_learner(official, load_bundled_model(), augment, 28)
    ours = tta.attach_method(tta.adapt(load_bundled_model(), "rbn"), "rotta", augment="none")
    if flip:
        ours.augmented = augment
    stream = tta_streams.Stream(
        "fmnist", corruptions=["fog"], severities=5, order="dirichlet:0.1", n_examples=1000, batch_size=64, seed=0
    )
    worst, worst_10 = 0.0, 0.0
    with torch.no_grad():
        for x, _, _ in stream:
            gap = (ours(x) - reference(x)).abs().max().item()
            worst = max(worst, gap)
            if int(ours.updates) <= 10:
                worst_10 = max(worst_10, gap)
    student = [p for p in reference.model.parameters() if p.requires_grad]
    student_gap = max((a - b).abs().max().item() for a, b in zip(ours.params, student))
    print(
        f"teacher logits, largest difference over the first 10 memory updates: {worst_10:.3g}; "
        f"over all {int(ours.updates)}: {worst:.3g}; student affine parameters: {student_gap:.3g}"
    )


def compare_errors(official: object, order: str, n_examples: int | None, seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    learners = {
        "official": official_learner(official, load_bundled_model(), None, 28),
        "tta": tta.attach_method(tta.adapt(load_bundled_model(), "rbn"), "rotta", seed=seed),
    }
    stream = tta_streams.Stream(
        "fmnist", severities=5, order=order, setting="continual", n_examples=n_examples, batch_size=64, seed=seed
    )
    wrong = {name: {} for name in learners}
    counts: dict[str, int] = {}
    with torch.no_grad():
        for x, y, domain in stream:
            corruption, severity = domain[0]  # continual batches never straddle two domains
            name_of_domain = f"{corruption}-{severity}"
            counts[name_of_domain] = counts.get(name_of_domain, 0) + len(y)
            for name, learner in learners.items():
                errors = (learner(x).argmax(1) != y).sum().item()
                wrong[name][name_of_domain] = wrong[name].get(name_of_domain, 0) + errors
    print(f"continual {order}, seed {seed}, {n_examples or 'all'} images per corruption: error (%)")
    print(f"{'corruption':<20} {'official':>9} {'tta':>9}")
    for domain, count in counts.items():
        print(f"{domain:<20} {100 * wrong['official'][domain] / count:9.2f} {100 * wrong['tta'][domain] / count:9.2f}")
    means = {name: sum(100 * w[d] / counts[d] for d in counts) / len(counts) for name, w in wrong.items()}
    difference = means["tta"] - means["official"]
    print(f"{'mean':<20} {means['official']:9.2f} {means['tta']:9.2f}   difference {difference:+.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="folder of the BIT-DA/RoTTA repository")
    parser.add_argument("--flip", action="store_true", help="a horizontal flip as the augmentation on both sides")
    parser.add_argument("--errors", action="store_true", help="errors over the 15 corruptions, own augmentations")
    parser.add_argument("--order", default="dirichlet:0.1", help="label order of the --errors stream")
    parser.add_argument("--n-examples", type=int, default=None, help="images per corruption (--errors)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, args.official)
    official = importlib.import_module("core.adapter.rotta")
    if args.errors:
        compare_errors(official, args.order, args.n_examples, args.seed)
    else:
        compare_logits(official, args.flip)


if __name__ == "__main__":
    main()
