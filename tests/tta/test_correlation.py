"""The label-free correlation measure: hand-computed distances, i.i.d. against sorted synthetic streams,
errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tta import CorrelationMeter
from tta.correlation import expected_iid_distance
from tta_streams.orderings import label_stats


def one_hot(labels: list[int], classes: int = 2) -> torch.Tensor:
    return F.one_hot(torch.tensor(labels), classes).float()


def test_distances_to_the_running_histogram_by_hand() -> None:
    meter = CorrelationMeter()
    assert meter.update(one_hot([0, 0, 1, 1])) is None  # no reference yet
    # reference (1/2, 1/2), batch (1, 0): TV = 1/2
    assert meter.update(one_hot([0, 0, 0, 0])) == pytest.approx(0.5)
    # reference counts (6, 2) -> (3/4, 1/4), batch (0, 1): TV = 3/4; mean (1/2 + 3/4) / 2
    assert meter.update(one_hot([1, 1, 1, 1])) == pytest.approx(0.75)
    assert meter.value == pytest.approx(0.625)
    meter.reset()
    assert np.isnan(meter.value)


def test_the_argmax_of_logits_is_the_predicted_class() -> None:
    meter = CorrelationMeter()
    meter.update(torch.tensor([[2.0, 1.0, 0.0], [0.0, 5.0, 1.0]]))  # classes 0, 1
    # reference (1/2, 1/2, 0), batch (0, 0, 1): TV = 1
    assert meter.update(torch.tensor([[0.0, 0.0, 3.0], [-1.0, -2.0, 0.0]])) == pytest.approx(1.0)


def synthetic(labels: np.ndarray, batch: int) -> float:
    meter = CorrelationMeter()
    for start in range(0, len(labels), batch):
        meter.update(one_hot(labels[start : start + batch].tolist(), 10))
    return meter.value


def test_iid_reads_as_sampling_noise_and_sorted_near_one_close_to_the_true_measure() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 200)
    iid, ordered = rng.permutation(labels), labels  # 2,000 labels, batches of 50
    iid_value, sorted_value = synthetic(iid, 50), synthetic(ordered, 50)
    assert iid_value < 0.25 < 0.8 < sorted_value
    # sorted: batch t (t = 1..39) is all class t // 4, the reference holds t batches of which t % 4 are of
    # that class, so TV = 1 - (t % 4) / t
    assert sorted_value == pytest.approx(np.mean([1 - (t % 4) / t for t in range(1, 40)]))
    # with true labels the only difference from Stream.label_stats is the online reference
    assert iid_value == pytest.approx(label_stats(iid, 50).mean_tv_distance, abs=0.03)
    assert sorted_value == pytest.approx(label_stats(ordered, 50).mean_tv_distance, abs=0.1)


def test_bad_outputs_are_named() -> None:
    meter = CorrelationMeter()
    with pytest.raises(ValueError, match=r"needs \(batch, classes\) outputs, got shape \(4,\)"):
        meter.update(torch.zeros(4))
    meter.update(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="saw 3 classes so far, now 5; reset"):
        meter.update(torch.zeros(4, 5))


@pytest.mark.parametrize(
    "outputs, error, message",
    [
        (torch.zeros(4, 0), ValueError, r"got shape \(4, 0\)"),
        (torch.zeros(0, 3), ValueError, r"got shape \(0, 3\)"),
        (torch.zeros(4, 3, dtype=torch.bool), TypeError, "floating-point outputs.*torch.bool"),
        (torch.zeros(4, 3, dtype=torch.complex64), TypeError, "floating-point outputs.*torch.complex64"),
        (torch.zeros(4, 3, dtype=torch.int64), TypeError, "floating-point outputs.*torch.int64"),
        ([[0.0, 1.0]], TypeError, "needs a tensor"),
    ],
)
def test_outputs_that_are_not_a_batch_of_real_scores_are_refused_before_counting(outputs, error, message) -> None:
    meter = CorrelationMeter()
    meter.update(one_hot([0, 1, 2], 3))
    with pytest.raises(error, match=message):
        meter.update(outputs)
    assert meter.counts.tolist() == [1.0, 1.0, 1.0] and meter.batches == 0


def test_rows_with_a_nan_or_an_infinity_are_not_counted_as_predictions() -> None:
    meter = CorrelationMeter()
    meter.update(one_hot([0, 1, 1, 0]))
    # one NaN row and one +inf row beside the finite class-1 rows: only those count; TV((0, 1), (1/2, 1/2)) = 1/2
    batch = torch.cat([one_hot([1, 1]), torch.tensor([[float("nan"), 0.0], [0.0, float("inf")]])])
    assert meter.update(batch) == pytest.approx(0.5)
    assert meter.counts.tolist() == [2.0, 4.0] and meter.samples == 2
    # a batch with no finite row has no predicted class at all: nothing moves
    assert meter.update(torch.full((4, 2), float("nan"))) is None
    assert meter.counts.tolist() == [2.0, 4.0] and meter.batches == 1 and meter.value == pytest.approx(0.5)


def test_expected_iid_distance_by_enumeration() -> None:
    # B = 4, q = (1/2, 1/2): |X/4 - 1/2| is 1/2, 1/4, 0, 1/4, 1/2 with probabilities 1, 4, 6, 4, 1 over 16:
    # mean 3/16 per class, TV = 0.5 * 2 * 3/16
    assert expected_iid_distance(torch.tensor([0.5, 0.5]), 4) == pytest.approx(3 / 16)
    # B = 2, q = (0.2, 0.8): |X/2 - 0.2| is 0.2, 0.3, 0.8 with probabilities 0.64, 0.32, 0.04: mean 0.256,
    # the same for the other class; TV = 0.256
    assert expected_iid_distance(torch.tensor([0.2, 0.8]), 2) == pytest.approx(0.256)
    assert expected_iid_distance(torch.tensor([1.0, 0.0]), 64) == 0.0
    assert 0 < expected_iid_distance(torch.full((10,), 0.1), 100_000) < 0.01  # no overflow, tends to 0


def test_the_iid_level_is_that_of_the_batches_seen() -> None:
    meter = CorrelationMeter()
    assert np.isnan(meter.iid_level)
    meter.update(one_hot([0, 1, 0, 1]))
    meter.update(one_hot([0, 0, 1, 1]))  # reference after both: (1/2, 1/2), batches of 4
    assert meter.iid_level == pytest.approx(3 / 16)
