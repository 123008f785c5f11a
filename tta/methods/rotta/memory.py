"""RoTTA's category-balanced sampling with timeliness and uncertainty (CSTU): the memory bank. See
:doc:`/methods/rotta`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn


class CSTUMemory(nn.Module):
    """A memory of at most ``capacity`` test samples, balanced over the predicted classes (Yuan et al. 2023).

    Each incoming sample (its pseudo-label and prediction entropy) is offered with :meth:`add`; it enters
    when its class is under the quota ``capacity / num_classes`` and the memory has room; otherwise an item
    is evicted, from the majority classes (the most occupied ones) if the newcomer's class is under
    quota, else from the newcomer's own class: the item with the highest score ``lambda_t * sigmoid(age /
    capacity) + lambda_u * entropy / log(num_classes)``, and only if that score is strictly higher than
    the newcomer's (age 0); otherwise the newcomer is dropped. After every offer, inserted or not, every
    stored item (the newcomer included) ages by one. Ties go to the last item in (class, insertion) order,
    and :meth:`contents` lists the items in that order, as the official ``core/utils/memory.py`` does.

    Storage is slot-based: the samples in one ``(capacity, *shape)`` tensor on the samples' device, the
    bookkeeping (labels, ages, entropies, insertion stamps) in small NumPy arrays, so a decision costs
    microseconds and never waits on an accelerator. Everything is the module's extra state (the sample
    shape is known only once the first sample comes), so ``state_dict`` round-trips and :meth:`reset`
    empties it.

    Args:
        capacity: the most samples held, >= 1.
        lambda_t: the weight of an item's age (timeliness) in the eviction score.
        lambda_u: the weight of an item's normalized entropy (uncertainty) in the eviction score.
    """

    BOOKKEEPING = ("labels", "ages", "entropies", "stamps")

    def __init__(self, capacity: int = 64, lambda_t: float = 1.0, lambda_u: float = 1.0) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"memory capacity must be >= 1, got {capacity}")
        self.capacity, self.lambda_t, self.lambda_u = capacity, lambda_t, lambda_u
        self.reset()

    def reset(self) -> None:
        """Empty, with the number of classes unknown again."""
        self.num_classes = 0
        self.data: Tensor | None = None
        self.labels = np.full(self.capacity, -1, dtype=np.int64)  # -1: an empty slot
        self.ages = np.zeros(self.capacity, dtype=np.int64)
        self.entropies = np.zeros(self.capacity, dtype=np.float64)
        self.stamps = np.zeros(self.capacity, dtype=np.int64)  # insertion order
        self.inserted = 0

    def __len__(self) -> int:
        return int((self.labels >= 0).sum())

    def score(self, ages: npt.ArrayLike, entropies: npt.ArrayLike) -> np.ndarray:
        """The eviction score: higher is older or more uncertain, in float64 like the official Python floats."""
        timeliness = 1 / (1 + np.exp(-np.asarray(ages, dtype=np.float64) / self.capacity))
        return self.lambda_t * timeliness + self.lambda_u * np.asarray(entropies) / math.log(self.num_classes)

    def add(self, x: Tensor, label: int, entropy: float, num_classes: int) -> bool:
        """Offer one sample ``x`` with its pseudo-label and entropy; return whether it was stored."""
        if self.num_classes == 0:
            if num_classes < 2:
                raise ValueError(f"the CSTU memory needs at least 2 classes, the model predicts {num_classes}")
            self.num_classes = num_classes
        if self.data is None or not len(self):
            self.data = x.new_zeros((self.capacity, *x.shape))
        elif self.data.shape[1:] != x.shape:
            raise ValueError(f"memory holds samples of shape {tuple(self.data.shape[1:])}, got {tuple(x.shape)}")
        elif self.data.device != x.device or self.data.dtype != x.dtype:
            self.data = self.data.to(x.device, x.dtype)
        slot = self.admit(label, entropy)
        if slot is not None:
            self.data[slot] = x
            self.labels[slot], self.entropies[slot] = label, entropy
            self.ages[slot], self.stamps[slot] = 0, self.inserted
            self.inserted += 1
        self.ages += self.labels >= 0
        return slot is not None

    def admit(self, label: int, entropy: float) -> int | None:
        """The slot the newcomer goes to (emptied by an eviction if needed), or None if it is dropped."""
        occupied = self.labels >= 0
        counts = np.bincount(self.labels[occupied], minlength=self.num_classes)
        if counts[label] < self.capacity / self.num_classes:
            if not occupied.all():
                return int(np.argmin(occupied))  # the first empty slot
            candidates = (counts == counts.max())[self.labels]  # the majority classes (memory is full)
        else:
            candidates = self.labels == label
        scores = self.score(self.ages, self.entropies)
        best = scores[candidates].max()
        if not best > self.score(0, entropy):
            return None
        # the last of the best in (class, insertion) order
        tied = candidates & (scores == best)
        slot = int(np.argmax(np.where(tied, self.order_keys(), -1)))
        self.labels[slot] = -1
        return slot

    def order_keys(self) -> np.ndarray:
        """Sort keys of the slots: by class, then by insertion."""
        return self.labels * (self.inserted + 1) + self.stamps

    def contents(self) -> tuple[Tensor, Tensor]:
        """The stored samples ``(n, *shape)`` and their ages ``(n,)`` (int64), in (class, insertion) order."""
        occupied = np.flatnonzero(self.labels >= 0)
        order = occupied[np.argsort(self.order_keys()[occupied], kind="stable")]
        if self.data is None:
            return torch.empty(0), torch.empty(0, dtype=torch.int64)
        return self.data[torch.from_numpy(order).to(self.data.device)], torch.from_numpy(self.ages[order])

    def get_extra_state(self) -> dict[str, Any]:
        state = {
            "num_classes": self.num_classes,
            "inserted": self.inserted,
            **{name: torch.from_numpy(getattr(self, name).copy()) for name in self.BOOKKEEPING},
        }
        if self.data is not None:
            state["data"] = self.data.clone()
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.reset()
        self.num_classes, self.inserted = int(state["num_classes"]), int(state["inserted"])
        for name in self.BOOKKEEPING:
            getattr(self, name)[:] = state[name].numpy()
        if "data" in state:
            self.data = state["data"].clone()

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> CSTUMemory:
        """Casts and moves take the stored samples along; the bookkeeping stays on the CPU."""
        super()._apply(fn, recurse)
        if self.data is not None:
            self.data = fn(self.data)
        return self

    def extra_repr(self) -> str:
        return f"capacity={self.capacity}, lambda_t={self.lambda_t}, lambda_u={self.lambda_u}"
