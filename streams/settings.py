"""Domain settings: which (corruption, severity) domains a stream visits, in which episodes.

A plan is a list of :class:`Episode`; the policy is reset before each episode. In a sequential
episode the domains come one after another (each with its own label order); in a mixed episode the
ordering is applied to the union of its domains; in a ``unitta:<spec>`` episode UniTTA's Markov chain
draws both the domains and the classes from the union (:mod:`tta_streams.markov`). See
:doc:`/reference/stream_algorithms`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tta_streams.markov import UniTTA, parse_unitta

__all__ = ["GRADUAL_SEVERITIES", "SETTINGS", "Domain", "Episode", "parse_setting", "plan"]

Domain = tuple[str, int]
"""(corruption, severity); ``("none", 0)`` is the clean set."""

SETTINGS = ("single", "continual", "mixed", "gradual", "unitta:<code>")
"""The accepted setting names; ``unitta:`` takes UniTTA's four-letter code (e.g. ``unitta:nu1u``) or its four
factors (``unitta:0.95:10:0.85:5``), see :func:`tta_streams.markov.parse_unitta`."""
_PLAIN = SETTINGS[:4]
GRADUAL_SEVERITIES = (1, 2, 3, 4, 5, 4, 3, 2, 1)


@dataclass(frozen=True)
class Episode:
    """Domains visited without a reset; ``mixed``: shuffled together instead of one after another."""

    domains: tuple[Domain, ...]
    mixed: bool = False
    markov: UniTTA | None = None
    """UniTTA's factors when a Markov chain over (domain, class) draws the episode from the union."""


def parse_setting(text: str) -> str:
    """The canonical name of a setting (``unitta:0.95:10:0.85:5`` -> ``unitta:nunu``); ValueError names the
    problem."""
    if not isinstance(text, str):
        raise ValueError(f"a setting is a name such as 'single' or 'unitta:nu1u', got {text!r}")
    name = text.strip()
    if name in _PLAIN:
        return name
    if name.startswith("unitta"):
        return str(parse_unitta(name))
    raise ValueError(f"unknown setting {text!r}; choose from: {', '.join(SETTINGS)} (e.g. unitta:nu1u)")


def plan(setting: str, corruptions: Sequence[str], severities: Sequence[int]) -> list[Episode]:
    """The episodes of ``setting``, corruption-major: for each corruption, each severity.

    - ``single``: one episode per domain.
    - ``continual``: one episode, the domains in the given order (the standard order for "all").
    - ``mixed``: one episode over the union of the domains.
    - ``gradual``: one episode, severities 1,2,3,4,5,4,3,2,1 for each corruption (``severities`` unused).
    - ``unitta:<spec>``: one episode over the union, drawn by UniTTA's Markov chain (the first domain is
      the head of the domain imbalance).
    """
    setting = parse_setting(setting)
    if not corruptions:
        raise ValueError("a stream needs at least one corruption")
    schedule = GRADUAL_SEVERITIES if setting == "gradual" else tuple(severities)
    domains = tuple((c, s) for c in corruptions for s in schedule)
    if setting == "single":
        return [Episode((domain,)) for domain in domains]
    if setting.startswith("unitta"):
        return [Episode(domains, mixed=True, markov=parse_unitta(setting))]
    return [Episode(domains, mixed=setting == "mixed")]
