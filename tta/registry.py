"""One registry maps a policy name to its layer class; the library and the CLI share it."""

from __future__ import annotations

from typing import Callable, TypeVar

from tta.options import declared_options, validate_options
from tta.policies.base import NormPolicy

_POLICIES: dict[str, type[NormPolicy]] = {}

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
    """The registered policy names, in the order of the spec (M1-M7, M10, M12)."""
    return list(_POLICIES)


def get_policy(name: str) -> type[NormPolicy]:
    """The layer class of a policy, or a ValueError listing the known names."""
    if name not in _POLICIES:
        raise ValueError(f"unknown policy {name!r}; known policies: {', '.join(_POLICIES)}")
    return _POLICIES[name]


def policy_options(name: str) -> dict[str, object]:
    """A policy's user options and their defaults (spec M8b)."""
    return {key: option.default for key, option in declared_options(get_policy(name).__init__).items()}


def check_options(name: str, options: dict[str, object]) -> dict[str, object]:
    """Check option names, types and ranges (:mod:`tta.options`); return the values as plain numbers.

    Raises ValueError for an unknown option or a value out of range, TypeError for a wrong type.
    """
    return validate_options(name, get_policy(name).__init__, options)
