"""How well the label-free :class:`tta.CorrelationMeter` tracks a stream's label correlation and imbalance.

Run ``python -m studies.correlation_tracking``: for each label order, Fashion-MNIST-C streams in the
``single`` setting (the meter reset at each domain, as a policy is), prints the true measure
(``Stream.label_stats().mean_tv_distance``, with hindsight and the true labels), the meter fed the true
labels (what the online reference alone changes), and the meter fed the predictions of the model under
each policy (what the model's errors change), each averaged over the domains. ``--imbalance`` prints the
imbalance factor instead (the true one, ``Stream.label_stats().imbalance_ratio``, then the meter's), and
``--verdicts`` how many domains each policy's meter calls correlated, imbalanced, both or neither.
``--model`` takes a committed checkpoint of another family (``vgg``, ``preact``) in place of the bundled
model.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

import tta
import tta_streams
from tta_bench.model_families import FAMILIES
from tta_bench.models import load_model
from tta_bench.source_model import load_bundled_model

ORDERS = "iid,dirichlet:1.0,dirichlet:0.1,dirichlet:0.01,sorted"
IMBALANCED_ORDERS = "iid,imbalanced:3,imbalanced:10,imbalanced:100,dirichlet:0.1,imbalanced:10+dirichlet:0.1"
VERDICTS = ("i.i.d. and balanced", "correlated", "imbalanced", "correlated and imbalanced")
WEIGHTS = Path(__file__).resolve().parents[1] / "benchmarks" / "weights"
CORRUPTIONS = "gaussian_noise,defocus_blur,fog,contrast,jpeg_compression"


def load(model: str) -> torch.nn.Module:
    """The bundled model, or the committed checkpoint of the family ``model`` (``vgg``, ``preact``)."""
    if model == "bundled":
        return load_bundled_model()
    arch = FAMILIES[model].__name__
    return load_model(str(WEIGHTS / f"fmnist_{model}.pt"), dataset="fmnist-c", arch=f"tta_bench.model_families:{arch}")


def track(order: str, args: argparse.Namespace, models: dict[str, torch.nn.Module]) -> dict[str, object]:
    """Mean over the domains of the true measure, the meter on the labels and on each model's predictions
    (the correlation, or with ``--imbalance`` the imbalance factor), and each meter's verdicts counted."""
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
    verdicts: dict[str, Counter[str]] = {name: Counter() for name in models}
    domains = 0
    for _, batches in stream.episodes():
        meters = {name: tta.CorrelationMeter() for name in ["labels", *models]}
        for model in models.values():
            tta.reset(model)
        wrong = seen = 0
        with torch.inference_mode():
            for batch in batches:
                meters["labels"].update(F.one_hot(batch.y, 10).float())
                for name, model in models.items():
                    logits = model(batch.x)
                    meters[name].update(logits)
                    if name == "source" or len(models) == 1:
                        wrong += int((logits.argmax(1) != batch.y).sum())
                        seen += len(batch.y)
        for name, meter in meters.items():
            sums[name] += meter.imbalance_factor if args.imbalance else meter.value
            if name in verdicts:
                verdicts[name][meter.verdict()] += 1
        sums["error"] += 100 * wrong / seen
        domains += 1
    stats = stream.label_stats()
    true = stats.imbalance_ratio if args.imbalance else stats.mean_tv_distance
    return {"true": true, **{name: total / domains for name, total in sums.items()}, "verdicts": verdicts}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", help=f"comma list (default {ORDERS}; with --imbalance {IMBALANCED_ORDERS})")
    parser.add_argument("--corruptions", default=CORRUPTIONS)
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-examples", type=int, default=None, help="images per domain (default all 10,000)")
    parser.add_argument("--policies", default="source,adabn,rbn,tbn", help="whose predictions feed the meter")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="bundled", choices=("bundled", "vgg", "preact"))
    parser.add_argument("--imbalance", action="store_true", help="the imbalance factor instead of the correlation")
    parser.add_argument("--verdicts", action="store_true", help="count each policy's verdicts over the domains")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {policy: tta.adapt(load(args.model), policy) for policy in args.policies.split(",")}
    columns = ["true", "labels", *models]
    print(f"{'order':<28}" + "".join(f"{name:>10}" for name in columns) + "   (source error %)")
    for order in (args.orders or (IMBALANCED_ORDERS if args.imbalance else ORDERS)).split(","):
        row = track(order, args, models)
        print(f"{order:<28}" + "".join(f"{row[name]:>10.3f}" for name in columns) + f"   ({row['error']:.1f})")
        if args.verdicts:
            for name, counts in row["verdicts"].items():  # type: ignore[attr-defined]
                print(f"{'':<28}{name}: " + ", ".join(f"{verdict} {counts[verdict]}" for verdict in VERDICTS))


if __name__ == "__main__":
    main()
