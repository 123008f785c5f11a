"""The label-free correlation and imbalance measures: hand-computed distances and imbalance factors, i.i.d.,
sorted and long-tailed synthetic streams, the verdicts, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tta import CorrelationMeter
from tta.correlation import expected_balanced_imbalance, expected_iid_distance, imbalance_factor
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


def test_imbalance_factor_by_hand() -> None:
    # with the half count, (3.5, 0.5) is (4, 1): slope log 4 over one rank, IF = 4
    assert imbalance_factor(torch.tensor([3.5, 0.5])) == pytest.approx(4.0)
    # (15.5, 3.5, 0.5) is (16, 4, 1): geometric, a factor 4 per rank, IF = 4^2 = 16, in any class order
    assert imbalance_factor(torch.tensor([3.5, 0.5, 15.5])) == pytest.approx(16.0)
    # a least-squares fit: one empty class among equal ones does not decide alone. (8, 8, 8, 0) + 1/2: logs
    # (l, l, l, 0) + log 0.5, l = log 17, centered ranks (-1.5, -0.5, 0.5, 1.5): slope 1.5 l / 5 = 0.3 l per rank,
    # IF = exp(3 * 0.3 l) = 17^0.9, where the largest count over the smallest would read 17
    assert imbalance_factor(torch.tensor([8.0, 8.0, 0.0, 8.0])) == pytest.approx(17**0.9)
    assert imbalance_factor(torch.full((10,), 7.0)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        imbalance_factor(torch.tensor([3.0]))


def test_the_balanced_level_is_the_sampling_noise_of_a_uniform_histogram() -> None:
    rng = np.random.default_rng(123)  # an independent simulation
    draws = rng.multinomial(500, np.full(10, 0.1), size=2000)
    simulated = np.mean([imbalance_factor(torch.from_numpy(row)) for row in draws])
    assert expected_balanced_imbalance(10, 500) == pytest.approx(simulated, rel=0.03)
    assert expected_balanced_imbalance(10, 500) == expected_balanced_imbalance(10, 500)  # one fixed seed
    # the counts' relative noise falls as 1 / sqrt(n): the level tends to 1
    assert expected_balanced_imbalance(10, 100) > expected_balanced_imbalance(10, 10_000) > 1.0
    assert expected_balanced_imbalance(10, 1_000_000) < 1.02


def geometric_prior(imbalance: float, classes: int = 10) -> np.ndarray:
    weights = imbalance ** (-np.arange(classes) / (classes - 1))
    return weights / weights.sum()


def meter_of(labels: np.ndarray, batch: int = 50) -> CorrelationMeter:
    meter = CorrelationMeter()
    for start in range(0, len(labels), batch):
        meter.update(one_hot(labels[start : start + batch].tolist(), 10))
    return meter


def test_an_iid_long_tailed_stream_reads_its_imbalance_factor() -> None:
    rng = np.random.default_rng(0)
    labels = rng.choice(10, size=20_000, p=geometric_prior(10.0))
    meter = meter_of(labels)
    assert meter.imbalance_factor == pytest.approx(10.0, rel=0.15)
    assert meter.class_distribution.sum() == pytest.approx(1.0)
    assert meter.verdict() == "imbalanced"  # the correlation reads i.i.d.: its level is that of the skewed prior
    assert meter.value == pytest.approx(meter.iid_level, abs=0.02)


@pytest.mark.parametrize("imbalance", [1.0, 10.0])
def test_the_verdicts_tell_correlation_and_imbalance_apart(imbalance) -> None:
    rng = np.random.default_rng(1)
    prior = geometric_prior(imbalance)
    # runs of one class (lengths 50 to 150) whose classes follow the prior: correlated, and as imbalanced as it
    runs = [np.full(rng.integers(50, 151), rng.choice(10, p=prior)) for _ in range(300)]
    shuffled = rng.permutation(np.concatenate(runs))
    sorted_verdict, iid_verdict = meter_of(np.concatenate(runs)).verdict(), meter_of(shuffled).verdict()
    if imbalance == 1.0:
        assert (sorted_verdict, iid_verdict) == ("correlated", "i.i.d. and balanced")
    else:
        assert (sorted_verdict, iid_verdict) == ("correlated and imbalanced", "imbalanced")


def test_the_imbalance_readings_before_any_batch_and_the_verdict_before_the_second() -> None:
    meter = CorrelationMeter()
    assert np.isnan(meter.imbalance_factor) and np.isnan(meter.balanced_level) and meter.class_distribution is None
    meter.update(one_hot([0, 1, 1, 1], 3))
    assert meter.class_distribution.tolist() == [0.25, 0.75, 0.0]
    assert meter.balanced_level == expected_balanced_imbalance(3, 4)
    with pytest.raises(ValueError, match="no reading before the second batch"):
        meter.verdict()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"correlated_margin": -0.1}, "correlated_margin must be a number in"),
        ({"correlated_margin": 1.0}, "correlated_margin must be a number in"),
        ({"correlated_margin": "0.1"}, "correlated_margin must be a number in"),
        ({"imbalanced_factor": 1.0}, "imbalanced_factor must be a number above 1"),
        ({"imbalanced_factor": float("nan")}, "imbalanced_factor must be a number above 1"),
    ],
)
def test_bad_verdict_thresholds_are_refused(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        CorrelationMeter(**options)


def test_the_verdict_thresholds_decide() -> None:
    rng = np.random.default_rng(2)
    labels = rng.choice(10, size=5_000, p=geometric_prior(4.0))
    reading = meter_of(labels).imbalance_factor
    assert 3.0 < reading < 6.0
    strict, lenient = (
        CorrelationMeter(imbalanced_factor=reading + 0.5),
        CorrelationMeter(imbalanced_factor=reading - 0.5),
    )
    for meter in (strict, lenient):
        for start in range(0, len(labels), 50):
            meter.update(one_hot(labels[start : start + 50].tolist(), 10))
    assert (strict.verdict(), lenient.verdict()) == ("i.i.d. and balanced", "imbalanced")
