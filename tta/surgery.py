"""Module-tree surgery: swap BatchNorm layers for policy layers and back, in place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeGuard

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# forward() implementations that only normalize (SyncBatchNorm's extra is cross-process statistics).
_PLAIN_FORWARDS = {_BatchNorm.forward, nn.SyncBatchNorm.forward}


def is_batchnorm(module: nn.Module) -> TypeGuard[_BatchNorm]:
    """BatchNorm1d/2d/3d, SyncBatchNorm and their subclasses (timm's BatchNormAct2d, ...)."""
    return isinstance(module, _BatchNorm)


def post_norm_of(bn: _BatchNorm) -> nn.Module | None:
    """What a BatchNorm subclass does after normalizing, to keep it when the layer is swapped
    (:doc:`/reference/notation`).

    Torch's own layers: nothing. timm's ``BatchNormAct2d`` family: its ``drop`` then ``act``. Any other
    subclass that overrides ``forward`` is refused: silently dropping its extra behaviour would break
    the model.
    """
    if type(bn).forward in _PLAIN_FORWARDS:
        return None
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
    if isinstance(drop, nn.Module) and isinstance(act, nn.Module):
        return nn.Sequential(drop, act)
    raise TypeError(
        f"{type(bn).__qualname__} overrides BatchNorm's forward with behaviour tta does not know; "
        "replacing it would drop that behaviour. Supported: torch's BatchNorm layers and subclasses "
        "that normalize then apply `drop` and `act` submodules (timm's BatchNormAct2d)."
    )


def check_replaceable(name: str, bn: _BatchNorm) -> None:
    """Refuse layers that have no source statistics to start from."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"BatchNorm layer {name or '<root>'} tracks no running statistics "
            "(track_running_stats=False), so there are no source statistics to adapt from"
        )
    if isinstance(bn.running_mean, nn.parameter.UninitializedBuffer):
        raise ValueError(f"BatchNorm layer {name or '<root>'} is lazy and uninitialized: run one batch first")


def replace_modules(
    root: nn.Module, match: Callable[[nn.Module], bool], build: Callable[[str, Any], nn.Module]
) -> nn.Module:
    """Replace every module that ``match``es with ``build(name, module)``, in place; return the root
    (``build`` takes the modules ``match`` accepts: its argument's type is what ``match`` checks).

    Every replacement is built before any is swapped in, so a ``build`` that raises leaves the tree as it
    was. A module reached through several parents (a shared layer) is built once and shared again. If the
    root itself matches, its replacement is returned.
    """
    if match(root):
        return build("", root)
    built: dict[int, nn.Module] = {}
    slots: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, attribute, module to replace)
    visited: set[int] = set()

    def visit(prefix: str, parent: nn.Module) -> None:
        visited.add(id(parent))
        # ``_modules`` rather than ``named_children()``: the latter yields a shared child only once.
        for child_name, child in list(parent._modules.items()):
            if child is None:
                continue
            name = f"{prefix}.{child_name}" if prefix else child_name
            if match(child):
                if id(child) not in built:
                    built[id(child)] = build(name, child)
                slots.append((parent, child_name, child))
            elif id(child) not in visited:
                visit(name, child)

    visit("", root)
    for parent, child_name, child in slots:
        setattr(parent, child_name, built[id(child)])
    return root


def last_linear(model: nn.Module) -> nn.Linear | None:
    """The model's last ``nn.Linear`` in module order, taken as its classifier (for the number of classes,
    or the features entering it); None if it has none."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def with_num_classes(policy: str, model: nn.Module, options: dict[str, object]) -> dict[str, object]:
    """``options`` with ``num_classes`` read from the model's last ``nn.Linear`` when not given (the policies
    that learn from the model's predicted classes); a clear error when there is no such layer."""
    if options.get("num_classes") is not None:
        return options
    classifier = last_linear(model)
    if classifier is None:
        raise ValueError(
            f"{policy} reads the number of classes from the model's last nn.Linear, and {type(model).__name__} "
            "has none; pass num_classes=K"
        )
    if classifier.out_features < 2:
        raise ValueError(f"{policy}: the last nn.Linear has {classifier.out_features} output; it needs K >= 2 classes")
    return {**options, "num_classes": classifier.out_features}


def remove_hooks(model: nn.Module, hook_type: type) -> None:
    """Remove every forward hook and forward pre-hook that is an instance of ``hook_type``, on every module
    of the tree (found by type, not by handle: a deep-copied model holds copies of the hooks, and a copied
    handle would point at the original model's hooks)."""
    for module in model.modules():
        for hooks, extras in (
            (module._forward_hooks, (module._forward_hooks_with_kwargs, module._forward_hooks_always_called)),
            (module._forward_pre_hooks, (module._forward_pre_hooks_with_kwargs,)),
        ):
            for key in [key for key, hook in hooks.items() if isinstance(hook, hook_type)]:
                del hooks[key]
                for extra in extras:
                    extra.pop(key, None)
