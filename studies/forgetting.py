"""How quickly a policy forgets a long run of one class: the one-class-run recovery case.

Run ``python -m studies.forgetting``: on clean Fashion-MNIST test images, ``--run`` batches of class 0, then
``--run`` batches of class 1 (each drawn with replacement from that class), then i.i.d. batches of the whole
test set; prints, for each policy (alone or under a method), the errors on the first ``--after`` i.i.d.
images, against ``source``'s. A policy that has forgotten the two runs errs as often as on an i.i.d. stream
from the start; one that still normalizes with statistics of one or two classes errs far more. ``--model``
takes a committed checkpoint of another family (``vgg``, ``preact``).
"""

from __future__ import annotations

import argparse

import torch

import tta
import tta_streams
from studies.correlation_tracking import load


def one_class_run_then_iid(
    images: torch.Tensor, labels: torch.Tensor, *, run: int, batch_size: int, after: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor, bool]]:
    """The batches ``(x, y, counted)``: ``run`` batches of class 0, ``run`` of class 1, then i.i.d. batches
    covering ``after`` images, the only ones counted."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for label in (0, 1):
        pool = torch.nonzero(labels == label).flatten()
        for _ in range(run):
            picked = pool[torch.randint(len(pool), (batch_size,), generator=generator)]
            batches.append((images[picked], labels[picked], False))
    order = torch.randperm(len(labels), generator=generator)[:after]
    for start in range(0, after, batch_size):
        picked = order[start : start + batch_size]
        batches.append((images[picked], labels[picked], True))
    return batches


def errors_after(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor, bool]]) -> int:
    """The wrong predictions on the counted batches, the model adapting on every batch."""
    wrong = 0
    with torch.inference_mode():
        for x, y, counted in batches:
            predicted = model(x).argmax(1)
            if counted:
                wrong += int((predicted != y).sum())
    return wrong


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="source,tbn,adabn,momentum_decay,rbn,balanced,iabn,rebalance,bdn")
    parser.add_argument("--methods", default="none,lame,prior_refine", help="each stacked on every policy")
    parser.add_argument("--run", type=int, default=150, help="batches of each of the two classes")
    parser.add_argument("--after", type=int, default=320, help="i.i.d. images counted after the runs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="bundled", choices=("bundled", "vgg", "preact"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    test = tta_streams.fashion_mnist("test")
    images = test.images.float() / 255
    batches = one_class_run_then_iid(
        images, test.labels, run=args.run, batch_size=args.batch_size, after=args.after, seed=args.seed
    )
    methods = args.methods.split(",")
    print(f"wrong of the first {args.after} i.i.d. clean images after {args.run} batches of class 0, then of class 1")
    print(f"{'policy':<16}" + "".join(f"{method:>14}" for method in methods))
    for policy in args.policies.split(","):
        line = f"{policy:<16}"
        for method in methods:
            model = tta.adapt(load(args.model), policy)
            if method != "none":
                model = tta.attach_method(model, method)
            line += f"{errors_after(model, batches):>14}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
