"""One registry maps a policy name to its layer class; the library and the CLI share it."""

from __future__ import annotations

import inspect
from typing import Callable, TypeVar

from tta.policies.base import NormPolicy

_POLICIES: dict[str, type[NormPolicy]] = {}
# Constructor arguments that adapt() supplies itself, not user options.
_INTERNAL_ARGS = {"self", "bn", "layer_index", "post_norm"}

P = TypeVar("P", bound=type[NormPolicy])


def register_policy(name: str) -> Callable[[P], P]:
    """Class decorator: make a policy layer available as ``tta.adapt(model, name)``."""

    def decorate(cls: P) -> P:
        if name in _POLICIES:
            raise ValueError(f"policy {name!r} is already registered")
        cls.policy_name = name
        _POLICIES[name] = cls
        return cls

    return decorate


def policies() -> list[str]:
    """The registered policy names, in the order of the spec (M1-M7)."""
    return list(_POLICIES)


def get_policy(name: str) -> type[NormPolicy]:
    """The layer class of a policy, or a ValueError listing the known names."""
    if name not in _POLICIES:
        raise ValueError(f"unknown policy {name!r}; known policies: {', '.join(_POLICIES)}")
    return _POLICIES[name]


def policy_options(name: str) -> dict[str, object]:
    """A policy's user options and their defaults (spec M8b)."""
    signature = inspect.signature(get_policy(name).__init__)
    return {
        key: parameter.default
        for key, parameter in signature.parameters.items()
        if key not in _INTERNAL_ARGS and parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }


def check_options(name: str, options: dict[str, object]) -> None:
    """Raise a ValueError naming any option the policy does not take, and the ones it does."""
    known = policy_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        accepted = ", ".join(f"{k}={v!r}" for k, v in known.items()) or "none"
        raise ValueError(f"policy {name!r} has no option {', '.join(map(repr, unknown))}; it takes: {accepted}")
