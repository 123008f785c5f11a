"""Evaluate methods over normalization policies on test streams: the library calls behind ``tta-bench run``.

A grid run (:class:`tta_bench.grid.Run`) is one stream (setting, order, seed); it is evaluated in
independent units (:class:`Unit`): in ``single`` one domain episode for every (method, policy) in
lockstep, otherwise the whole stream for one (method, policy), or a policy alone with LAME over it.
Each learner is its own (:func:`learner_copy`: a copy of the model adapted with the policy, the method
attached), reset (``tta.reset``) before its episode, except that a policy alone is scored from
the forward of an output-level method over it (LAME) in the same unit (:func:`shared_forwards`). Errors
are counted per domain from ``batch.domain``, so a unit's rows are known when it ends. A killed run
loses at most the units in progress, which are run again; units run in any order or process give the
same rows (``tta_bench.executors``). The loop runs under ``torch.no_grad``; a gradient method (Tent)
takes its gradients inside its own forward, whatever the caller's mode.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

import tta
import tta_streams
from tta_bench.grid import CLEAN, NO_METHOD, GridConfig, RowKey, Run, domains

log = logging.getLogger(__name__)

Domain = tuple[str, int]
Pair = tuple[str, str]
"""(method, policy): one learner of the grid."""


@dataclasses.dataclass
class Tally:
    """Images seen and misclassified in one domain (an output row with a NaN or an infinity is wrong)."""

    n: int = 0
    errors: int = 0

    @property
    def error(self) -> float:
        """Error in percent (NaN before any image)."""
        return 100.0 * self.errors / self.n if self.n else float("nan")


def adapted_copy(
    model: nn.Module, policy: str, options: Mapping[str, Any] | None = None, *, seed: int = 0
) -> nn.Module:
    """A deep copy of ``model`` adapted with ``policy`` in eval mode; ``model`` itself is untouched.

    A policy that takes a ``seed`` option (``unmix_tns``) gets the run's ``seed`` unless ``options`` set
    one, so repeated seeds also vary its random initialization.
    """
    options = dict(options or {})
    if "seed" in tta.policy_options(policy) and "seed" not in options:
        options["seed"] = seed
    adapted = tta.adapt(copy.deepcopy(model), policy, **options)
    return adapted.eval()


def learner_copy(
    model: nn.Module,
    method: str,
    policy: str,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    seed: int = 0,
) -> nn.Module:
    """``method`` attached to :func:`adapted_copy` of ``model`` with ``policy``; ``options`` by name (the
    grid's one namespace of policy and method options). Method ``none`` gives the adapted model itself:
    the policy alone, as before methods existed. A method taking a ``seed`` gets the run's, as policies do."""
    options = options or {}
    adapted = adapted_copy(model, policy, options.get(policy), seed=seed)
    if method == NO_METHOD:
        return adapted
    method_options = dict(options.get(method, {}))
    if "seed" in tta.method_options(method) and "seed" not in method_options:
        method_options["seed"] = seed
    return tta.attach_method(adapted, method, **method_options)


def shared_forwards(pairs: Iterable[Pair]) -> dict[Pair, Pair]:
    """``{(method, policy): (none, policy)}`` for each policy alone whose prediction an output-level method
    over the same policy (LAME, :attr:`tta.methods.base.Method.output_level`) gives from its own forward:
    that method changes nothing in the adapted model, so one forward scores both, exactly as two learners
    would, at the cost of one."""
    pairs = list(pairs)
    shared: dict[Pair, Pair] = {}
    for method, policy in pairs:
        alone = (NO_METHOD, policy)
        if method == NO_METHOD or alone not in pairs or alone in shared.values():
            continue
        if tta.get_method(method).output_level:
            shared[(method, policy)] = alone
    return shared


def forward_groups(pairs: Sequence[Pair]) -> list[tuple[Pair, ...]]:
    """``pairs`` as their forwards run: a policy alone beside the output-level method whose forward gives
    its prediction (:func:`shared_forwards`), every other pair on its own; in the order of ``pairs``."""
    method_over = {alone: pair for pair, alone in shared_forwards(pairs).items()}
    return [(p, method_over[p]) if p in method_over else (p,) for p in pairs if p not in method_over.values()]


def domain_of(item: Any) -> Domain:
    """Normalize one ``batch.domain`` entry to ``(corruption, severity)``; clean images are ``("none", 0)``."""
    corruption, severity = item
    corruption = str(corruption)
    return (CLEAN, 0) if corruption == CLEAN else (corruption, int(severity))


def evaluate_batches(
    models: Mapping[Any, nn.Module],
    batches: Iterable[Any],
    *,
    device: torch.device | str = "cpu",
    on_batch: Callable[[dict[Any, dict[Domain, Tally]]], None] | None = None,
    policy_alone: Mapping[Any, Any] | None = None,
) -> dict[Any, dict[Domain, Tally]]:
    """Feed every batch to every model (each adapting as it goes); count errors per model and domain.

    ``batches`` yields objects with ``x`` (float images in [0, 1]), ``y`` (labels) and ``domain`` (one
    (corruption, severity) per image), i.e. :class:`tta_streams.Batch`. ``on_batch`` is called with the tallies
    so far after each batch (progress display). ``policy_alone`` maps the name of an output-level method's
    learner (LAME) to the name under which its adapted model's own prediction, from the same forward, is
    counted too (:func:`shared_forwards`).
    """
    device = torch.device(device)
    policy_alone = dict(policy_alone or {})
    tallies: dict[Any, dict[Domain, Tally]] = {name: {} for name in [*models, *policy_alone.values()]}
    # policy_alone names output-level learners (Methods), which hold the adapted model
    model_outputs = {name: _LastOutput(cast(tta.Method, models[name]).model) for name in policy_alone}
    try:
        with torch.no_grad():  # a method's own forward enables the gradients it needs
            for batch in batches:
                x = batch.x.to(device, non_blocking=True)
                y = batch.y.to(device, non_blocking=True)
                groups = _group_indices([domain_of(item) for item in batch.domain])
                for name, model in models.items():
                    scored = [(name, model(x))]
                    if name in policy_alone:
                        scored.append((policy_alone[name], model_outputs[name].output))
                    for scored_name, output in scored:
                        wrong = ((output.argmax(dim=1) != y) | ~output.isfinite().all(dim=1)).cpu()
                        for domain, index in groups.items():
                            tally = tallies[scored_name].setdefault(domain, Tally())
                            tally.n += len(index)
                            tally.errors += int(wrong[index].sum())
                if on_batch is not None:
                    on_batch(tallies)
    finally:
        for output in model_outputs.values():
            output.handle.remove()
    return tallies


class _LastOutput:
    """A forward hook that keeps the last output of a learner's adapted model: for an output-level method
    (:attr:`tta.Method.output_level`), the policy alone's prediction from the method's own forward."""

    def __init__(self, model: nn.Module) -> None:
        self.output: Any = None
        self.handle = model.register_forward_hook(self)

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        self.output = output


def evaluate_stream(
    models: Mapping[str, nn.Module],
    stream: Any,
    *,
    device: torch.device | str = "cpu",
) -> dict[str, dict[Domain, Tally]]:
    """Evaluate adapted models over a whole :class:`tta_streams.Stream`, resetting them before each episode;
    errors per policy and domain. The notebook's one-call version of a grid run."""
    totals: dict[str, dict[Domain, Tally]] = {name: {} for name in models}
    for _, batches in stream.episodes():
        for adapted in models.values():
            tta.reset(adapted)
        for name, per_domain in evaluate_batches(models, batches, device=device).items():
            for domain, tally in per_domain.items():
                total = totals[name].setdefault(domain, Tally())
                total.n += tally.n
                total.errors += tally.errors
    return totals


def _group_indices(batch_domains: Sequence[Domain]) -> dict[Domain, torch.Tensor]:
    groups: dict[Domain, list[int]] = {}
    for i, domain in enumerate(batch_domains):
        groups.setdefault(domain, []).append(i)
    return {domain: torch.tensor(index, dtype=torch.long) for domain, index in groups.items()}


def load_source(config: GridConfig, *, data_dir: str | os.PathLike[str] | None = None) -> Any:
    """The stream source of ``config.dataset``."""
    return streams_source(config.dataset, data_dir=data_dir)


def streams_source(dataset: str, *, data_dir: str | os.PathLike[str] | None = None) -> Any:
    """The source of a catalogue dataset (:func:`tta_streams.get_dataset`): clean images corrupted on the fly
    (``fmnist-c``), or the precomputed sets under ``data_dir`` (read, never corrupted again)."""
    return tta_streams.get_dataset(dataset).source(data_dir)


def build_stream(
    config: GridConfig,
    run: Run,
    source: Any,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """The :class:`tta_streams.Stream` of one grid run."""
    corruptions = None if config.corruptions == (CLEAN,) else list(config.corruptions)
    return tta_streams.Stream(
        source,
        corruptions=corruptions,
        severities=list(config.severities),
        order=run.order,
        setting=run.setting,
        batch_size=config.batch_size,
        n_examples=config.n_examples,
        seed=run.seed,
        table=config.table,
        cache_dir=cache_dir,
    )


def make_row(config: GridConfig, run: Run, pair: Pair, domain: Domain, tally: Tally) -> dict[str, Any]:
    """One result row (the keys ``tta_bench.results`` requires, plus context)."""
    method, policy = pair
    corruption, severity = domain
    return {
        "method": method,
        "policy": policy,
        "setting": run.setting,
        "order": run.order,
        "seed": run.seed,
        "corruption": corruption,
        "severity": severity,
        "n": tally.n,
        "errors": tally.errors,
        "error": round(tally.error, 4),
        "dataset": config.dataset,
        "model": config.model,
        "batch_size": config.batch_size,
        "options": config.options.get(policy, {}),
        "method_options": config.options.get(method, {}),
        **({"images": config.images} if config.images is not None else {}),
        **({"window": config.window} if config.window is not None else {}),
    }


@dataclasses.dataclass(frozen=True)
class Unit:
    """One independent piece of a grid, the work one worker does: in ``single`` one domain
    episode of a run for all its pending (method, policy) pairs in lockstep (they share the stream's
    batches), otherwise a whole stream for one pair (its learner carries over the domains), or for a
    policy alone and an output-level method over it, which share their forwards (:func:`forward_groups`)."""

    run: Run
    pairs: tuple[Pair, ...]
    domain: Domain | None = None
    """The episode's domain in ``single``; None for the whole stream."""

    def describe(self, *, with_method: bool = True) -> str:
        """``"single iid seed 0 fog-5 (none/source, none/tbn)"``: the unit for messages."""
        where = f"{self.run.setting} {self.run.order} seed {self.run.seed}"
        if self.domain is not None:
            where += f" {self.domain[0]}-{self.domain[1]}"
        learners = ", ".join(f"{m}/{p}" if with_method else p for m, p in self.pairs)
        return f"{where} ({learners})"


def units(config: GridConfig, done: Callable[[RowKey], bool]) -> list[Unit]:
    """The grid's units that still have a row missing, in the grid's order (see :class:`Unit`)."""
    from tta_bench.grid import expand

    found = []
    for run in expand(config):
        run_domains = domains(config, run.setting)
        if run.setting == "single":
            for domain in run_domains:
                pairs = tuple(p for p in run.pairs() if not done(_key(p, run, domain)))
                if pairs:
                    found.append(Unit(run, pairs, domain))
        else:
            pending = [p for p in run.pairs() if not all(done(_key(p, run, d)) for d in run_domains)]
            found += [Unit(run, group) for group in forward_groups(pending)]
    return found


def run_unit(
    config: GridConfig,
    model: nn.Module,
    unit: Unit,
    source: Any,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    on_batch: Callable[[dict[Pair, dict[Domain, Tally]]], None] | None = None,
) -> list[dict[str, Any]]:
    """The rows of one :class:`Unit`: fresh learners (``model`` is untouched), reset, fed the unit's
    episode; rows of every (domain, pair) of the episode, domain-major. ``source`` as from :func:`load_source`."""
    run = unit.run
    stream = build_stream(config, run, source, cache_dir=cache_dir)
    model = model.to(device).eval()
    # through a window every pair runs its own forwards (a learner's window is not its policy's)
    policy_alone = shared_forwards(unit.pairs) if config.window is None else {}
    learners: dict[Pair, nn.Module] = {
        p: learner_copy(model, *p, config.options, seed=run.seed) for p in unit.pairs if p not in policy_alone.values()
    }
    if config.window is not None:
        learners = {p: tta.SlidingWindow(learner, config.window) for p, learner in learners.items()}
    for episode_domain, batches in stream.episodes():
        if unit.domain is not None and domain_of(episode_domain) != unit.domain:
            continue  # another unit's episode: its batches are never produced
        episode_domains = [unit.domain] if unit.domain is not None else domains(config, run.setting)
        for learner in learners.values():
            tta.reset(learner)
        tallies = evaluate_batches(learners, batches, device=device, on_batch=on_batch, policy_alone=policy_alone)
        missing = [d for d in episode_domains if not any(d in tallies[p] for p in unit.pairs)]
        if missing:
            raise RuntimeError(f"the stream of {run} yielded no image of domains {missing}")
        return [
            make_row(config, run, p, d, tallies[p][d]) for d in episode_domains for p in unit.pairs if d in tallies[p]
        ]
    raise RuntimeError(f"the stream of {run} has no episode of domain {unit.domain}")


def first_batch(config: GridConfig, source: Any, *, cache_dir: str | os.PathLike[str] | None = None) -> Any:
    """The first batch of the grid's first stream (what :func:`check_model_and_policies` probes with)."""
    from tta_bench.grid import expand

    _, batches = next(build_stream(config, expand(config)[0], source, cache_dir=cache_dir).episodes())
    return next(batches)


def check_model_and_policies(
    config: GridConfig, model: nn.Module, batch: Any, *, device: torch.device | str = "cpu"
) -> None:
    """Fail before a grid starts if ``model`` or a (method, policy) with its options cannot process ``batch``.

    The model must take the stream's images and return one finite row of class scores per image, at
    least as many classes as the batch's labels need; each method over each policy is built on a deep
    copy (:func:`learner_copy`, ``model`` is untouched) and must give finite outputs on the batch (a
    method adapts once on it). Raises one ``ValueError`` naming the model, or the method and the policy
    with their options.
    """
    model = model.to(device).eval()
    x, y = batch.x.to(device), batch.y.to(device)
    with torch.no_grad():
        try:
            out = model(x)
        except RuntimeError as error:
            raise ValueError(
                f"model {config.model} cannot process the {config.dataset} images (a batch of shape "
                f"{tuple(x.shape)}): {_first_line(error)}"
            ) from None
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != len(x):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"model {config.model} returned {shape} for a batch of {len(x)} {config.dataset} images; "
                "expected one row of class scores per image"
            )
        if out.shape[1] <= int(y.max()):
            raise ValueError(
                f"model {config.model} has {out.shape[1]} outputs but {config.dataset} has label {int(y.max())}"
            )
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"model {config.model} gives non-finite outputs on clean {config.dataset} images")
        for method in config.methods:
            for policy in config.policies:
                what = _describe_pair(config, method, policy)
                try:
                    learner = learner_copy(model, method, policy, config.options, seed=config.seeds[0])
                    out = learner(x)
                except (ValueError, TypeError, RuntimeError) as error:
                    raise ValueError(f"{what}: {_first_line(error)}") from None
                if not bool(torch.isfinite(out).all()):
                    raise ValueError(f"{what} gives non-finite outputs on the first batch; check the option values")


def _describe_pair(config: GridConfig, method: str, policy: str) -> str:
    """``"policy tbn"``, or ``"method tent with options {'lr': -1} over policy tbn"`` for messages."""

    def named(kind: str, name: str) -> str:
        options = config.options.get(name, {})
        return f"{kind} {name}" + (f" with options {options}" if options else "")

    if method == NO_METHOD:
        return named("policy", policy)
    return f"{named('method', method)} over {named('policy', policy)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def clean_error(
    config: GridConfig,
    model: nn.Module,
    source: Any,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The unadapted model's error on the clean test split, at the grid's ``n_examples`` and batch size
    (the first ``n_examples`` images, in iid order with seed 0): ``{"n", "errors", "error"}``."""
    stream = tta_streams.Stream(
        source,
        corruptions=None,
        order="iid",
        setting="single",
        batch_size=config.batch_size,
        n_examples=config.n_examples,
        seed=0,
        table=config.table,
        cache_dir=cache_dir,
    )
    tally = evaluate_batches({"source": model.to(device).eval()}, stream, device=device)["source"][(CLEAN, 0)]
    return {"n": tally.n, "errors": tally.errors, "error": round(tally.error, 4), "n_examples": config.n_examples}


def _key(pair: Pair, run: Run, domain: Domain) -> RowKey:
    return (pair[0], pair[1], run.setting, run.order, run.seed, domain[0], domain[1])
