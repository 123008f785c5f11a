"""Evaluate methods over normalization policies on test streams: the library calls behind ``tta-bench run``.

A grid run (:class:`benchmarks.grid.Run`) is one stream (setting, order, seed) evaluated for every
(method, policy) in lockstep: each has its own learner (:func:`learner_copy`: a copy of the model adapted
with the policy, the method attached), every batch is fed to all of them, and errors are counted per
domain from ``batch.domain``. Learners are reset (``tta.reset``) before each episode of the stream (spec
S4: one episode per domain in ``single``, one for the whole stream otherwise), so the rows of one episode
are known when it ends. A killed run loses at most the episode in progress: in ``single`` one domain,
in ``continual``/``mixed``/``gradual`` the whole stream, which is run again. The loop runs under
``torch.no_grad``; a gradient method (Tent) takes its gradients inside its own forward, whatever the
caller's mode.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

import streams
import tta
from benchmarks.grid import CLEAN, NO_METHOD, GridConfig, RowKey, Run, domains

log = logging.getLogger(__name__)

Domain = tuple[str, int]
Pair = tuple[str, str]
"""(method, policy): one learner of the grid."""


@dataclasses.dataclass
class Tally:
    """Images seen and misclassified in one domain."""

    n: int = 0
    errors: int = 0

    @property
    def error(self) -> float:
        """Error in percent (NaN before any image)."""
        return 100.0 * self.errors / self.n if self.n else float("nan")


def adapted_copy(model: nn.Module, policy: str, options: Mapping[str, Any] | None = None, *, seed: int = 0) -> nn.Module:
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
) -> dict[Any, dict[Domain, Tally]]:
    """Feed every batch to every model (each adapting as it goes); count errors per model and domain.

    ``batches`` yields objects with ``x`` (float images in [0, 1]), ``y`` (labels) and ``domain`` (one
    (corruption, severity) per image), i.e. :class:`streams.Batch`. ``on_batch`` is called with the tallies
    so far after each batch (progress display).
    """
    device = torch.device(device)
    tallies: dict[Any, dict[Domain, Tally]] = {name: {} for name in models}
    with torch.no_grad():  # a method's own forward enables the gradients it needs
        for batch in batches:
            x = batch.x.to(device, non_blocking=True)
            y = batch.y.to(device, non_blocking=True)
            batch_domains = [domain_of(item) for item in batch.domain]
            groups = _group_indices(batch_domains)
            for name, model in models.items():
                wrong = (model(x).argmax(dim=1) != y).cpu()
                for domain, index in groups.items():
                    tally = tallies[name].setdefault(domain, Tally())
                    tally.n += len(index)
                    tally.errors += int(wrong[index].sum())
            if on_batch is not None:
                on_batch(tallies)
    return tallies


def evaluate_stream(
    models: Mapping[str, nn.Module],
    stream: Any,
    *,
    device: torch.device | str = "cpu",
) -> dict[str, dict[Domain, Tally]]:
    """Evaluate adapted models over a whole :class:`streams.Stream`, resetting them before each episode
    (spec S4); errors per policy and domain. The notebook's one-call version of :func:`run_grid`."""
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
    """The stream source of ``config.dataset`` (spec S1)."""
    return streams_source(config.dataset, data_dir=data_dir)


def streams_source(dataset: str, *, data_dir: str | os.PathLike[str] | None = None) -> Any:
    """Fashion-MNIST's embedded test set for ``fmnist-c`` (corrupted on the fly, spec S1); the
    precomputed robustbench sets under ``data_dir`` for the others (read, never corrupted again)."""
    if dataset == "fmnist-c":
        return streams.fashion_mnist("test")
    folders = {"cifar10-c": "CIFAR-10-C", "cifar100-c": "CIFAR-100-C", "imagenet-c": "ImageNet-C"}
    if dataset not in folders:
        raise ValueError(f"unknown dataset {dataset!r}; choose from: fmnist-c, {', '.join(folders)}")
    if data_dir is None:
        raise ValueError(f"dataset {dataset} is read from files: pass --data-dir, the folder holding {folders[dataset]}/")
    if dataset == "imagenet-c":
        return streams.imagenet_c_source(data_dir)
    return streams.cifar_c_source(dataset, data_dir)


def build_stream(
    config: GridConfig,
    run: Run,
    source: Any,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """The :class:`streams.Stream` of one grid run."""
    corruptions = None if config.corruptions == (CLEAN,) else list(config.corruptions)
    return streams.Stream(
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
    """One result row (the keys ``benchmarks.results`` requires, plus context)."""
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
    }


@dataclasses.dataclass
class Progress:
    """Callbacks a front end (the CLI's progress bar) may set; all optional."""

    on_batch: Callable[[Run, Domain | None, dict[Pair, dict[Domain, Tally]]], None] | None = None
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None


def run_grid(
    config: GridConfig,
    model: nn.Module,
    *,
    done: Callable[[RowKey], bool],
    save: Callable[[list[dict[str, Any]]], Any],
    source: Any = None,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> None:
    """Evaluate every run of the grid, skipping rows ``done`` says exist; ``save`` each episode's rows.

    ``save`` is called once per finished episode with its new rows (the results store appends and
    flushes them), so an interrupt loses only the episode in progress.
    """
    from benchmarks.grid import expand

    progress = progress or Progress()
    if source is None:
        source = load_source(config, data_dir=data_dir)
    model = model.to(device).eval()
    for run in expand(config):
        run_domains = domains(config, run.setting)
        pending = [p for p in run.pairs() if not all(done(_key(p, run, d)) for d in run_domains)]
        if not pending:
            continue
        stream = build_stream(config, run, source, cache_dir=cache_dir)
        models = {p: learner_copy(model, *p, config.options, seed=run.seed) for p in pending}
        for episode_domain, batches in stream.episodes():
            episode_domains = _episode_domains(episode_domain, run_domains, run.setting)
            todo = [p for p in pending if not all(done(_key(p, run, d)) for d in episode_domains)]
            if not todo:
                continue
            live = {p: models[p] for p in todo}
            for adapted in live.values():
                tta.reset(adapted)
            label = episode_domains[0] if len(episode_domains) == 1 else None

            def on_batch(
                tallies: dict[Pair, dict[Domain, Tally]], _run: Run = run, _label: Domain | None = label
            ) -> None:
                if progress.on_batch is not None:
                    progress.on_batch(_run, _label, tallies)

            tallies = evaluate_batches(live, batches, device=device, on_batch=on_batch)
            rows = [
                make_row(config, run, p, d, tallies[p][d])
                for d in episode_domains
                for p in todo
                if d in tallies[p] and not done(_key(p, run, d))
            ]
            missing = [d for d in episode_domains if not any(d in tallies[p] for p in todo)]
            if missing:
                raise RuntimeError(f"the stream of {run} yielded no image of domains {missing}")
            save(rows)
            if progress.on_rows is not None:
                progress.on_rows(rows)


def first_batch(
    config: GridConfig, source: Any, *, cache_dir: str | os.PathLike[str] | None = None
) -> Any:
    """The first batch of the grid's first stream (what :func:`check_model_and_policies` probes with)."""
    from benchmarks.grid import expand

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
    stream = streams.Stream(
        source, corruptions=None, order="iid", setting="single", batch_size=config.batch_size,
        n_examples=config.n_examples, seed=0, table=config.table, cache_dir=cache_dir,
    )
    tally = evaluate_batches({"source": model.to(device).eval()}, stream, device=device)["source"][(CLEAN, 0)]
    return {"n": tally.n, "errors": tally.errors, "error": round(tally.error, 4), "n_examples": config.n_examples}


def _key(pair: Pair, run: Run, domain: Domain) -> RowKey:
    return (pair[0], pair[1], run.setting, run.order, run.seed, domain[0], domain[1])


def _episode_domains(episode_domain: Any, run_domains: list[Domain], setting: str) -> list[Domain]:
    """The domains one episode covers: its own in ``single``, all of the run's otherwise."""
    if setting == "single":
        return [domain_of(episode_domain)]
    return run_domains
