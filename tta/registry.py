"""Two registries, one mechanism: a policy name maps to its layer class (:doc:`/policies/index`), a method name
to its class (:doc:`/methods/index`). The library and the CLI share them."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from tta.options import closest, declared_options, validate_options

if TYPE_CHECKING:
    from tta.methods.base import Method
    from tta.policies.base import NormPolicy

T = TypeVar("T", bound=type[object])


class Registry(Generic[T]):
    """Names to classes, in registration order; ``kind`` ("policy", "method") names them in messages, and
    ``usage`` (a format string of the name) shows how a name is used.

    Registering sets ``<kind>_name`` on the class (``policy_name``, ``method_name``). An unknown name's
    error lists the known ones and points to the closest, or to ``other``, the registry that knows it.
    Names match exactly: a wrong case is refused, with the right one suggested.
    """

    def __init__(self, kind: str, plural: str, usage: str) -> None:
        self.kind, self.plural, self.usage = kind, plural, usage
        self.classes: dict[str, T] = {}
        self.other: Registry | None = None

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(cls: T) -> T:
            if name in self.classes:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            setattr(cls, f"{self.kind}_name", name)
            self.classes[name] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        return list(self.classes)

    def get(self, name: str) -> T:
        if name not in self.classes:
            known = f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(self.classes)}"
            raise ValueError(known + self.hint(name))
        return self.classes[name]

    def hint(self, name: str) -> str:
        """Where an unknown ``name`` belongs: the other registry's name it matches ignoring case, else the
        closest of this one's; empty if none is close."""
        other = self.other
        if other is not None:
            match = next((known for known in other.classes if known.lower() == name.lower()), None)
            if match is not None:
                return f"; {match!r} is a {other.kind}: {other.usage.format(repr(match))}"
        match = closest(name, self.classes)
        return f"; did you mean {match!r}?" if match else ""

    def options(self, name: str) -> dict[str, object]:
        return {key: option.default for key, option in declared_options(self.get(name).__init__).items()}

    def check_options(self, name: str, options: dict[str, object]) -> dict[str, object]:
        return validate_options(name, self.get(name).__init__, options, kind=self.kind)


_POLICIES: Registry[type[NormPolicy]] = Registry("policy", "policies", "tta.adapt(model, {})")
_METHODS: Registry[type[Method]] = Registry("method", "methods", "tta.attach_method(model, {})")
_POLICIES.other, _METHODS.other = _METHODS, _POLICIES

P = TypeVar("P", bound="type[NormPolicy]")
M = TypeVar("M", bound="type[Method]")


def register_policy(name: str) -> Callable[[P], P]:
    """Class decorator: make a policy layer available as ``tta.adapt(model, name)``."""
    register = _POLICIES.register(name)

    def decorate(cls: P) -> P:  # the class itself, with its own type (register returns it)
        register(cls)
        return cls

    return decorate


def list_policies() -> list[str]:
    """The registered policy names, in registration order (that of :doc:`/policies/index`)."""
    return _POLICIES.names()


def get_policy(name: str) -> type[NormPolicy]:
    """The layer class of a policy, or a ValueError listing the known names."""
    return _POLICIES.get(name)


def policy_options(name: str) -> dict[str, object]:
    """A policy's user options and their defaults (each policy's page lists them)."""
    return _POLICIES.options(name)


def check_policy_options(name: str, options: dict[str, object]) -> dict[str, object]:
    """Check a policy's option names, types and ranges (:mod:`tta.options`); return plain values.

    Raises ValueError for an unknown option or a value out of range, TypeError for a wrong type; an option
    the policy no longer takes gets the policy's own message (:meth:`NormPolicy.retired_option`).
    """
    layer_class = _POLICIES.get(name)
    for option, value in options.items():
        message = layer_class.retired_option(option, value)
        if message is not None:
            raise ValueError(message)
    return _POLICIES.check_options(name, options)


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: make a method available as ``tta.attach_method(model, name)``."""
    register = _METHODS.register(name)

    def decorate(cls: M) -> M:  # the class itself, with its own type (register returns it)
        register(cls)
        return cls

    return decorate


def list_methods() -> list[str]:
    """The registered method names: ``none`` first, then in registration order (that of :doc:`/methods/index`)."""
    return _METHODS.names()


def get_method(name: str) -> type[Method]:
    """The class of a method, or a ValueError listing the known names."""
    return _METHODS.get(name)


def method_options(name: str) -> dict[str, object]:
    """A method's user options and their defaults (each method's page lists them)."""
    return _METHODS.options(name)


def check_method_options(name: str, options: dict[str, object]) -> dict[str, object]:
    """As :func:`check_policy_options`, for a method."""
    return _METHODS.check_options(name, options)


class ListingPackage(types.ModuleType):
    """The class of ``tta.policies`` and ``tta.methods``, packages whose names were once listing functions:
    calling one says which function lists the registered names now (its module's ``LISTING``)."""

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise TypeError(
            f"{self.__name__} is the package that holds one module each; tta.{self.LISTING}() lists the "
            "registered names"
        )


_RENAMED = {"check_options": "check_policy_options", "policies": "list_policies", "methods": "list_methods"}


def __getattr__(name: str) -> object:
    if name in _RENAMED:
        raise AttributeError(f"tta.registry.{name} was renamed {_RENAMED[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
