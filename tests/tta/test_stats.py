"""The shared statistics maths (spec M0, M3), with hypothesis for the pooled-merge invariant."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tta.stats import batch_moments, instance_moments, merge_moments, unbiased


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=6),
    shifts=st.lists(st.floats(-100, 100), min_size=6, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_merging_batches_gives_the_moments_of_their_concatenation(sizes: list[int], shifts: list[float], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    batches = [torch.randn(b, 3, 2, 2, generator=generator, dtype=torch.float64) + s for b, s in zip(sizes, shifts)]
    count = torch.zeros((), dtype=torch.int64)
    mean = torch.zeros(3, dtype=torch.float64)
    m2 = torch.zeros(3, dtype=torch.float64)
    for x in batches:
        dims = [0, 2, 3]
        count, mean, m2 = merge_moments(count, mean, m2, x.numel() // 3, x.mean(dims), x.var(dims, unbiased=False))
    everything = torch.cat(batches)
    assert int(count) == everything.numel() // 3
    torch.testing.assert_close(mean, everything.mean([0, 2, 3]))
    torch.testing.assert_close(m2 / count, everything.var([0, 2, 3], unbiased=False))


def test_moments_are_float32_for_low_precision_inputs() -> None:
    x = (torch.randn(4, 3, 5, 5) * 3 + 1).bfloat16()
    mean, var, n = batch_moments(x)
    assert mean.dtype == var.dtype == torch.float32 and n == 100
    reference = x.float()
    torch.testing.assert_close(mean, reference.mean([0, 2, 3]))
    torch.testing.assert_close(var, reference.var([0, 2, 3], unbiased=False))
    inst_mean, inst_var = instance_moments(x)
    torch.testing.assert_close(inst_var, reference.flatten(2).var(2, unbiased=False))
    assert inst_mean.shape == (4, 3)


def test_unbiased_variance() -> None:
    x = torch.randn(7, 2)
    _, var, n = batch_moments(x)
    torch.testing.assert_close(unbiased(var, n), x.var(0, unbiased=True))
