"""One stream served by several processes: SyncBatchNorm layers combine batch statistics across
processes, so two processes with B/2 samples each adapt and predict as one process with B.

Two processes (gloo, CPU) are spawned once for the module and run every case; the tests compare what
they saved with one process given the whole batch.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import tta
from tests.tta.conftest import give_source_statistics

pytestmark = pytest.mark.multiprocess

# Every policy that combines its statistics or its state across processes (the class says so), with options
# that keep the test small.
OPTIONS: dict[str, dict[str, object]] = {"unmix_tns": {"num_components": 4}}
CASES: dict[str, dict[str, object]] = {
    policy: OPTIONS.get(policy, {})
    for policy in tta.list_policies()
    if tta.get_policy(policy).combines_across_processes
}
# Samples of each batch held by process 0 and process 1; in the second batch process 0 holds one
# sample, so its BatchNorm1d layer has n = 1 on its own and n = 8 together.
SHARDS = [(4, 4), (1, 7), (6, 2)]
BATCH = 8
# Under stats_grad (a gradient method's switch) every policy lets the gradient through its batch's share
# (balanced's returned forward normalizes with state only).
GRAD_POLICIES = [policy for policy in CASES if policy != "balanced"]


def base_model() -> nn.Module:
    """Conv + BatchNorm2d, then Linear + BatchNorm1d, with source statistics; the same in every process."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6, 5),
            nn.BatchNorm1d(5),
        )
    return give_source_statistics(model)


def sync_model(process_group: dist.ProcessGroup | None = None) -> nn.Module:
    return nn.SyncBatchNorm.convert_sync_batchnorm(base_model(), process_group)


def batches() -> list[torch.Tensor]:
    """Three shifted batches of the whole stream."""
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(BATCH, 3, 7, 7, generator=generator) * (1 + i) + 0.5 * i for i in range(len(SHARDS))]


def shard(x: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:
    start = sum(sizes[:rank])
    return x[start : start + sizes[rank]]


def loss_weights() -> torch.Tensor:
    """Fixed weights of a linear loss ``sum(weights * logits)``: its total over processes is the loss of one."""
    return torch.randn(BATCH, 5, generator=torch.Generator().manual_seed(2))


def _worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        xs = [shard(x, sizes, rank) for x, sizes in zip(batches(), SHARDS)]
        results: dict[str, object] = {}
        for policy, options in CASES.items():
            model = tta.adapt(sync_model(), policy, **options)
            with torch.no_grad():
                results[policy] = {"outputs": [model(x) for x in xs], "state": model.state_dict()}

        # A gradient method's switch: the gradient flows through the statistics of both processes' batches.
        for policy in GRAD_POLICIES:
            model = tta.adapt(sync_model(), policy)
            for _, layer in tta.policy_layers(model):
                layer.stats_grad = True
            x = xs[1].clone().requires_grad_()
            output = model(x)
            (shard(loss_weights(), SHARDS[1], rank) * output).sum().backward()
            results[f"stats_grad {policy}"] = {
                "output": output.detach(),
                "input_grad": x.grad,
                "param_grads": [p.grad for p in model.parameters()],
            }

        # SyncBatchNorm layers whose own process group holds one process: per-process statistics.
        groups = [dist.new_group([0]), dist.new_group([1])]
        model = tta.adapt(sync_model(groups[rank]), "adabn")
        with torch.no_grad():
            results["own_group"] = {"outputs": [model(x) for x in xs], "state": model.state_dict()}

        # Instance statistics need no reduction: one process alone may call iabn(stats="source"), and a
        # paused unmix_tns (which updates nothing), without the other.
        instance = tta.adapt(sync_model(), "iabn", stats="source")
        mixture = tta.adapt(sync_model(), "unmix_tns", num_components=4)
        if rank == 0:
            with torch.no_grad(), tta.paused(mixture):
                results["instance_alone"] = {"iabn": instance(xs[0]), "unmix_tns": mixture(xs[0])}
        dist.barrier()
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """What each of the two processes saved (one spawn for every test of the module)."""
    folder = tmp_path_factory.mktemp("syncbn")
    mp.start_processes(_worker, args=(str(folder / "store"), str(folder)), nprocs=2, start_method="spawn")
    return [torch.load(folder / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


def gathered(ranks: list[dict], key: str) -> list[torch.Tensor]:
    """Each batch's outputs of both processes, in batch order."""
    return [torch.cat(parts) for parts in zip(*(r[key]["outputs"] for r in ranks))]


@pytest.mark.parametrize("policy", list(CASES))
def test_two_processes_give_the_state_and_outputs_of_one_process_with_the_whole_batch(
    ranks: list[dict], policy: str
) -> None:
    model = tta.adapt(base_model(), policy, **CASES[policy])
    with torch.no_grad():
        expected = [model(x) for x in batches()]
    for got, want in zip(gathered(ranks, policy), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for rank in ranks:
        for name, value in model.state_dict().items():
            torch.testing.assert_close(rank[policy]["state"][name], value, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("policy", GRAD_POLICIES)
def test_stats_grad_gives_the_gradient_of_one_process_with_the_whole_batch(ranks: list[dict], policy: str) -> None:
    if policy == "tbn":
        reference = base_model().train()  # torch's BatchNorm: batch statistics with their gradient
    else:
        reference = tta.adapt(base_model(), policy)
        for _, layer in tta.policy_layers(reference):
            layer.stats_grad = True
    x = batches()[1].requires_grad_()
    output = reference(x)
    (loss_weights() * output).sum().backward()
    parts = [r[f"stats_grad {policy}"] for r in ranks]
    torch.testing.assert_close(torch.cat([p["output"] for p in parts]), output.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([p["input_grad"] for p in parts]), x.grad, rtol=1e-5, atol=1e-5)
    # As SyncBatchNorm: each process holds its own part of the parameters' gradient. (The Linear bias
    # before BatchNorm1d has gradient 0, rounding noise of 1e-5 on both sides.)
    for param, *grads in zip(reference.parameters(), *(p["param_grads"] for p in parts)):
        torch.testing.assert_close(sum(grads), param.grad, rtol=1e-5, atol=1e-4)


def test_a_process_group_of_one_process_keeps_per_process_statistics(ranks: list[dict]) -> None:
    for rank, saved in enumerate(ranks):
        model = tta.adapt(base_model(), "adabn")
        with torch.no_grad():
            expected = [model(shard(x, sizes, rank)) for x, sizes in zip(batches(), SHARDS)]
        for got, want in zip(saved["own_group"]["outputs"], expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_instance_statistics_need_no_other_process(ranks: list[dict]) -> None:
    x = shard(batches()[0], SHARDS[0], 0)
    instance = tta.adapt(base_model(), "iabn", stats="source")
    mixture = tta.adapt(base_model(), "unmix_tns", num_components=4)
    with torch.no_grad(), tta.paused(mixture):
        torch.testing.assert_close(ranks[0]["instance_alone"]["iabn"], instance(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ranks[0]["instance_alone"]["unmix_tns"], mixture(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", tta.list_policies())
def test_sync_batchnorm_without_a_process_group_adapts_as_batchnorm(policy: str) -> None:
    assert not dist.is_initialized()
    plain, synced = tta.adapt(base_model(), policy), tta.adapt(sync_model(), policy)
    with torch.no_grad():
        for x in batches():
            assert torch.equal(synced(x), plain(x))
    for (name, a), b in zip(synced.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name


def test_detach_gives_back_the_sync_batchnorm_layers() -> None:
    model = sync_model()
    layers = [m for m in model.modules() if isinstance(m, nn.SyncBatchNorm)]
    tta.adapt(model, "adabn")
    with torch.no_grad():
        model(batches()[0])
    restored = tta.detach(model, keep_adapted=True)
    assert [m for m in restored.modules() if isinstance(m, _BatchNorm)] == layers


def test_sync_batchnorm_model_compiles_without_a_graph_break() -> None:
    torch._dynamo.reset()
    model = tta.adapt(sync_model(), "adabn")
    with torch.no_grad():
        explanation = torch._dynamo.explain(copy.deepcopy(model))(batches()[0])
    assert explanation.graph_break_count == 0, explanation.break_reasons
