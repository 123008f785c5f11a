"""The shared statistics maths (docs/reference/notation.md), with hypothesis for the pooled-merge invariant."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tta.stats import all_finite, at_least, batch_moments, host_int, instance_moments, merge_moments, unbiased


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=6),
    shifts=st.lists(st.floats(-100, 100), min_size=6, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_merging_batches_gives_the_moments_of_their_concatenation(
    sizes: list[int], shifts: list[float], seed: int
) -> None:
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


@pytest.mark.parametrize(
    ("shape", "channels_last"),
    [
        ((64, 5), False),
        ((9, 4, 11), False),
        ((3, 6, 7, 5), False),
        ((3, 6, 7, 5), True),
        ((10, 64, 32, 32), False),
        ((2, 3, 4, 5, 6), False),
        ((5, 8, 1, 1), False),
        ((4, 3, 31, 33), False),
    ],
)  # rows of 1,024 values and more: deviations in slices; shorter: matrix-vector products; 1x1: variance 0
def test_batch_and_instance_moments_equal_float64_moments_on_every_path(shape, channels_last) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g) * torch.linspace(0.1, 3, shape[1]).view(1, -1, *[1] * (len(shape) - 2)) + 5
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    dims = [0, *range(2, x.dim())]
    mean, var, n = batch_moments(x)
    assert n == x.numel() // shape[1]
    torch.testing.assert_close(mean.double(), x.double().mean(dims), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var.double(), x.double().var(dims, unbiased=False), rtol=1e-5, atol=1e-7)
    if x.dim() > 2:
        inst_mean, inst_var = instance_moments(x)
        torch.testing.assert_close(inst_mean.double(), x.double().mean(dims[1:]), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(inst_var.double(), x.double().var(dims[1:], unbiased=False), rtol=1e-5, atol=1e-7)


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


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.floats(min_value=-1e30, max_value=1e30), min_size=1, max_size=12),
    specials=st.lists(st.sampled_from([float("nan"), float("inf"), float("-inf")]), max_size=3),
    split=st.integers(min_value=0, max_value=12),
)
def test_all_finite_is_false_exactly_when_a_value_is_nan_or_inf(values, specials, split) -> None:
    data = values + specials
    first, second = torch.tensor(data[:split] or [0.0]), torch.tensor(data[split:] or [0.0])
    expected = all(v == v and abs(v) != float("inf") for v in data)  # |values| <= 1e30: no overflow
    assert bool(all_finite(first, second)) == expected


def test_all_finite_is_a_zero_dim_bool_tensor_on_the_host_on_another_device_and_under_compile() -> None:
    tensors = (torch.ones(3), torch.tensor([1.0, float("nan"), 2.0]))
    results = [
        all_finite(tensors[0]),
        all_finite(*tensors),
        all_finite(*(t.to("meta") for t in tensors)),
        torch.compile(all_finite, backend="eager", fullgraph=True)(*tensors),
    ]
    for result in results:
        assert isinstance(result, torch.Tensor) and result.dtype == torch.bool and result.dim() == 0
    assert [bool(result) for result in (results[0], results[1], results[3])] == [True, False, False]


def test_instance_moments_of_samples_without_spatial_dims_are_the_values_with_or_without_gradient() -> None:
    """A (B, C) input (BatchNorm1d after a Linear): each sample's mean is its value, its variance 0."""
    x = torch.randn(5, 3, requires_grad=True)
    for grad in (False, True):
        mean, var = instance_moments(x, grad=grad)
        assert torch.equal(mean, x.detach()) and torch.equal(var, torch.zeros(5, 3))
    mean.sum().backward()
    assert torch.equal(x.grad, torch.ones(5, 3))


def test_host_int_reads_a_cpu_counter_as_a_number_and_at_least_keeps_the_kind() -> None:
    assert host_int(torch.tensor(3)) == 3 and isinstance(host_int(torch.tensor(3)), int)
    assert at_least(0, 1) == 1 and at_least(torch.tensor(5), 1) == 5 and at_least(torch.tensor(0), 1) == 1
    assert isinstance(at_least(torch.tensor(0), 1), int)  # read on the host, where that is free
