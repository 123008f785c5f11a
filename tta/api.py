"""The user-facing calls: adapt, attach_method, reset, detach, paused, policy_layers.

``reset``, ``detach`` and ``paused`` act on every module of the tree that holds adaptation state: the
policy layers and a method (a learner), wherever they sit. See :doc:`/concepts` for the lifecycle.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tta.methods.base import Method, holder_of
from tta.policies.base import ModelHook, NormPolicy, pausing
from tta.registry import check_method_options, check_policy_options, get_method, get_policy
from tta.surgery import check_replaceable, is_batchnorm, post_norm_of, remove_hooks, replace_modules
from tta.window import SlidingWindow


def adapt(model: nn.Module, policy: str, **options: object) -> nn.Module:
    """Replace every BatchNorm layer of ``model`` in place with ``policy``'s layer; return the model.

    Options are the policy's keyword arguments (:func:`tta.policy_options`; each policy's page lists them),
    checked for name, type and range before anything changes. If ``model`` is itself a BatchNorm layer,
    the returned module is its replacement; otherwise it is ``model`` itself. Atomic: if building any layer
    fails (an allocation error), the model is left as it was. The state is created as ordinary tensors
    even inside ``torch.inference_mode()``, so the model adapts outside it too. A policy that learns from the model's
    predictions (``balanced``, ``rebalance``) registers a forward hook on it, which :func:`detach` removes.

    Args:
        model: any module with BatchNorm1d/2d/3d or SyncBatchNorm layers (timm's ``BatchNormAct2d``
            included), or such a layer itself.
        policy: a registered policy name (:func:`tta.list_policies`), see :doc:`/policies/index`.
        **options: the policy's options.

    Returns:
        ``model``, adapted in place (for a bare BatchNorm layer, its replacement).

    Raises:
        ValueError: an unknown policy or option, an option out of its range, a model with no BatchNorm
            layer, or a model already adapted (:func:`detach` it first).

    Example:
        >>> import torch, tta
        >>> model = tta.adapt(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8)), "rbn")
        >>> [name for name, _ in tta.policy_layers(model)]
        ['1']
    """
    layer_class = get_policy(policy)
    options = check_policy_options(policy, options)
    if policy_layers(model):
        raise ValueError("model is already adapted; call tta.detach(model) before adapting it again")
    batchnorms = [(name, m) for name, m in model.named_modules() if is_batchnorm(m)]
    if not batchnorms:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer (BatchNorm1d/2d/3d or SyncBatchNorm) to adapt")
    for name, bn in batchnorms:
        check_replaceable(name, bn)
        post_norm_of(bn)  # refuse unknown subclasses before anything is swapped
    layer_class.check_model(model, **options)
    options = layer_class.model_options(model, options)
    index = itertools.count()

    def build(name: str, bn: _BatchNorm) -> NormPolicy:
        return layer_class(bn, layer_index=next(index), post_norm=post_norm_of(bn), **options)

    with torch.inference_mode(False):
        adapted = replace_modules(model, is_batchnorm, build)  # every layer built before any is swapped
    try:
        layer_class.register_model_hooks(adapted, **options)
    except BaseException:
        remove_hooks(adapted, ModelHook)
        replace_modules(adapted, lambda m: isinstance(m, NormPolicy), lambda _, layer: layer.restore_original())
        raise
    return adapted


def attach_method(model: nn.Module, method: str, **options: object) -> Method:
    """Wrap a model adapted with :func:`adapt` in ``method``; return the learner.

    Options are the method's keyword arguments (:func:`tta.method_options`), checked for name, type and
    range before anything changes. Call the learner instead of the model: ``learner(x)`` adapts and
    predicts. :func:`reset`, :func:`paused` and :func:`detach` take the learner (or any model holding it).
    A model takes one method at a time: a learner, a model holding one, or a model whose policy layers a
    learner holds is refused until :func:`detach` releases them.

    Args:
        model: a model adapted with :func:`adapt`.
        method: a registered method name (:func:`tta.list_methods`), see :doc:`/methods/index`.
        **options: the method's options.

    Returns:
        The learner, a :class:`tta.Method` module holding ``model``.

    Raises:
        ValueError: an unknown method or option, an option out of its range, a model with no policy
            layer, or a model that already takes part in a learner.

    Example:
        >>> import torch, tta
        >>> model = tta.adapt(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8)), "tbn")
        >>> learner = tta.attach_method(model, "tent", lr=1e-3)
        >>> learner(torch.randn(16, 4)).shape
        torch.Size([16, 8])
    """
    method_class = get_method(method)
    options = check_method_options(method, options)
    with torch.inference_mode(False):
        return method_class(model, **options)


def policy_layers(model: nn.Module) -> list[tuple[str, NormPolicy]]:
    """The policy layers of an adapted model, with their qualified names, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, NormPolicy)]


def _require_layers(model: nn.Module) -> list[NormPolicy]:
    layers = [layer for _, layer in policy_layers(model)]
    if not layers:
        raise ValueError(f"{type(model).__name__} is not adapted: call tta.adapt(model, policy) first")
    return layers


def reset(model: nn.Module) -> None:
    """Return every policy layer and a method to their state right after attach, bit for bit.

    For a learner (:func:`attach_method`) that includes the trained parameters, the optimizer state, a
    memory and the counters; a :class:`tta.SlidingWindow` is emptied. Call it at a known change of domain, or
    before each stream of an experiment.

    Raises:
        ValueError: ``model`` is not adapted.
    """
    layers = _require_layers(model)
    for window in (m for m in model.modules() if isinstance(m, SlidingWindow)):
        window.clear()
    methods = [m for m in model.modules() if isinstance(m, Method)]
    for method in methods:
        method.reset()  # its policy layers included
    covered = {id(m) for method in methods for m in method.modules()}
    for layer in layers:
        if id(layer) not in covered:
            layer.reset()


def detach(model: nn.Module, *, keep_adapted: bool = False) -> nn.Module:
    """Put the original BatchNorm layers back; return the model.

    By default this undoes :func:`adapt` exactly: same layer objects and Parameters, source running
    statistics. ``keep_adapted=True`` instead bakes the statistics each layer holds now into the
    restored layers' running statistics: a plain BatchNorm model that normalizes as the adapted one
    did at this moment, for deployment or export (a stateless policy has none: ValueError, and the
    model is left adapted).

    A method (learner) inside ``model`` is removed first, wherever it sits, and undoes what it changed
    (:meth:`Method.release`): Tent restores the affine parameters' values at attach (with
    ``keep_adapted``, keeps the trained ones) and every parameter's ``requires_grad``. A model whose
    layers a learner outside it holds is refused: detach that learner.

    Args:
        model: an adapted model, a learner, or a model holding either.
        keep_adapted: bake what was learned: the statistics the layers hold now into the restored
            BatchNorms' running statistics and, for a learner, its trained parameters.

    Returns:
        The original model: for a learner, the model it wrapped.

    Raises:
        ValueError: ``model`` is not adapted, a learner outside ``model`` holds its layers, or
            ``keep_adapted`` with a stateless policy (nothing changes in either case).

    See :doc:`/deployment`.
    """
    layers = _require_layers(model)
    inside = {id(m) for m in model.modules() if isinstance(m, Method)}
    holders = sorted({h.method_name for layer in layers if (h := holder_of(layer)) is not None and id(h) not in inside})
    if holders:
        raise ValueError(
            f"the model's policy layers are held by a {', '.join(holders)} learner wrapping it; detach the learner "
            "(tta.detach(learner)): it gives back the model it wrapped, with its BatchNorm layers"
        )
    stateless = keep_adapted and sorted({layer.policy_name for layer in layers if layer.adapted_stats() is None})
    if stateless:
        raise ValueError(
            f"detach(keep_adapted=True): policy {', '.join(stateless)} keeps no statistics (it normalizes "
            "with each batch or the source), so there are none to keep; the model stays adapted"
        )
    model = replace_modules(model, lambda m: isinstance(m, Method), lambda _, method: method.release(keep_adapted))
    remove_hooks(model, ModelHook)
    return replace_modules(
        model, lambda m: isinstance(m, NormPolicy), lambda _, layer: layer.restore_original(keep_adapted)
    )


@contextlib.contextmanager
def paused(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, layers normalize with their current state and update nothing; a method takes no step.

    Stateless policies (``tbn``, ``alpha_bn``) still use the batch's statistics: that is their
    normalization, not an update. Flags are restored on exit, also after an exception.

    Example:
        >>> import torch, tta
        >>> model = tta.adapt(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8)), "rbn")
        >>> with tta.paused(model):
        ...     probe = model(torch.randn(16, 4))  # the current state, unchanged
    """
    _require_layers(model)
    with pausing(m for m in model.modules() if isinstance(m, (NormPolicy, Method, SlidingWindow))):
        yield model
