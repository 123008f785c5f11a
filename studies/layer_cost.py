"""Cost of each BatchNorm layer of the bundled model, unadapted and under each policy, timed alone.

Run ``python -m studies.layer_cost``: one forward of the bundled model records the input of each of
its BatchNorm layers; then, per layer and on that input, the unadapted eval-mode layer, PyTorch's own
train-mode ``F.batch_norm`` (moments and normalization in one call: the floor for a policy that reads
batch statistics), the fused statistics kernel alone (``torch.batch_norm_update_stats``) and a fresh
layer of each policy are timed (median of 7 runs of ``--calls`` calls, under ``torch.inference_mode``).
Prints microseconds per call for each layer and their sum, beside the whole unadapted forward.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

import tta
from tta_bench.source_model import load_bundled_model

DEFAULT_POLICIES = "source,tbn,alpha_bn,adabn,momentum_decay,rbn,unmix_tns"


def microseconds(call: Callable[[], object], calls: int) -> float:
    """Median over 7 runs of the time of one ``call()``, after 20 untimed calls."""
    for _ in range(20):
        call()
    runs = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(runs)


def recorded_inputs(model: nn.Module, x: Tensor) -> list[tuple[nn.BatchNorm2d, Tensor]]:
    """Each BatchNorm layer of ``model`` with the input it receives in a forward of ``x``."""
    recorded: list[tuple[nn.BatchNorm2d, Tensor]] = []
    handles = [
        m.register_forward_pre_hook(lambda m, args: recorded.append((m, args[0].clone())))
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    with torch.inference_mode():
        model(x)
    for handle in handles:
        handle.remove()
    return recorded


def layer_costs(bn: nn.BatchNorm2d, x: Tensor, policies: list[str], calls: int) -> dict[str, float]:
    """Microseconds per call on ``x``: the unadapted layer, the two PyTorch floors and each policy's layer."""
    costs = {
        "unadapted": microseconds(lambda: bn(x), calls),
        "F.batch_norm train": microseconds(
            lambda: torch.batch_norm(x, bn.weight, bn.bias, None, None, True, 0.0, bn.eps, False), calls
        ),
        "moments kernel": microseconds(lambda: torch.batch_norm_update_stats(x, None, None, 1.0), calls),
    }
    for policy in policies:
        layer = tta.adapt(nn.Sequential(copy.deepcopy(bn)), policy)[0]
        costs[policy] = microseconds(lambda layer=layer: layer(x), calls)
    return costs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--policies", default=DEFAULT_POLICIES)
    parser.add_argument("--calls", type=int, default=400, help="calls per timed run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_bundled_model().eval()
    x = torch.rand(args.batch_size, 1, 28, 28)
    layers = recorded_inputs(model, x)
    with torch.inference_mode():
        forward = microseconds(lambda: model(x), max(1, args.calls // 4))
        print(
            f"bundled model, batch {args.batch_size}, {args.threads} threads: whole unadapted forward "
            f"{forward:,.0f} us, {len(layers)} BatchNorm layers; microseconds per call"
        )
        total: dict[str, float] = {}
        for index, (bn, inputs) in enumerate(layers):
            costs = layer_costs(bn, inputs, args.policies.split(","), args.calls)
            for name, cost in costs.items():
                total[name] = total.get(name, 0.0) + cost
            print(f"layer {index} {tuple(inputs.shape)}: " + ", ".join(f"{k} {v:.1f}" for k, v in costs.items()))
    print("sum over layers: " + ", ".join(f"{k} {v:,.0f}" for k, v in total.items()))


if __name__ == "__main__":
    main()
