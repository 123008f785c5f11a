"""The user-facing calls: adapt, reset, detach, paused, policy_layers (spec M0)."""

from __future__ import annotations

import contextlib
import itertools
from typing import Iterator

import torch
from torch import nn

from tta.augment import AugmentedUpdate
from tta.policies.base import NormPolicy
from tta.registry import check_options, get_policy
from tta.surgery import check_replaceable, is_batchnorm, post_norm_of, replace_modules


def adapt(model: nn.Module, policy: str, **options: object) -> nn.Module:
    """Replace every BatchNorm layer of ``model`` in place with ``policy``'s layer; return the model.

    Options are the policy's keyword arguments (spec M8b), checked for name, type and range before
    anything changes. If ``model`` is itself a BatchNorm layer, the returned module is its replacement.
    ``momentum_decay`` with ``augment > 0`` returns the model wrapped in
    :class:`tta.augment.AugmentedUpdate` (DUA's protocol): use the return value. The state is created
    as ordinary tensors even inside ``torch.inference_mode()``, so the model adapts outside it too.
    """
    layer_class = get_policy(policy)
    options = check_options(policy, options)
    if policy_layers(model):
        raise ValueError("model is already adapted; call tta.detach(model) before adapting it again")
    batchnorms = [(name, m) for name, m in model.named_modules() if is_batchnorm(m)]
    if not batchnorms:
        raise ValueError(
            f"{type(model).__name__} has no BatchNorm layer (BatchNorm1d/2d/3d or SyncBatchNorm) to adapt"
        )
    for name, bn in batchnorms:
        check_replaceable(name, bn)
        post_norm_of(bn)  # refuse unknown subclasses before anything is swapped
    layer_class.check_model(model, **options)
    index = itertools.count()

    def build(name: str, bn: nn.Module) -> NormPolicy:
        return layer_class(bn, layer_index=next(index), post_norm=post_norm_of(bn), **options)

    with torch.inference_mode(False):
        adapted = replace_modules(model, is_batchnorm, build)
        return layer_class.wrap_model(adapted, **options)


def policy_layers(model: nn.Module) -> list[tuple[str, NormPolicy]]:
    """The policy layers of an adapted model, with their qualified names, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, NormPolicy)]


def _require_layers(model: nn.Module) -> list[NormPolicy]:
    layers = [layer for _, layer in policy_layers(model)]
    if not layers:
        raise ValueError(f"{type(model).__name__} is not adapted: call tta.adapt(model, policy) first")
    return layers


def reset(model: nn.Module) -> None:
    """Return every policy layer (and a DUA wrapper) to its state right after attach, bit for bit."""
    _require_layers(model)
    for module in model.modules():
        if isinstance(module, (NormPolicy, AugmentedUpdate)):
            module.reset()


def detach(model: nn.Module, *, keep_adapted: bool = False) -> nn.Module:
    """Put the original BatchNorm layers back; return the model.

    By default this undoes :func:`adapt` exactly: same layer objects and Parameters, source running
    statistics. ``keep_adapted=True`` instead bakes the statistics each layer holds now into the
    restored layers' running statistics: a plain BatchNorm model that normalizes as the adapted one
    did at this moment, for deployment or export (a stateless policy has none: ValueError, and the
    model is left adapted). An :class:`AugmentedUpdate` wrapper is removed and its inner model returned.
    """
    layers = _require_layers(model)
    stateless = keep_adapted and sorted({layer.policy_name for layer in layers if layer.adapted_stats() is None})
    if stateless:
        raise ValueError(
            f"detach(keep_adapted=True): policy {', '.join(stateless)} keeps no statistics (it normalizes "
            "with each batch or the source), so there are none to keep; the model stays adapted"
        )
    if isinstance(model, AugmentedUpdate):
        model = model.model
    return replace_modules(
        model, lambda m: isinstance(m, NormPolicy), lambda _, layer: layer.restore_original(keep_adapted)
    )


@contextlib.contextmanager
def paused(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, layers normalize with their current state and update nothing.

    Stateless policies (``tbn``, ``alpha_bn``) still use the batch's statistics: that is their
    normalization, not an update. Flags are restored on exit, also after an exception.
    """
    layers = _require_layers(model)
    before = [layer.paused for layer in layers]
    for layer in layers:
        layer.paused = True
    try:
        yield model
    finally:
        for layer, was_paused in zip(layers, before):
            layer.paused = was_paused
