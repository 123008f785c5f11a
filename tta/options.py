"""Policy and method options: each is declared once, as an annotated keyword argument, and checked from that.

A policy's (or method's) constructor declares an option as ``alpha: Annotated[float, Range(0, 1)] = 0.1``.
Before anything is built, :func:`validate_options` checks every given value against its declared type (a
float option takes a finite real number, an int option an integer, never a bool or a string; a bool
option takes only ``True`` or ``False``) and range, and returns them as plain Python values. A type
declared ``float | None`` also takes ``None`` (the policy says what None means); a string option names
its accepted values, ``Annotated[str, Choice("a", "b")]``. The constructors then only check constraints
that tie several options together. Each option is described in its class docstring's ``Args:`` section,
which the documentation's option tables read (:doc:`/policies/index`, :doc:`/methods/index`).
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["Choice", "Range", "closest", "declared_options", "validate_options"]

# Constructor arguments that adapt() supplies itself, not user options.
_INTERNAL_ARGS = {"self", "bn", "layer_index", "post_norm"}


@dataclass(frozen=True)
class Range:
    """Closed interval by default; ``low_open`` / ``high_open`` exclude an end. ``None``: unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        left = "(-inf" if self.low is None else f"{'(' if self.low_open else '['}{self.low:g}"
        right = "inf)" if self.high is None else f"{self.high:g}{')' if self.high_open else ']'}"
        return f"{left}, {right}"


@dataclass(frozen=True)
class Choice:
    """The accepted values of a string option: ``Annotated[str, Choice("source", "running")]``."""

    values: tuple[str, ...]

    def __init__(self, *values: str) -> None:
        object.__setattr__(self, "values", values)

    def __str__(self) -> str:
        return ", ".join(map(repr, self.values))


@dataclass(frozen=True)
class _Option:
    kind: type  # int, float, bool or str
    default: object
    range: Range | None
    choice: Choice | None = None
    optional: bool = False  # declared ``kind | None``: None is accepted as is


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name`` ignoring case (``difflib``), or None: for a did-you-mean only."""
    by_lower = {k.lower(): k for k in known}
    match = difflib.get_close_matches(name.lower(), list(by_lower), n=1)
    return by_lower[match[0]] if match else None


def declared_options(constructor: Callable[..., object]) -> dict[str, _Option]:
    """The keyword-only options of a policy constructor, with their type, default and range."""
    hints = typing.get_type_hints(constructor, include_extras=True)
    options = {}
    for name, parameter in inspect.signature(constructor).parameters.items():
        if name in _INTERNAL_ARGS or parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        hint, extras = hints[name], []
        if typing.get_origin(hint) is typing.Annotated:
            hint, *extras = typing.get_args(hint)
        bounds = next((extra for extra in extras if isinstance(extra, Range)), None)
        choice = next((extra for extra in extras if isinstance(extra, Choice)), None)
        members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
        optional = len(members) == 2 and type(None) in members
        if optional:
            hint = next(member for member in members if member is not type(None))
        if hint not in (int, float, bool, str):
            raise TypeError(f"option {name!r} must be declared int, float, bool or str (or X | None), not {hint!r}")
        if (hint is str) != (choice is not None):
            raise TypeError(f"option {name!r}: a str option, and only a str option, declares its Choice of values")
        options[name] = _Option(hint, parameter.default, bounds, choice, optional)
    return options


def _checked(where: str, option: _Option, value: object) -> int | float | bool | str | None:
    or_none = " or None" if option.optional else ""
    if value is None and option.optional:
        return None
    if option.kind is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{where} must be a bool (True or False){or_none}, got {value!r} ({type(value).__name__})")
        return bool(value)
    if option.kind is str:
        if not isinstance(value, str):
            raise TypeError(f"{where} must be a string{or_none}, got {value!r} ({type(value).__name__})")
        if value not in typing.cast(Choice, option.choice).values:  # a str option has a Choice (declared_options)
            raise ValueError(f"{where} must be one of {option.choice}, got {value!r}")
        return str(value)
    if option.kind is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{where} must be an integer{or_none}, got {value!r} ({type(value).__name__})")
        value = int(value)
    else:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{where} must be a real number{or_none}, got {value!r} ({type(value).__name__})")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{where} must be finite, got {value!r}")
    if option.range is not None and not option.range.contains(value):
        raise ValueError(f"{where} must lie in {option.range}, got {value!r}")
    return value


def validate_options(
    name: str, constructor: Callable[..., object], options: dict[str, object], *, kind: str = "policy"
) -> dict[str, object]:
    """Check names, types and ranges of ``options``; return them as plain ints, floats, bools and strings.

    ``kind`` ("policy" or "method") names what ``name`` is in the messages. Raises ValueError for an
    unknown name (listing what the policy or method takes, and the closest, :func:`closest`) or a value
    out of range, and TypeError for a value of the wrong type.
    """
    declared = declared_options(constructor)
    unknown = sorted(set(options) - set(declared))
    if unknown:
        accepted = ", ".join(f"{k}={v.default!r}" for k, v in declared.items()) or "none"
        close = {option: match for option in unknown if (match := closest(option, declared))}
        hints = [f"{match!r}" + (f" for {option!r}" if len(unknown) > 1 else "") for option, match in close.items()]
        hint = f"; did you mean {', '.join(hints)}?" if hints else ""
        raise ValueError(f"{kind} {name!r} has no option {', '.join(map(repr, unknown))}; it takes: {accepted}{hint}")
    return {
        option: _checked(f"{kind} {name!r} option {option!r}", declared[option], value)
        for option, value in options.items()
    }
