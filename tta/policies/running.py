"""The base of the policies whose state is updated from each batch's moments, then normalizes it
(:doc:`/reference/notation`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor

from tta.policies.base import NormPolicy
from tta.stats import all_finite, select

State = Mapping[str, Any]
"""A state by buffer name: the buffers, or new values (a tensor, or a count read on the host)."""


class RunningStatsPolicy(NormPolicy):
    """Running statistics: each adapting forward updates the state from the batch's moments, and the batch is
    normalized with the updated state.

    The forward, once for every subclass: when adapting, the batch's per-channel mean, biased variance and
    count ``n`` (:meth:`NormPolicy.batch_moments`, of every process's batch together across processes, with
    their gradient under ``stats_grad``); with ``n >= 2`` the new state from :meth:`update`, written only if
    the batch moments are finite (:meth:`NormPolicy.commit`: a branch on the host, ``torch.where`` on an
    accelerator and under ``torch.compile``). The batch is then normalized with :meth:`normalizing_stats`
    of the state; under ``stats_grad`` with :meth:`statistics` of the new state instead, so the gradient
    flows through the batch's share of it (where the batch was finite). A batch with one value per channel
    (n = 1) updates nothing: it has no variance of its own. Across processes (a SyncBatchNorm layer,
    ``NormPolicy`` doc): batch statistics, combined over every process's batch (one all-reduce per layer
    and call).

    A subclass declares its state (:meth:`NormPolicy.add_state`) and writes its rule: :meth:`update` (the new
    state from the old one and the batch moments) and :meth:`statistics` (the mean and variance a state
    normalizes with).
    """

    combines_across_processes: ClassVar[bool] = True

    def update(self, mean: Tensor, var: Tensor, n: int) -> dict[str, Tensor | int]:
        """The new value of each state buffer after a batch of per-channel ``mean``, biased ``var`` and
        count ``n >= 2`` (not yet written)."""
        raise NotImplementedError

    def statistics(self, state: State) -> tuple[Tensor, Tensor]:
        """The per-channel mean and variance that ``state`` (buffer name to value) normalizes with."""
        raise NotImplementedError

    def adapted_stats(self) -> tuple[Tensor, Tensor]:
        return self.statistics(self._buffers)  # the buffers by name, the state among them

    def normalizing_stats(self) -> tuple[Tensor, Tensor]:
        """The statistics the current state normalizes with: :meth:`adapted_stats` here."""
        return self.adapted_stats()

    def normalize(self, x: Tensor) -> Tensor:
        fresh = None
        if self.adapting:
            grad = self.grad_through_stats(x)
            batch_mean, batch_var, n = self.batch_moments(x, grad=grad)
            if n >= 2:
                ok = all_finite(batch_mean, batch_var)
                new = self.update(batch_mean, batch_var, n)
                if grad:  # the new state's statistics, with this batch's share keeping its gradient
                    fresh = ok, self.statistics(new)
                self.commit(ok, **new)
        mean, var = self.normalizing_stats()
        if fresh is not None:
            ok, (new_mean, new_var) = fresh
            mean, var = select(ok, new_mean, mean), select(ok, new_var, var)
        return self.normalize_with(x, mean, var)
