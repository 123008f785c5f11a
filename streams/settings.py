"""Domain settings: which (corruption, severity) domains a stream visits, in which episodes.

A plan is a list of :class:`Episode`; the policy is reset before each episode. In a sequential
episode the domains come one after another (each with its own label order); in a mixed episode the
ordering is applied to the union of its domains. See :doc:`/reference/stream_algorithms`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["GRADUAL_SEVERITIES", "SETTINGS", "Domain", "Episode", "plan"]

Domain = tuple[str, int]
"""(corruption, severity); ``("none", 0)`` is the clean set."""

SETTINGS = ("single", "continual", "mixed", "gradual")
GRADUAL_SEVERITIES = (1, 2, 3, 4, 5, 4, 3, 2, 1)


@dataclass(frozen=True)
class Episode:
    """Domains visited without a reset; ``mixed``: shuffled together instead of one after another."""

    domains: tuple[Domain, ...]
    mixed: bool = False


def plan(setting: str, corruptions: Sequence[str], severities: Sequence[int]) -> list[Episode]:
    """The episodes of ``setting``, corruption-major: for each corruption, each severity.

    - ``single``: one episode per domain.
    - ``continual``: one episode, the domains in the given order (the standard order for "all").
    - ``mixed``: one episode over the union of the domains.
    - ``gradual``: one episode, severities 1,2,3,4,5,4,3,2,1 for each corruption (``severities`` unused).
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose from: {', '.join(SETTINGS)}")
    if not corruptions:
        raise ValueError("a stream needs at least one corruption")
    schedule = GRADUAL_SEVERITIES if setting == "gradual" else tuple(severities)
    domains = tuple((c, s) for c in corruptions for s in schedule)
    if setting == "single":
        return [Episode((domain,)) for domain in domains]
    return [Episode(domains, mixed=setting == "mixed")]
