"""Seeds derived from a stream's seed, so every domain gets its own reproducible randomness (see
:doc:`/reference/stream_algorithms`).

``derive_seed(*parts)`` is the first 8 bytes of SHA-256 over the parts' text joined by a separator,
shifted to 63 bits: stable across processes, platforms and Python versions (unlike ``hash()``), and
distinct for distinct parts. The stream uses

- corruption of domain (c, s):        ``derive_seed("corrupt", seed, c, s)``
- label order of the k-th visit of (c, s) (k = 0 except for ``gradual``'s repeated severities):
                                      ``derive_seed("order", seed, c, s, k)``
- label order of a ``mixed`` stream:  ``derive_seed("order-mixed", seed)``

Every public function that takes a seed checks it with :func:`check_seed`: an integer (Python or numpy)
in ``0 .. 2**64 - 1``. A float, bool or string is refused rather than truncated (``seed=1.5`` would
otherwise silently equal ``seed=1``), and the range keeps distinct seeds distinct in the corruption
engine, which keys its randomness by the seed's low 64 bits.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["SEED_LIMIT", "as_generator", "check_seed", "derive_seed", "generator"]

SEED_LIMIT = 1 << 64
"""Seeds lie in ``0 .. SEED_LIMIT - 1``."""


def derive_seed(*parts: object) -> int:
    """A 63-bit seed determined by ``parts`` alone (see the module docstring)."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(*parts: object) -> np.random.Generator:
    """A fresh numpy generator seeded with ``derive_seed(*parts)``; never the global RNG."""
    return np.random.default_rng(derive_seed(*parts))


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` as an int if it is an integer in ``0 .. 2**64 - 1`` (numpy integers accepted); else a
    TypeError (not an integer: float, bool, str, ...) or ValueError (out of range) naming ``name``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(
            f"{name} must be an integer (int or numpy integer), got {type(seed).__name__} {seed!r}; "
            "a float or string seed is not rounded, pass e.g. 0"
        )
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"{name} must lie in 0..2**64-1, got {seed}")
    return int(seed)


def as_generator(rng: np.random.Generator | int, name: str = "rng") -> np.random.Generator:
    """``rng`` itself if it is a numpy Generator, else a fresh one seeded with the integer ``rng``
    (checked by :func:`check_seed`); anything else is a TypeError naming ``name``."""
    if isinstance(rng, np.random.Generator):
        return rng
    try:
        return np.random.default_rng(check_seed(rng, name))
    except TypeError:
        raise TypeError(
            f"{name} must be a numpy.random.Generator or an integer seed, got {type(rng).__name__} {rng!r}"
        ) from None
