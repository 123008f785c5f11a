"""RoTTA's category-balanced sampling with timeliness and uncertainty (CSTU): the memory bank (spec M8, M13)."""

from __future__ import annotations

import math
from typing import Any, Callable

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
    bookkeeping (labels, ages, entropies, insertion stamps) in small CPU tensors, so a decision never
    waits on an accelerator. Everything is the module's extra state (the sample shape is known only
    once the first sample comes), so ``state_dict`` round-trips and :meth:`reset` empties it.
    """

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
        self.labels = torch.full((self.capacity,), -1, dtype=torch.int64)  # -1: an empty slot
        self.ages = torch.zeros(self.capacity, dtype=torch.int64)
        self.entropies = torch.zeros(self.capacity, dtype=torch.float64)
        self.stamps = torch.zeros(self.capacity, dtype=torch.int64)  # insertion order
        self.inserted = 0

    def __len__(self) -> int:
        return int((self.labels >= 0).sum())

    def score(self, ages: Tensor, entropies: Tensor) -> Tensor:
        """The eviction score: higher is older or more uncertain, in float64 like the official Python floats."""
        timeliness = torch.sigmoid(ages.to(torch.float64) / self.capacity)
        return self.lambda_t * timeliness + self.lambda_u * entropies / math.log(self.num_classes)

    def add(self, x: Tensor, label: int, entropy: float, num_classes: int) -> bool:
        """Offer one sample ``x`` with its pseudo-label and entropy; return whether it was stored."""
        if self.num_classes == 0:
            if num_classes < 2:
                raise ValueError(f"the CSTU memory needs at least 2 classes, the model predicts {num_classes}")
            self.num_classes = num_classes
        if self.data is None or self.data.shape[1:] != x.shape or self.data.device != x.device:
            if self.data is not None and len(self):
                raise ValueError(f"memory holds samples of shape {tuple(self.data.shape[1:])}, got {tuple(x.shape)}")
            self.data = x.new_zeros((self.capacity, *x.shape))
        slot = self.admit(label, entropy)
        if slot is not None:
            self.data[slot] = x
            self.labels[slot], self.entropies[slot] = label, entropy
            self.ages[slot], self.stamps[slot] = 0, self.inserted
            self.inserted += 1
        self.ages += (self.labels >= 0).long()
        return slot is not None

    def admit(self, label: int, entropy: float) -> int | None:
        """The slot the newcomer goes to (emptied by an eviction if needed), or None if it is dropped."""
        occupied = self.labels >= 0
        counts = torch.bincount(self.labels[occupied], minlength=self.num_classes)
        if counts[label] < self.capacity / self.num_classes:
            if not bool(occupied.all()):
                return int((~occupied).nonzero()[0])
            majority = counts == counts.max()
            candidates = majority[self.labels.clamp_min(0)] & occupied
        else:
            candidates = self.labels == label
        scores = self.score(self.ages, self.entropies)
        best = scores[candidates].max()
        if not bool(best > self.score(torch.zeros((), dtype=torch.int64), torch.tensor(entropy, dtype=torch.float64))):
            return None
        # the last of the best in (class, insertion) order
        order = self.labels * (self.inserted + 1) + self.stamps
        tied = candidates & (scores == best)
        slot = int(torch.where(tied, order, -1).argmax())
        self.labels[slot] = -1
        return slot

    def contents(self) -> tuple[Tensor, Tensor]:
        """The stored samples ``(n, *shape)`` and their ages ``(n,)`` (int64), in (class, insertion) order."""
        occupied = (self.labels >= 0).nonzero().squeeze(1)
        order = occupied[torch.argsort(self.labels[occupied] * (self.inserted + 1) + self.stamps[occupied])]
        if self.data is None:
            return torch.empty(0), torch.empty(0, dtype=torch.int64)
        return self.data[order.to(self.data.device)], self.ages[order]

    def get_extra_state(self) -> dict[str, Any]:
        state = {
            "num_classes": self.num_classes, "inserted": self.inserted, "labels": self.labels.clone(),
            "ages": self.ages.clone(), "entropies": self.entropies.clone(), "stamps": self.stamps.clone(),
        }
        if self.data is not None:
            state["data"] = self.data.clone()
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.reset()
        self.num_classes, self.inserted = int(state["num_classes"]), int(state["inserted"])
        for name in ("labels", "ages", "entropies", "stamps"):
            getattr(self, name).copy_(state[name])
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
