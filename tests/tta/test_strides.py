"""Any strided input: a policy's output and state do not depend on the input's memory layout."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import tta
from tests.tta.conftest import give_source_statistics, with_classifier

POLICIES = tta.list_policies()


def sliced(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.flip(0)])[::2]  # every other sample: batch stride doubled


def expanded(x: torch.Tensor) -> torch.Tensor:
    return x[:1].expand(len(x), *x.shape[1:])  # stride 0 over the batch


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)


def transposed(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2).contiguous().transpose(-1, -2)  # spatial dims swapped in memory


LAYOUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sliced": sliced,
    "expanded": expanded,
    "channels_last": channels_last,
    "transposed": transposed,
}


def bn_model(dims: int, policy: str) -> nn.Module:
    bn = nn.BatchNorm2d(3) if dims == 2 else nn.BatchNorm3d(3)
    return with_classifier(give_source_statistics(nn.Sequential(bn)), policy, 3 * 5 * 7 if dims == 2 else 3 * 4 * 5 * 3)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("policy", POLICIES)
def test_output_and_state_are_those_of_the_contiguous_copy(policy: str, layout: str, dims: int) -> None:
    generator = torch.Generator().manual_seed(0)
    shape = (6, 3, 5, 7) if dims == 2 else (6, 3, 4, 5, 3)
    batches = [LAYOUTS[layout](torch.randn(shape, generator=generator) * 2 + 1) for _ in range(2)]
    assert not batches[0].is_contiguous()
    strided_model, contiguous_model = (
        tta.adapt(bn_model(dims, policy), policy),
        tta.adapt(bn_model(dims, policy), policy),
    )
    with torch.no_grad():
        for x in batches:
            torch.testing.assert_close(strided_model(x), contiguous_model(x.contiguous()), rtol=1e-4, atol=1e-4)
    for (name, a), b in zip(strided_model.state_dict().items(), contiguous_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
