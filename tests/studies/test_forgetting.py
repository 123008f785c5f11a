"""The one-class-run recovery case: its batches and what is counted."""

from __future__ import annotations

import torch
from torch import nn

from studies.forgetting import errors_after, one_class_run_then_iid


def test_two_runs_of_one_class_then_iid_batches_of_which_only_those_count() -> None:
    labels = torch.arange(40) % 4  # ten images of each of four classes
    images = labels.float().view(40, 1, 1, 1).expand(40, 1, 2, 2).clone()
    batches = one_class_run_then_iid(images, labels, run=3, batch_size=5, after=12, seed=0)
    assert [(int(y.unique().numel()), int(y[0]), counted) for _, y, counted in batches[:6]] == [(1, 0, False)] * 3 + [
        (1, 1, False)
    ] * 3
    tail = batches[6:]
    assert [len(y) for _, y, _ in tail] == [5, 5, 2] and all(counted for *_, counted in tail)
    seen = torch.cat([x[:, 0, 0, 0] for x, _, _ in tail])
    assert len(seen.unique(return_counts=True)[1]) > 1  # i.i.d.: several classes
    assert torch.equal(seen, torch.cat([y for _, y, _ in tail]).float())  # each image with its own label


class Constant(nn.Module):
    """Predicts class 0 whatever the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 4).float()


def test_only_the_counted_batches_count_their_errors() -> None:
    y = torch.tensor([0, 1, 2, 0])
    batches = [(torch.zeros(4, 1), torch.ones(4, dtype=torch.long), False), (torch.zeros(4, 1), y, True)]
    assert errors_after(Constant(), batches) == 2  # the first batch's four errors are not counted
