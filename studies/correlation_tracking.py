"""How well the label-free :class:`tta.CorrelationMeter` tracks a stream's true label correlation.

Run ``python -m studies.correlation_tracking``: for each label order, Fashion-MNIST-C streams in the
``single`` setting (the meter reset at each domain, as a policy is), prints the true measure
(``Stream.label_stats().mean_tv_distance``, with hindsight and the true labels), the meter fed the true
labels (what the online reference alone changes), and the meter fed the predictions of the bundled model
under each policy (what the model's errors change), each averaged over the domains.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import tta
import tta_streams
from tta_bench.source_model import load_bundled_model

ORDERS = "iid,dirichlet:1.0,dirichlet:0.1,dirichlet:0.01,sorted"
CORRUPTIONS = "gaussian_noise,defocus_blur,fog,contrast,jpeg_compression"


def track(order: str, args: argparse.Namespace, models: dict[str, torch.nn.Module]) -> dict[str, float]:
    """Mean over the domains of the true measure, the meter on the labels and on each model's predictions."""
    stream = tta_streams.Stream(
        "fmnist-c",
        corruptions=args.corruptions,
        severities=args.severity,
        order=order,
        setting="single",
        batch_size=args.batch_size,
        n_examples=args.n_examples,
        seed=args.seed,
    )
    sums = {"labels": 0.0, **{name: 0.0 for name in models}, "error": 0.0}
    domains = 0
    for _, batches in stream.episodes():
        meters = {name: tta.CorrelationMeter() for name in ["labels", *models]}
        for model in models.values():
            tta.reset(model)
        wrong = seen = 0
        with torch.inference_mode():
            for batch in batches:
                meters["labels"].update(F.one_hot(batch.y, 10))
                for name, model in models.items():
                    logits = model(batch.x)
                    meters[name].update(logits)
                    if name == "source" or len(models) == 1:
                        wrong += int((logits.argmax(1) != batch.y).sum())
                        seen += len(batch.y)
        for name, meter in meters.items():
            sums[name] += meter.value
        sums["error"] += 100 * wrong / seen
        domains += 1
    return {"true": stream.label_stats().mean_tv_distance, **{name: total / domains for name, total in sums.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", default=ORDERS)
    parser.add_argument("--corruptions", default=CORRUPTIONS)
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-examples", type=int, default=None, help="images per domain (default all 10,000)")
    parser.add_argument("--policies", default="source,adabn,rbn,tbn", help="whose predictions feed the meter")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {policy: tta.adapt(load_bundled_model(), policy) for policy in args.policies.split(",")}
    columns = ["true", "labels", *models]
    print(f"{'order':<16}" + "".join(f"{name:>10}" for name in columns) + "   (source error %)")
    for order in args.orders.split(","):
        row = track(order, args, models)
        print(f"{order:<16}" + "".join(f"{row[name]:>10.3f}" for name in columns) + f"   ({row['error']:.1f})")


if __name__ == "__main__":
    main()
