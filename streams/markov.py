"""UniTTA's Markov-chain streams over (domain, class) states: the ``unitta:<spec>`` setting.

UniTTA (Du et al., 2024, LeapLabTHU/UniTTA, ``core/data/unittasampler.py``) draws a test stream as a
Markov chain over the states (domain d, class c). The transition matrix is the Kronecker product of a
domain chain and a class chain; each chain stays in state ``i`` with probability ``cor_i`` and otherwise
moves to one of the other ``n - 1`` states uniformly. A correlation factor ``cor`` in (0, 1] (``1``: never
leave a domain until it is used up) and an imbalance factor ``IF >= 1`` (the head state IF times as
frequent as the tail, geometric in between, state 0 the head) are given per attribute.

Consistency (UniTTA's constraint): when ``(1 - cor) * IF <= 1 - 1/n`` and ``cor < 1``, the chain itself
makes the imbalance: state ``i`` stays with probability ``cor_i = 1 - (1 - cor) * IF ** (i / (n - 1))``
(the head ``cor``, the tail ``1 - IF (1 - cor) >= 1/n``), whose stationary distribution is the geometric
prior. Otherwise the correlation is ``cor`` for every state and the imbalance comes from quotas: each
state (or each domain, or each class, for the attribute that is inconsistent) is removed from the chain
once it has had its share. The whole algorithm, with the stopping rule, is in
:doc:`/reference/stream_algorithms`.

The setting's spelling: ``unitta:<code>`` with UniTTA's four letters (class correlation, class imbalance,
domain correlation, domain imbalance; e.g. ``unitta:nu1u``), or the factors as numbers,
``unitta:<class cor>:<class IF>:<domain cor>:<domain IF>``, a correlation ``i`` meaning the i.i.d. value
``1/n``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tta_streams._seeds import as_generator
from tta_streams.orderings import check_imbalance, format_number

__all__ = ["CODES", "UniTTA", "chain_factors", "parse_unitta", "unitta_indices"]

IID = "i"
"""A correlation factor of ``1/n`` (n the number of domains or classes): the i.i.d. chain."""

CODES: dict[str, dict[str, float | str]] = {
    "class correlation": {"i": IID, "n": 0.95, "1": 1.0},
    "class imbalance": {"1": 1.0, "u": 10.0},
    "domain correlation": {"i": IID, "n": 0.85, "1": 1.0},
    "domain imbalance": {"1": 1.0, "u": 5.0},
}
"""UniTTA's letters (``sh/run.sh``), in the order they are written: ``i`` i.i.d., ``n`` non-i.i.d., ``1``
one state until it is used up; ``1`` balanced, ``u`` unbalanced. The official script writes the i.i.d.
domain correlation as 0.067 for its 15 domains; ``i`` here is ``1/n`` for any number of domains."""


def _check_correlation(value: object, what: str) -> float | str:
    if value == IID:
        return IID
    try:
        factor = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in (0, 1] or 'i' (the i.i.d. value 1/n), got {value!r}") from None
    if isinstance(value, bool) or not (0 < factor <= 1):
        raise ValueError(f"{what} must be a number in (0, 1] or 'i' (the i.i.d. value 1/n), got {value!r}")
    return factor


@dataclass(frozen=True)
class UniTTA:
    """The factors of a UniTTA stream; ``str()`` is its canonical setting name (the letter code when every
    factor has a letter, else the numbers). A correlation is a float in (0, 1] or ``"i"`` (1/n)."""

    class_correlation: float | str
    class_imbalance: float
    domain_correlation: float | str
    domain_imbalance: float

    def __post_init__(self) -> None:
        for what in ("class", "domain"):
            _check_correlation(getattr(self, f"{what}_correlation"), f"the {what} correlation factor")
            check_imbalance(getattr(self, f"{what}_imbalance"), f"the {what} imbalance factor")
        if self.class_correlation == 1.0 and self.domain_correlation == 1.0:
            raise ValueError(
                "unitta: a class correlation of 1 and a domain correlation of 1 together are impossible: the "
                "chain could never leave a (domain, class) state for another domain and another class at once "
                "(UniTTA's sampler fails on it too); lower one of them"
            )

    def factors(self) -> tuple[float | str, float, float | str, float]:
        return (self.class_correlation, self.class_imbalance, self.domain_correlation, self.domain_imbalance)

    def __str__(self) -> str:
        letters = []
        for (_, table), value in zip(CODES.items(), self.factors()):
            letter = next((key for key, coded in table.items() if coded == value), None)
            if letter is None:
                break
            letters.append(letter)
        else:
            return "unitta:" + "".join(letters)
        return "unitta:" + ":".join(IID if v == IID else format_number(float(v)) for v in self.factors())


def parse_unitta(text: str) -> UniTTA:
    """``unitta:<code>`` (four letters, see :data:`CODES`) or ``unitta:<cc>:<ic>:<cd>:<id>``; ValueError
    names the problem."""
    name, _, spec = text.strip().partition(":")
    if name != "unitta" or not spec:
        raise ValueError(f"setting {text!r}: write unitta:<code> (e.g. unitta:nu1u) or unitta:<cc>:<ic>:<cd>:<id>")
    parts = spec.split(":")
    if len(parts) == 1:
        code = parts[0]
        if len(code) != 4:
            raise ValueError(
                f"setting {text!r}: a UniTTA code has four letters, class correlation (i, n, 1), class imbalance "
                "(1, u), domain correlation (i, n, 1), domain imbalance (1, u); e.g. unitta:nu1u"
            )
        values = []
        for letter, (what, table) in zip(code, CODES.items()):
            if letter not in table:
                raise ValueError(f"setting {text!r}: {letter!r} is no {what} letter; choose from {', '.join(table)}")
            values.append(table[letter])
        return UniTTA(values[0], float(values[1]), values[2], float(values[3]))
    if len(parts) != 4:
        raise ValueError(
            f"setting {text!r}: give four factors, unitta:<class cor>:<class IF>:<domain cor>:<domain IF> "
            "(e.g. unitta:0.95:10:0.85:5), or a four-letter code"
        )
    cc, ic, cd, id_ = (part.strip() for part in parts)
    return UniTTA(
        _check_correlation(cc, f"setting {text!r}: the class correlation factor"),
        check_imbalance(ic, f"setting {text!r}: the class imbalance factor"),
        _check_correlation(cd, f"setting {text!r}: the domain correlation factor"),
        check_imbalance(id_, f"setting {text!r}: the domain imbalance factor"),
    )


@dataclass(frozen=True)
class ChainFactors:
    """One attribute's chain: ``stay[i]`` the probability of staying in state i, ``ratios`` the geometric
    prior (sums to 1), ``consistent`` whether the chain makes the prior itself (else quotas do), ``sticky``
    whether the correlation is 1 (leave a state only when it is used up, for the next one; never for a
    single state, which has no next one)."""

    stay: np.ndarray
    ratios: np.ndarray
    consistent: bool
    sticky: bool


def chain_factors(correlation: float | str, imbalance: float, n: int, what: str = "state") -> ChainFactors:
    """UniTTA's per-state correlations and prior for an attribute with ``n`` states (see the module)."""
    cor = 1.0 / n if correlation == IID else float(correlation)
    if n == 1:
        if imbalance != 1:
            raise ValueError(
                f"unitta: a {what} imbalance factor of {format_number(imbalance)} needs at least two {what}s; the "
                f"stream has one (use a {what} imbalance of 1, or more {what}s)"
            )
        return ChainFactors(np.ones(1), np.ones(1), False, False)
    ratios = np.power(1.0 / imbalance ** (1.0 / (n - 1)), np.arange(n))
    ratios = ratios / ratios.sum()
    consistent = (1 - cor) * imbalance <= 1 - 1 / n and cor < 1
    if consistent:
        tail = 1 - imbalance * (1 - cor)
        stay = 1 - np.power(1.0 / imbalance ** (1.0 / (n - 1)), np.arange(n - 1, -1, -1)) * (1 - tail)
    else:
        stay = np.full(n, cor)
    return ChainFactors(stay, ratios, consistent, cor == 1.0)


def _draw_next(stay: np.ndarray, i: int, rng: np.random.Generator) -> int:
    """One step of an attribute's chain from state ``i``: stay, or another state uniformly."""
    n = len(stay)
    if n == 1 or rng.random() < stay[i]:
        return i
    return (i + 1 + int(rng.integers(n - 1))) % n


def _transition_row(stay: np.ndarray, i: int) -> np.ndarray:
    n = len(stay)
    if n == 1:
        return np.ones(1)
    row = np.full(n, (1 - stay[i]) / (n - 1))
    row[i] = stay[i]
    return row


def unitta_indices(
    domains: np.ndarray,
    labels: np.ndarray,
    spec: UniTTA | str,
    rng: np.random.Generator | int,
    *,
    max_state_samples: int | None = None,
    max_tries: int = 32,
) -> np.ndarray:
    """The UniTTA stream over a pool of samples: indices into ``labels`` (repeats possible, see below).

    ``domains`` and ``labels``: per sample, its domain id (0 = the head domain) and its label (classes
    ranked by ascending id, the smallest the head). Every (domain, class) state needs at least one sample.
    The chain starts in (0, 0); at each step it takes the next sample of its state's shuffled pool (round
    robin, as UniTTA does: a state visited more often than it has samples repeats them) and moves on
    (:doc:`/reference/stream_algorithms`). ``max_state_samples`` (default: the smallest state's pool, so
    that no sample repeats under consistent factors or per-state quotas) is the head state's quota and the
    stopping count.
    """
    rng = as_generator(rng)
    spec = parse_unitta(spec) if isinstance(spec, str) else spec
    domains, labels = np.asarray(domains), np.asarray(labels)
    if domains.shape != labels.shape or domains.ndim != 1:
        raise ValueError(f"domains and labels must be 1-D arrays of one length, got {domains.shape} and {labels.shape}")
    domain_ids, d_codes = np.unique(domains, return_inverse=True)
    classes, c_codes = np.unique(labels, return_inverse=True)
    n_d, n_c = len(domain_ids), len(classes)
    if n_d == 0:
        raise ValueError("a UniTTA stream of an empty pool")
    state_of = d_codes * n_c + c_codes
    pools = [rng.permutation(np.flatnonzero(state_of == s)) for s in range(n_d * n_c)]
    empty = next((s for s, pool in enumerate(pools) if len(pool) == 0), None)
    if empty is not None:
        raise ValueError(
            f"unitta: domain {domain_ids[empty // n_c]} has no image of class {classes[empty % n_c]}; the chain "
            "needs every class in every domain (use more examples)"
        )
    chains = {
        "domain": chain_factors(spec.domain_correlation, spec.domain_imbalance, n_d, "domain"),
        "class": chain_factors(spec.class_correlation, spec.class_imbalance, n_c, "class"),
    }
    dom, cls = chains["domain"], chains["class"]
    m = int(max_state_samples) if max_state_samples is not None else min(len(pool) for pool in pools)
    if m < 1:
        raise ValueError(f"max_state_samples must be >= 1, got {max_state_samples}")
    prior = np.outer(dom.ratios, cls.ratios)
    quota = np.round(m / prior[0, 0] * prior)
    counts = np.zeros((n_d, n_c), dtype=np.int64)
    valid = np.ones((n_d, n_c), dtype=bool)
    indices: list[int] = []
    d, c = 0, 0
    while True:
        indices.append(int(pools[d * n_c + c][counts[d, c] % len(pools[d * n_c + c])]))
        counts[d, c] += 1
        if dom.consistent and cls.consistent:
            if counts[d, c] >= m:
                break
        else:
            if not dom.consistent and not cls.consistent:
                if counts[d, c] >= quota[d, c]:
                    valid[d, c] = False
            elif not dom.consistent:
                if counts[d].sum() >= quota[d].sum():
                    valid[d] = False
            elif counts[:, c].sum() >= quota[:, c].sum():
                valid[:, c] = False
            if not valid.any():
                break
        d, c = _next_state(d, c, dom, cls, valid, rng, max_tries)
    return np.asarray(indices, dtype=np.int64)


def _next_state(
    d: int, c: int, dom: ChainFactors, cls: ChainFactors, valid: np.ndarray, rng: np.random.Generator, max_tries: int
) -> tuple[int, int]:
    """The chain's next state among the valid ones: the transition row restricted to them (a few
    rejection draws, then the exact restricted distribution); when it gives them no mass, a valid state
    drawn uniformly, in the next domain (class) if that attribute never leaves a state."""
    for _ in range(max_tries):
        nd, nc = _draw_next(dom.stay, d, rng), _draw_next(cls.stay, c, rng)
        if valid[nd, nc]:
            return nd, nc
    weights = np.outer(_transition_row(dom.stay, d), _transition_row(cls.stay, c)) * valid
    total = weights.sum()
    if total > 0:
        flat = int(rng.choice(weights.size, p=(weights / total).ravel()))
        return divmod(flat, valid.shape[1])
    allowed = valid.copy()
    if dom.sticky:
        allowed[np.arange(valid.shape[0]) != d + 1] = False
    if cls.sticky:
        allowed[:, np.arange(valid.shape[1]) != c + 1] = False
    candidates = np.flatnonzero(allowed)
    if len(candidates) == 0:  # cannot happen with the checks of UniTTA(); kept as a clear failure
        raise RuntimeError(f"unitta: no state to move to from ({d}, {c})")
    return divmod(int(candidates[rng.integers(len(candidates))]), valid.shape[1])
