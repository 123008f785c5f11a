"""RoTTA's CSTU memory on small hand-made sequences (docs/methods/rotta.md; official ``core/utils/memory.py``):
insertion, the class quota, eviction from the majority classes, the strict score comparison, aging, ties,
the order of the contents, state_dict and reset. Expected scores are worked out in the comments:
``score = lambda_t * sigmoid(age / capacity) + lambda_u * entropy / log(num_classes)``."""

from __future__ import annotations

import io

import pytest
import torch

from tta.methods.rotta.memory import CSTUMemory


def offer(memory: CSTUMemory, num_classes: int, *items: tuple[float, int, float]) -> list[bool]:
    """Offer samples ``(value, label, entropy)``; a sample is a (2,) tensor filled with its value."""
    return [memory.add(torch.full((2,), value), label, entropy, num_classes) for value, label, entropy in items]


def stored(memory: CSTUMemory) -> tuple[list[float], list[int]]:
    """The values of the stored samples and their ages, in the order the memory lists them."""
    data, ages = memory.contents()
    return [float(sample[0]) for sample in data], ages.tolist()


def test_a_class_at_its_quota_evicts_its_own_highest_score_even_with_room_left() -> None:
    memory = CSTUMemory(capacity=4)  # 2 classes: quota 2
    assert offer(memory, 2, (1.0, 0, 0.1), (2.0, 0, 0.2)) == [True, True]
    assert stored(memory) == ([1.0, 2.0], [2, 1])  # every item ages by one per offer, the newcomer too
    # class 0 is at quota: candidates 1.0 (sigmoid(2/4) + 0.1/log 2 = 0.767) and 2.0 (sigmoid(1/4) +
    # 0.2/log 2 = 0.851); the newcomer scores sigmoid(0) + 0.05/log 2 = 0.572 < 0.851: 2.0 goes
    assert offer(memory, 2, (3.0, 0, 0.05)) == [True]
    assert stored(memory) == ([1.0, 3.0], [3, 1]) and len(memory) == 2
    # an uncertain newcomer (0.5 + 0.9/log 2 = 1.80) beats no one (best 1.0: sigmoid(3/4) + 0.144 = 0.824):
    # it is dropped, and the others still age
    assert offer(memory, 2, (4.0, 0, 0.9)) == [False]
    assert stored(memory) == ([1.0, 3.0], [4, 2])


def test_a_full_memory_evicts_from_the_majority_classes_only() -> None:
    memory = CSTUMemory(capacity=6)  # 4 classes: quota 1.5, so a class under quota holds at most one
    offer(memory, 4, (0.0, 3, 1.2), (1.0, 0, 0.1), (2.0, 0, 0.2), (3.0, 1, 0.1), (4.0, 1, 0.3), (5.0, 2, 0.0))
    assert stored(memory) == ([1.0, 2.0, 3.0, 4.0, 5.0, 0.0], [5, 4, 3, 2, 1, 6])
    # class 2 (one item) is under quota, the memory is full: majority classes 0 and 1 (two items each).
    # Scores (log 4 = 1.386): 1.0: sigmoid(5/6) + 0.072 = 0.769; 2.0: sigmoid(4/6) + 0.144 = 0.805;
    # 3.0: sigmoid(3/6) + 0.072 = 0.695; 4.0: sigmoid(2/6) + 0.216 = 0.799. The item 0.0 of class 3
    # scores highest of all (sigmoid(1) + 0.866 = 1.597) but class 3 is no majority: 2.0 goes.
    assert offer(memory, 4, (6.0, 2, 0.05)) == [True]
    assert stored(memory) == ([1.0, 3.0, 4.0, 5.0, 6.0, 0.0], [6, 4, 3, 2, 1, 7])


def test_the_evicted_item_must_score_strictly_higher_than_the_newcomer() -> None:
    memory = CSTUMemory(capacity=1, lambda_t=0.0)  # 2 classes: quota 0.5; scores are entropies alone
    offer(memory, 2, (1.0, 0, 0.3))
    assert offer(memory, 2, (2.0, 1, 0.3)) == [False]  # equal scores: the newcomer is dropped
    assert offer(memory, 2, (3.0, 1, 0.2)) == [True]  # 0.3 > 0.2: the old item goes
    assert stored(memory) == ([3.0], [1])


def test_ties_evict_the_last_item_in_class_then_insertion_order() -> None:
    within = CSTUMemory(capacity=3, lambda_t=0.0)  # quota 1.5
    offer(within, 2, (1.0, 0, 0.5), (2.0, 0, 0.5), (3.0, 0, 0.1))
    assert stored(within)[0] == [1.0, 3.0]  # 1.0 and 2.0 tie: the later one, 2.0, goes
    across = CSTUMemory(capacity=4, lambda_t=0.0)  # 3 classes: quota 1.33
    offer(across, 3, (1.0, 1, 0.5), (2.0, 0, 0.5), (3.0, 0, 0.2), (4.0, 1, 0.2), (5.0, 2, 0.0))
    # majority classes 0 and 1 tie at 0.5 between 2.0 (class 0) and 1.0 (class 1, inserted first):
    # class order decides, 1.0 goes; the contents are listed by class, then insertion
    assert stored(across) == ([2.0, 3.0, 4.0, 5.0], [4, 3, 2, 1])


def test_scores_are_the_official_formula() -> None:
    memory = CSTUMemory(capacity=64, lambda_t=2.0, lambda_u=0.5)
    memory.num_classes = 10
    ages, entropies = torch.tensor([0, 64, 128]), torch.tensor([0.0, 1.0, 2.3], dtype=torch.float64)
    expected = [
        2.0 * 0.5 + 0.0,
        2.0 * 0.7310585786300049 + 0.5 / 2.302585092994046,
        2.0 * 0.8807970779778823 + 0.5 * 2.3 / 2.302585092994046,
    ]
    torch.testing.assert_close(memory.score(ages, entropies).tolist(), expected, rtol=1e-12, atol=1e-12)


def test_the_state_dict_round_trips_and_reset_empties() -> None:
    memory = CSTUMemory(capacity=4)
    offer(memory, 3, (1.0, 0, 0.1), (2.0, 2, 0.2), (3.0, 1, 0.3))
    buffer = io.BytesIO()
    torch.save(memory.state_dict(), buffer)
    buffer.seek(0)
    restored = CSTUMemory(capacity=4)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert stored(restored) == stored(memory) == ([1.0, 3.0, 2.0], [3, 1, 2])
    assert offer(restored, 3, (4.0, 1, 0.0)) == offer(memory, 3, (4.0, 1, 0.0))
    assert stored(restored) == stored(memory)
    memory.reset()
    assert len(memory) == 0 and memory.num_classes == 0 and memory.data is None
    assert stored(memory) == ([], [])


def test_one_class_is_refused_and_a_new_sample_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        CSTUMemory().add(torch.zeros(2), 0, 0.0, num_classes=1)
    memory = CSTUMemory()
    memory.add(torch.zeros(2), 0, 0.0, num_classes=2)
    with pytest.raises(ValueError, match=r"memory holds samples of shape \(2,\), got \(3,\)"):
        memory.add(torch.zeros(3), 0, 0.0, num_classes=2)
