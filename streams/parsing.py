"""Corruption and severity lists as users write them: one parser for ``Stream`` and the CLI.

Corruptions: ``"all"`` (the 15 standard ones in standard order), ``"none"`` or None (the clean images),
one name, a comma list (``"fog, snow"``) or a list of names; each name at most once. Severities: an
integer in 1..5 or a list of them (:func:`parse_severities`), or a comma list of them as text
(:func:`parse_severity_list`); each at most once.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from tta_streams.corruptions import check_severity, is_int, list_corruptions

__all__ = ["CLEAN_NAME", "parse_corruptions", "parse_severities", "parse_severity_list", "split_list"]

CLEAN_NAME = "none"
"""The corruption name of the clean images (domain ``("none", 0)``)."""


def split_list(text: str) -> list[str]:
    """Split a comma list, dropping blanks: ``"a, b,"`` -> ``["a", "b"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _first_repeat(values: Iterable[object]) -> object | None:
    seen: set[object] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


def parse_corruptions(corruptions: str | Sequence[str] | None) -> tuple[str, ...]:
    """Corruption names in the order given; ``("none",)`` for the clean images.

    ``corruptions``: ``"all"``, ``"none"``, None, a name, a comma list or a sequence of names from
    :func:`tta_streams.corruptions.list_corruptions`. ``"none"`` stands alone. ValueError names the problem.
    """
    if corruptions is None:
        return (CLEAN_NAME,)
    names = split_list(corruptions) if isinstance(corruptions, str) else list(corruptions)
    standard, known = list_corruptions(standard_only=True), list_corruptions()
    if names == ["all"]:
        return tuple(standard)
    if names == [CLEAN_NAME]:
        return (CLEAN_NAME,)
    if not names:
        raise ValueError("no corruption given; pass 'all', 'none' (the clean images) or a list of names")
    for name in names:
        if name == CLEAN_NAME:
            raise ValueError("'none' (the clean test set) cannot be mixed with corruptions; run it alone")
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown corruption {name!r}{hint}; choose from: all, none, {', '.join(known)}")
    repeated = _first_repeat(names)
    if repeated is not None:
        raise ValueError(f"corruption {repeated!r} is listed twice")
    return tuple(names)


def parse_severities(severities: int | Sequence[int]) -> tuple[int, ...]:
    """Severities in the order given: an integer in 1..5 or a sequence of them (a string is refused;
    see :func:`parse_severity_list` for text)."""
    if is_int(severities):
        values = [severities]
    elif isinstance(severities, (str, bytes)) or not isinstance(severities, Iterable):
        raise ValueError(f"severities must be an integer in 1..5 or a list of them, got {severities!r}")
    else:
        values = list(severities)
    if not values:
        raise ValueError("no severity given; pass an integer in 1..5 or a list of them")
    checked = [check_severity(value) for value in values]
    repeated = _first_repeat(checked)
    if repeated is not None:
        raise ValueError(f"severity {repeated} is listed twice")
    return tuple(checked)


def parse_severity_list(text: str) -> tuple[int, ...]:
    """Severities from a comma list such as ``"1, 3,5"`` (see :func:`parse_severities`)."""
    values = []
    for part in split_list(text):
        try:
            values.append(int(part))
        except ValueError:
            raise ValueError(f"severity {part!r} is not an integer") from None
    return parse_severities(values)
