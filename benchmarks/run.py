"""Run a benchmark grid into a results folder: the library call behind ``tta-bench run``.

:func:`run_grid` locks the folder, checks the model and every (method, policy) on a first batch, runs
the grid's missing units on an executor, appends their rows and records the run in ``meta.json``. It
logs and raises; progress goes to an optional callback, which receives the events defined here.

Example (a notebook)::

    from tta_bench import grid, run
    config = grid.make_config(dataset="fmnist-c", policies=["tbn", "rbn"], corruptions=["fog"], n_examples=400)
    result = run.run_grid(config, "runs/fog")
    result.rows  # the folder's rows, in grid order
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tta_bench import evaluate, executors, grid, metadata, report, results
from tta_bench.grid import GridConfig
from tta_streams import ImageSet

Status = Literal["complete", "failed", "interrupted"]


class RunError(ValueError):
    """An argument of :func:`run_grid` (or a combination of them) that cannot run; the message names it
    as ``tta-bench run`` spells it, and the fix."""


# ------------------------------------------------------------------------------------ progress events


@dataclasses.dataclass(frozen=True)
class GridPlanned:
    """The grid's size and how much of it the folder already holds."""

    config: GridConfig
    total: int
    done: int
    streams: int
    results_path: Path


@dataclasses.dataclass(frozen=True)
class CleanErrorMeasured:
    """The unadapted model's error (%) on ``n`` clean test images, measured once per folder."""

    error: float
    n: int


@dataclasses.dataclass(frozen=True)
class UnitsStarted:
    """``units`` units are about to run; ``done`` of the grid's ``total`` results are already stored."""

    units: int
    total: int
    done: int


@dataclasses.dataclass(frozen=True)
class BatchDone:
    """A batch of ``unit`` went through every learner (only when the units run in this process):
    ``tallies[(method, policy)][domain]`` are the episode's running :class:`evaluate.Tally`."""

    unit: evaluate.Unit
    tallies: dict[tuple[str, str], dict[Any, Any]]


@dataclasses.dataclass(frozen=True)
class UnitFinished:
    """A unit finished (``outcome.error`` set if it failed): ``rows`` are the rows it added, the last of
    which is result number ``finished`` of ``total``; ``done`` of ``units`` units are finished."""

    outcome: executors.Outcome
    rows: list[dict[str, Any]]
    finished: int
    total: int
    done: int
    units: int


Event = GridPlanned | CleanErrorMeasured | UnitsStarted | BatchDone | UnitFinished


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What :func:`run_grid` did.

    ``status``: ``complete`` (every row stored), ``failed`` (``failures`` are the units that failed
    after their retries; the other rows are stored) or ``interrupted`` (Ctrl-C; the finished rows are
    stored). ``rows``: the folder's rows in grid order; ``added``: how many this call stored;
    ``report``: the report files written when complete (name to path).
    """

    status: Status
    config: GridConfig
    rows: list[dict[str, Any]]
    added: int
    total: int
    units: int
    failures: list[executors.Outcome]
    results_path: Path
    meta: dict[str, Any]
    report: dict[str, Path]


# ---------------------------------------------------------------------------------------- arguments


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` (CUDA if available, else the CPU) or a torch device name; RunError if unusable here."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise RunError(f"--device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)``; None leaves PyTorch's setting. RunError below 1."""
    if threads is None:
        return
    if threads < 1:
        raise RunError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def check_out_folder(out: str | os.PathLike[str]) -> Path:
    """``out`` as a path, refused (before anything is written) if it or a parent is not a folder, or the
    folder it would be created in is not writable."""
    text = os.fspath(out)
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise RunError(f"--out {text}: exists and is not a folder; name a folder (new or a results folder)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunError(f"--out {text}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"--out {text}: no permission to write in {existing}")
    return path


def unit_threads(threads: int | None, executor: str, cpus_per_task: float = 1.0) -> int:
    """torch threads per unit: ``threads``, else on Ray the task's ``cpus_per_task``, else 1.

    The default does not depend on the number of workers, so every executor and worker count gives the
    same rows: BatchNorm's fused statistics kernel (``stats.batch_moments``) sums a channels-last input
    in one partial per thread, so another thread count changes the last bits of the statistics, and now
    and then a prediction. One thread per unit is also the efficient split of this benchmark's small
    units: cores are used by running units side by side (``workers``), not by splitting each small
    convolution.
    """
    if threads is not None:
        return threads
    if executor == "ray":
        return max(1, int(cpus_per_task))
    return 1


def check_executor(
    executor: str,
    *,
    workers: int = 1,
    device: str = "auto",
    ray_address: str | None = None,
    cpus_per_task: float = 1.0,
    gpus_per_task: float = 0.0,
) -> None:
    """Refuse executor arguments that do not fit together (RunError), before anything is written."""
    if executor not in ("local", "ray"):
        raise RunError(f"--executor {executor!r}: choose local or ray")
    if workers < 1:
        raise RunError(f"--workers must be >= 1, got {workers}")
    if executor == "ray":
        if workers != 1:
            raise RunError(
                "--workers is for --executor local; on Ray the cluster's CPUs and --cpus-per-task "
                "decide how many units run at once"
            )
        if cpus_per_task <= 0 or gpus_per_task < 0:
            raise RunError(
                f"--cpus-per-task must be > 0 and --gpus-per-task >= 0, got {cpus_per_task} and {gpus_per_task}"
            )
        if device not in ("auto", "cpu") and gpus_per_task == 0:
            raise RunError(
                f"--device {device} with --executor ray needs --gpus-per-task (e.g. 1, or 0.5 to "
                "share a GPU): Ray hides the GPUs from tasks that do not ask for one"
            )
        try:
            executors.import_ray()
        except ImportError as error:
            raise RunError(str(error)) from None
    else:
        given = [
            flag
            for flag, value, default in (
                ("--ray-address", ray_address, None),
                ("--cpus-per-task", cpus_per_task, 1.0),
                ("--gpus-per-task", gpus_per_task, 0.0),
            )
            if value != default
        ]
        if given:
            raise RunError(f"{', '.join(given)}: only with --executor ray")


# --------------------------------------------------------------------------------------------- run


def run_grid(
    config: GridConfig | Callable[[], GridConfig],
    out: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    model_name: str | None = None,
    model_dir: str | os.PathLike[str] | None = None,
    trust_pickle: bool = False,
    executor: Literal["local", "ray"] = "local",
    workers: int = 1,
    threads: int | None = None,
    device: str | torch.device = "auto",
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    ray_address: str | None = None,
    cpus_per_task: float = 1.0,
    gpus_per_task: float = 0.0,
    images: ImageSet | str | os.PathLike[str] | None = None,
    progress: Callable[[Event], None] | None = None,
) -> RunResult:
    """Run the grid's missing rows into the results folder ``out``; resumable, one run per folder.

    The folder is created and locked first (a second run on it raises
    :class:`tta_bench.results.FolderInUseError` at once); then the arguments are checked, the model and
    every (method, policy) are probed on the first batch, the unadapted model's clean error is measured
    once per folder, the units run on the executor and their rows are appended as they finish. The run
    is recorded in ``meta.json``; a complete grid writes the report files.

    Args:
        config: the grid (:func:`tta_bench.grid.make_config`), or a function building it, called once
            the folder is locked (so that a busy folder is refused before a bad argument).
        out: the results folder (created; reused to resume). A folder holding another grid's results is
            refused (:class:`tta_bench.results.ConfigMismatchError`).
        model: the model to adapt (images in [0, 1]; moved to ``device``), which ``config.model`` names in
            the rows and the folder's identity; None loads ``config.model``
            (:func:`tta_bench.models.load_model` with ``model_dir`` and ``trust_pickle``).
        model_name: how messages name the model (default ``config.model``).
        executor: ``local`` (this process, or ``workers`` processes) or ``ray`` (a Ray task per unit, on
            ``ray_address`` with ``cpus_per_task`` and ``gpus_per_task``).
        workers: local processes running units at once (>= 1; 1 runs them in this process).
        threads: torch threads per unit (default: see :func:`unit_threads`).
        device: ``auto`` (CUDA if available) or a torch device.
        data_dir: the folder of a precomputed dataset; cache_dir: the corrupted-image cache.
        images: a user's clean images streamed instead of the dataset's, corrupted as the grid says (or
            as they are with corruptions ``none``), or the file of such a set (:meth:`ImageSet.load`);
            ``config.dataset`` names what they stand in for. The config records their fingerprint, so a
            folder of other images is refused.
        progress: called with each :data:`Event` (the CLI draws its progress from them).

    Returns:
        A :class:`RunResult`. Raises :class:`RunError` (a ValueError) for an argument that cannot run,
        ValueError for a model or policy that fails the probe, ``FolderInUseError`` for a busy folder.

    See :doc:`/cli` (results folders, resuming, reports), :doc:`/distributed` (workers and Ray) and
    :doc:`/tutorials/validate_your_stream` (a user's own images).
    """
    started, started_at = time.monotonic(), metadata.utc_now()
    folder = check_out_folder(out)
    # The lock comes first, so that a second run on the same folder is refused at once, whatever else;
    # a folder created here that stays empty is removed when the run ends.
    with results.FolderLock(folder, created=results.make_folder(folder)):
        # Everything that can fail on the arguments fails here, before anything is written into the folder.
        config = config if isinstance(config, GridConfig) else config()
        config, images = _with_images(config, images)
        check_executor(
            executor,
            workers=workers,
            device=str(device),
            ray_address=ray_address,
            cpus_per_task=cpus_per_task,
            gpus_per_task=gpus_per_task,
        )
        per_unit = unit_threads(threads, executor, cpus_per_task)
        set_threads(per_unit)  # serial units run in this process
        torch_device = resolve_device(device)
        if model is None:
            from tta_bench.models import load_model

            model = load_model(
                config.model,
                dataset=config.dataset,
                device=torch_device,
                model_dir=model_dir,
                arch=config.arch,
                model_args=config.model_args,
                trust_pickle=trust_pickle,
            )
        if executor == "ray" or workers > 1:
            try:
                executors.check_sendable(model, ray=executor == "ray")
            except ValueError as error:
                raise RunError(f"--model {model_name or config.model}: {error}") from None
        source = images if images is not None else evaluate.load_source(config, data_dir=data_dir)
        check_streams(config, source)
        try:
            batch = evaluate.first_batch(config, source, cache_dir=cache_dir)
        except ImportError as error:  # e.g. a corruption's package is not installed
            raise RunError(str(error)) from None
        evaluate.check_model_and_policies(config, model, batch, device=torch_device)
        meta = metadata.read_meta(folder)
        store = results.ResultStore.open(folder, config)
        run_entry: dict[str, Any] = {
            "started": started_at,
            **metadata.environment(torch_device),
            "executor": executor,
            "workers": workers,
            "worker_threads": per_unit,
        }
        before = len(store.rows())
        try:
            status, failures, n_units = _run_units(
                config,
                model,
                source,
                store,
                meta,
                torch_device,
                executor=executor,
                workers=workers,
                threads=per_unit,
                device_name=str(device),
                images=images,
                data_dir=data_dir,
                cache_dir=cache_dir,
                ray_address=ray_address,
                cpus_per_task=cpus_per_task,
                gpus_per_task=gpus_per_task,
                progress=progress,
            )
        finally:
            run_entry["seconds"] = round(time.monotonic() - started, 1)
            run_entry["results_added"] = len(store.rows()) - before
            meta.setdefault("runs", []).append(run_entry)
            metadata.write_meta(folder, meta)
        rows = report.in_grid_order(store.rows(), config.to_json())
        paths = (
            report.write_report(store.folder, rows, config=config.to_json(), metadata=meta)
            if status == "complete"
            else {}
        )
        return RunResult(
            status=status,
            config=config,
            rows=rows,
            added=len(store.rows()) - before,
            total=len(grid.row_keys(config)),
            units=n_units,
            failures=failures,
            results_path=store.results_path,
            meta=meta,
            report=paths,
        )


def check_streams(config: GridConfig, source: Any) -> None:
    """Draw the order of every stream of the grid (its indices only: no image is read or corrupted), so that
    a stream its arguments cannot make (a Dirichlet draw that never balances on a few images per domain, a
    Markov chain that misses a domain) fails before anything runs, naming its setting, order and seed."""
    for stream in grid.expand(config):
        try:
            evaluate.build_stream(config, stream, source)
        except ImportError as error:  # e.g. a corruption's package is not installed
            raise RunError(str(error)) from None
        except ValueError as error:
            raise RunError(f"setting {stream.setting}, order {stream.order}, seed {stream.seed}: {error}") from None


def _with_images(
    config: GridConfig, images: ImageSet | str | os.PathLike[str] | None
) -> tuple[GridConfig, ImageSet | None]:
    """The config naming the fingerprint of ``images`` (read from their file if a path), and the set."""
    if images is None:
        if config.images is not None:
            raise RunError(f"this grid streams a user's images ({config.images}); pass them (--images FILE)")
        return config, None
    if not isinstance(images, ImageSet):
        path = os.fspath(images)
        try:
            images = ImageSet.load(path)
        except FileNotFoundError:
            raise RunError(f"--images {path}: no such file") from None
        except ValueError as error:
            raise RunError(f"--images {error}") from None
    fingerprint = grid.fingerprint_images(images)
    if config.images not in (None, fingerprint):
        raise RunError(f"--images: these images ({fingerprint}) are not the grid's ({config.images})")
    return dataclasses.replace(config, images=fingerprint), images


def _run_units(
    config: GridConfig,
    model: nn.Module,
    source: Any,
    store: results.ResultStore,
    meta: dict[str, Any],
    device: torch.device,
    *,
    executor: str,
    workers: int,
    threads: int,
    device_name: str,
    images: ImageSet | None,
    data_dir: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    ray_address: str | None,
    cpus_per_task: float,
    gpus_per_task: float,
    progress: Callable[[Event], None] | None,
) -> tuple[Status, list[executors.Outcome], int]:
    """Run the grid's missing units into ``store``: the status, the failed units and the number of units."""
    notify = progress or (lambda event: None)
    keys = grid.row_keys(config)
    todo = [key for key in keys if not store.done(key)]
    notify(GridPlanned(config, len(keys), len(keys) - len(todo), len(grid.expand(config)), store.results_path))
    if "clean_error" not in meta:  # once per folder; a resumed run reuses it
        try:
            meta["clean_error"] = evaluate.clean_error(config, model, source, cache_dir=cache_dir, device=device)
        except (ValueError, OSError, RuntimeError) as error:  # e.g. no clean split: recorded, not fatal
            meta["clean_error"] = {"unavailable": str(error)}
        metadata.write_meta(store.folder, meta)
        if "error" in meta["clean_error"]:
            notify(CleanErrorMeasured(meta["clean_error"]["error"], meta["clean_error"]["n"]))
    units = evaluate.units(config, store.done)
    if not units:
        return "complete", [], 0
    finished = len(keys) - len(todo)
    notify(UnitsStarted(len(units), len(keys), finished))

    def on_batch(unit: evaluate.Unit, tallies: dict[tuple[str, str], dict[Any, Any]]) -> None:
        notify(BatchDone(unit, tallies))

    serial = executor == "local" and workers == 1
    # workers get the model on the CPU (a Ray node may have no GPU) and move it to their own device
    job = executors.Job(
        config,
        model if serial else copy.deepcopy(model).cpu(),
        data_dir=None if data_dir is None else os.fspath(data_dir),
        cache_dir=None if cache_dir is None else os.fspath(cache_dir),
        device="auto" if executor == "ray" and device_name == "auto" else str(device),
        threads=threads,
        images=images,
    )
    if executor == "ray":
        outcomes = executors.run_on_ray(
            job, units, address=ray_address, cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task
        )
    elif serial:
        outcomes = executors.run_here(job, units, source=source, on_batch=on_batch)
    else:
        outcomes = executors.run_in_processes(job, units, workers=workers)
    failed: list[executors.Outcome] = []
    with contextlib.closing(outcomes):
        try:
            for done, outcome in enumerate(outcomes, start=1):
                if outcome.error is not None:
                    failed.append(outcome)
                rows = [row for row in outcome.rows if not store.done(grid.row_key(row))]
                store.append(rows)
                finished += len(rows)
                notify(UnitFinished(outcome, rows, finished, len(keys), done, len(units)))
        except KeyboardInterrupt:
            return "interrupted", failed, len(units)
    return ("failed" if failed else "complete"), failed, len(units)
