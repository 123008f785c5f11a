"""Seeds derived from a stream's seed, so every domain gets its own reproducible randomness (spec S5).

``derive_seed(*parts)`` is the first 8 bytes of SHA-256 over the parts' text joined by a separator,
shifted to 63 bits: stable across processes, platforms and Python versions (unlike ``hash()``), and
distinct for distinct parts. The stream uses

- corruption of domain (c, s):        ``derive_seed("corrupt", seed, c, s)``
- label order of the k-th visit of (c, s) (k = 0 except for ``gradual``'s repeated severities):
                                      ``derive_seed("order", seed, c, s, k)``
- label order of a ``mixed`` stream:  ``derive_seed("order-mixed", seed)``
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["derive_seed", "generator"]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed determined by ``parts`` alone (see the module docstring)."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(*parts: object) -> np.random.Generator:
    """A fresh numpy generator seeded with ``derive_seed(*parts)``; never the global RNG."""
    return np.random.default_rng(derive_seed(*parts))
