"""The base classes of the methods: :class:`Method` (a learner wrapping an adapted model) and
:class:`GradientMethod` (one that trains the policy layers' affine parameters with Adam).

See :doc:`/concepts` for the lifecycle of a learner and how to write a method of your own.
"""

from __future__ import annotations

import copy
import logging
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tta.options import Range, declared_options
from tta.policies.base import NormPolicy, pausing
from tta.stats import all_finite

logger = logging.getLogger(__name__)

LEARNING_RATE = Range(0, 1, low_open=True)
"""The range of a method's Adam learning rate, (0, 1]: Adam moves each parameter by about ``lr`` per step
whatever the gradient's scale, and the affine parameters it trains are of order 1 (a BatchNorm's scale and
shift), so a larger step overshoots them whole. The official values are 1e-3 (Tent on CIFAR, RoTTA) and
2.5e-4 (Tent on ImageNet)."""

# Each policy layer a learner holds, to the learner (both weak: a learner dropped unreleased holds nothing).
_HOLDERS: weakref.WeakKeyDictionary[NormPolicy, weakref.ref[Method]] = weakref.WeakKeyDictionary()


def holder_of(layer: NormPolicy) -> Method | None:
    """The attached learner that holds ``layer``, or None."""
    ref = _HOLDERS.get(layer)
    holder = None if ref is None else ref()
    return None if holder is None or holder.released else holder


def seeded_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for a method's ``step``-th random draw under ``seed``: numpy's ``SeedSequence`` mixes
    the two, so neighbouring (seed, step) pairs give unrelated draws, the same in any process."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


class Method(nn.Module):
    """Wraps a model adapted with :func:`tta.adapt` and decides, on every forward, how it adapts: a learner.

    Made by :func:`tta.attach_method`, never directly. ``forward(x)`` adapts and returns the prediction;
    while ``paused`` (set by :func:`tta.paused`, which also pauses the policy layers) it only predicts.
    A subclass writes :meth:`forward_and_adapt`, and :meth:`predict` where its paused prediction is not
    the model's forward; one that keeps state of its own extends :meth:`reset` (the whole learner back to
    the moment of attach, policy layers included), and one that changes the model when attached extends
    :meth:`release` (the model given back). State that must be saved is in buffers or in the module's
    extra state, so ``state_dict()`` holds all of it; the extra state holds the learner's options too (a
    subclass keeps each constructor option as the attribute of its name), and ``load_state_dict`` refuses
    a state saved with other options before loading anything into the learner.

    The model must return ``(batch, classes)`` logits; every model output a method uses passes
    :meth:`check_logits`, before a step uses it. A model's forward also updates the policy layers, so
    before a learner's first adapting call one paused :meth:`predict` (which changes nothing) checks the
    output: a model that never returns logits is refused with no state changed, at the cost of one
    prediction per learner.

    Args:
        model: a model adapted with :func:`tta.adapt` (it has policy layers) that no other learner holds.

    Raises:
        ValueError: the model has no policy layer, is a learner, holds one, or has policy layers a learner
            holds (a model takes one method at a time; :func:`tta.detach` the learner first).

    See :doc:`/concepts` (the lifecycle, what is refused, writing a method) and :doc:`/methods/index`.
    """

    method_name: str = ""  # set by tta.registry.register_method
    output_level: bool = False
    """True for a method that calls the adapted model once per batch, changes nothing in it and computes its
    prediction from that call's output (LAME): the model's own output is the policy alone's prediction."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        layers = [m for m in model.modules() if isinstance(m, NormPolicy)]
        if any(isinstance(m, Method) for m in model.modules()) or any(holder_of(m) is not None for m in layers):
            raise ValueError(
                "the model already has a method attached (it is a learner, holds one, or its policy layers are "
                "held by one); tta.detach(learner) first, or attach to a fresh model"
            )
        if not layers:
            raise ValueError(
                f"{type(self).__name__} needs a model whose BatchNorm layers were swapped by "
                f"tta.adapt(model, policy); {type(model).__name__} has no policy layer"
            )
        self.model = model
        self.layers = layers  # a plain list: the layers are registered once, inside the model
        self.paused = False
        self.released = False
        self.output_checked = False
        self.training = model.training  # the model's mode, untouched (a method never calls train())
        self.held: list[NormPolicy] = []
        self._hold(layers)

    def _hold(self, layers: list[NormPolicy]) -> None:
        """Mark ``layers`` (and those held before) as this learner's until :meth:`release`: no other method
        attaches to them."""
        self.held += layers
        for layer in self.held:
            _HOLDERS[layer] = weakref.ref(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A copy (``copy.deepcopy``, unpickling) holds its own copies of the layers."""
        super().__setstate__(state)
        self._hold([])

    def forward(self, x: Tensor) -> Tensor:
        if self.released:
            raise RuntimeError(
                f"this {self.method_name} learner was detached (tta.detach) and its model given back; "
                "attach the method again with tta.attach_method"
            )
        if self.paused:
            return self.check_logits(self.predict(x), len(x))
        if not self.output_checked:
            with torch.no_grad(), pausing(m for m in self.modules() if isinstance(m, NormPolicy)):
                self.check_logits(self.predict(x), len(x))
            self.output_checked = True
        return self.forward_and_adapt(x)

    def check_logits(self, output: object, batch: int) -> Tensor:
        """``output`` if it is ``(batch, classes)`` logits, else a ValueError naming what the model returned."""
        if not isinstance(output, Tensor) or output.dim() != 2 or len(output) != batch:
            got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(
                f"{self.method_name} needs (batch, classes) logits from the model for a batch of {batch}; "
                f"it returned {got}"
            )
        return output

    def predict(self, x: Tensor) -> Tensor:
        """The prediction while paused, with no update: the adapted model's forward (RoTTA: its teacher's)."""
        return self.model(x)

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        """Adapt on the batch ``x`` and return the prediction for it."""
        raise NotImplementedError

    def reset(self) -> None:
        """Return the whole learner to the moment of attach: every policy layer it holds (:func:`tta.reset`);
        a subclass with state of its own extends it."""
        for module in self.modules():
            if isinstance(module, NormPolicy):
                module.reset()

    def release(self, keep_adapted: bool = False) -> nn.Module:
        """Give the model back (:func:`tta.detach`), undoing what attaching changed in it (``keep_adapted``
        keeps what the method learned); the learner then refuses further calls. A subclass that changes
        the model extends it."""
        self.released = True
        return self.model

    def options(self) -> dict[str, object]:
        """The learner's options, its constructor's keyword arguments (:func:`tta.method_options`)."""
        return {name: getattr(self, name) for name in declared_options(type(self).__init__)}

    def get_extra_state(self) -> dict[str, Any]:
        return {"options": self.options()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Nothing to load: the options were compared before (:meth:`_check_saved_options`)."""

    def _check_saved_options(self, state: dict[str, Any]) -> None:
        """Refuse the extra state of a learner made with other options, naming each that differs."""
        saved, mine = state.get("options"), self.options()
        if saved is None:
            raise ValueError(f"cannot load a {self.method_name} state that holds no options (saved by an older tta)")
        differ = [
            f"{name}={saved.get(name)!r} in the state, {mine.get(name)!r} here"
            for name in {**mine, **saved}
            if saved.get(name) != mine.get(name)
        ]
        if differ:
            raise ValueError(
                f"cannot load a {self.method_name} state saved with other options: {'; '.join(differ)}; attach "
                "the method with the state's options to load it"
            )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        extra = state_dict.get(f"{prefix}_extra_state")
        if extra is not None:  # before this learner, or the model it holds, loads anything
            self._check_saved_options(extra)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return ", ".join([f"method={self.method_name!r}", *(f"{k}={v!r}" for k, v in self.options().items())])


class GradientMethod(Method):
    """A method that trains ``self.params`` with a torch optimizer, ``self.optimizer``: its state is saved
    as the module's extra state (so ``state_dict()`` holds it, loadable with ``weights_only=True``) and
    follows the learner's casts and moves.

    A subclass calls :meth:`train_affine` in its constructor and :meth:`step` with each loss; :meth:`reset`
    and :meth:`release` then restore the parameters, the optimizer and the flags it changed.
    """

    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    initial_affine: Tensor

    def train_affine(self, *, lr: float, betas: tuple[float, float], weight_decay: float) -> None:
        """Train only the policy layers' affine parameters, with Adam; called by a subclass's constructor.

        Every other parameter gets ``requires_grad`` False while attached, and the layers' ``stats_grad``
        is set, so the gradient flows through the current batch's share of the statistics as in the
        official methods' train-mode layers (:meth:`release` undoes both); the attach-time values (the
        ``initial_affine`` buffer) and optimizer state are kept for :meth:`reset` and :meth:`release`.
        """
        self.params = list({id(p): p for layer in self.layers for p in layer.affine_parameters()}.values())
        if not self.params:
            raise ValueError(
                f"{self.method_name} trains the normalization layers' affine parameters; this model's have none"
            )
        self.requires_grad_before = [(p, p.requires_grad) for p in self.model.parameters()]
        self.model.requires_grad_(False)
        for p in self.params:
            p.requires_grad_(True)
        self.stats_grad_before = [layer.stats_grad for layer in self.layers]
        for layer in self.layers:
            layer.stats_grad = True
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=betas, weight_decay=weight_decay)
        self.initial_optimizer_state = copy.deepcopy(self.optimizer.state_dict())
        self.register_buffer("initial_affine", torch.cat([p.detach().flatten() for p in self.params]))

    def reset(self) -> None:
        """The policy layers, the affine parameters and the optimizer state as at attach."""
        super().reset()
        self._restore_affine()
        self.optimizer.load_state_dict(copy.deepcopy(self.initial_optimizer_state))

    def release(self, keep_adapted: bool = False) -> nn.Module:
        """The model with every parameter's ``requires_grad`` and every layer's ``stats_grad`` as before
        attach, and its affine parameters' values at attach unless ``keep_adapted``."""
        if not keep_adapted:
            self._restore_affine()
        for p, flag in self.requires_grad_before:
            p.requires_grad_(flag)
        for layer, stats_grad in zip(self.layers, self.stats_grad_before):
            layer.stats_grad = stats_grad
        return super().release(keep_adapted)

    def _restore_affine(self, params: list[nn.Parameter] | None = None) -> None:
        """Affine parameters (``self.params``, or a copy's in the same order) back to their values at attach."""
        params = self.params if params is None else params
        with torch.no_grad():
            for p, value in zip(params, self.initial_affine.split([p.numel() for p in params])):
                p.copy_(value.view_as(p))

    def step(self, loss: Tensor) -> bool:
        """One optimizer step on ``loss`` w.r.t. ``self.params``; whether it was taken. A non-finite loss or
        gradient skips it, and a step that leaves a parameter non-finite is undone (parameters and
        optimizer state back to their values before it), both logged, rather than turning the parameters
        into NaN for the rest of the stream. A loss with no gradient at all is an error: the model computed
        its output outside autograd, and every step would silently do nothing."""
        if not loss.requires_grad:
            raise RuntimeError(
                f"{self.method_name}: the loss carries no gradient to the affine parameters, so no step can be "
                "taken: the model computes its output without autograd (a torch.no_grad block or a .detach() "
                "in its forward, or a forward hook that replaces the output with a detached tensor)"
            )
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        if not bool(all_finite(loss, *(g for g in grads if g is not None))):
            logger.warning("%s: non-finite loss or gradient; the step is skipped", self.method_name)
            return False
        params_before = [p.detach().clone() for p in self.params]
        optimizer_before = copy.deepcopy(self.optimizer.state_dict())
        for p, g in zip(self.params, grads):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not bool(all_finite(*self.params)):
            with torch.no_grad():
                for p, value in zip(self.params, params_before):
                    p.copy_(value)
            self.optimizer.load_state_dict(optimizer_before)
            logger.warning("%s: the step made an affine parameter non-finite; it is undone", self.method_name)
            return False
        return True

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> GradientMethod:
        super()._apply(fn, recurse)
        self.optimizer.load_state_dict(self.optimizer.state_dict())  # re-cast the state like its parameters
        return self
