"""Where the grid's units run: in this process, in local worker processes, or as Ray tasks.

Each executor takes the units (:class:`tta_bench.evaluate.Unit`) and yields one :class:`Outcome` per
unit, in completion order; only the caller (the driver) writes results, so there is one writer whatever
runs the units. A unit that raises is tried once more (:data:`RETRIES`); if it fails again its outcome
carries the error and the other units go on. A unit's rows do not depend on where or in which order it
runs: its learners are fresh copies of the model and its stream is rebuilt from the grid's arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import multiprocessing
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.reduction import ForkingPickler
from typing import Any

import torch
from torch import nn

from tta_bench import evaluate
from tta_bench.grid import GridConfig
from tta_streams import ImageSet

log = logging.getLogger(__name__)

RETRIES = 1
"""Further attempts of a unit that raised (or whose worker died) before it is reported as failed."""

RAY_EXTRA = "pip install 'tta-norm[ray]'"


@dataclasses.dataclass(frozen=True)
class Job:
    """What a worker needs to run any unit of a grid; sent once to each worker process (or put once in
    Ray's object store), not with every unit."""

    config: GridConfig
    model: nn.Module
    data_dir: str | None = None
    cache_dir: str | None = None
    device: str = "cpu"
    """A torch device name, or ``auto``: CUDA where the worker sees a GPU, else the CPU."""
    threads: int | None = None
    """torch's intra-op threads in each worker (None: PyTorch's default)."""
    images: ImageSet | None = None
    """A user's images streamed instead of the dataset's (``config.images`` is their fingerprint)."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A finished unit: its rows, or the error of its last attempt; ``running`` units still in flight."""

    unit: evaluate.Unit
    rows: list[dict[str, Any]]
    error: str | None
    running: int


def import_ray() -> Any:
    """The ``ray`` module, or an ImportError naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"--executor ray needs Ray, which is not installed: {RAY_EXTRA}") from None
    return ray


def check_sendable(model: nn.Module, *, ray: bool = False) -> None:
    """Raise ValueError when ``model`` cannot be pickled as the job of worker processes (or, with
    ``ray``, of Ray tasks, which pickle with cloudpickle)."""
    dumps = import_ray().cloudpickle.dumps if ray else ForkingPickler.dumps
    try:
        dumps(model)
    except Exception as error:
        raise ValueError(
            f"the model cannot be sent to {'Ray tasks' if ray else 'worker processes'}: it cannot "
            f"be pickled ({_describe(error)}); run it in this process (--executor local --workers 1), "
            "or load it from a state dict with --arch"
        ) from None


def _describe(error: BaseException) -> str:
    cause = getattr(error, "cause", None) or error  # a RayTaskError wraps the task's own exception
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[0]}" if text else type(cause).__name__


# ------------------------------------------------------------------------------------- in a worker


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@functools.lru_cache(maxsize=4)
def _source(dataset: str, data_dir: str | None) -> Any:
    """The stream source, loaded once per worker process."""
    return evaluate.streams_source(dataset, data_dir=data_dir)


def run_unit(
    job: Job, unit: evaluate.Unit, *, source: Any = None, on_batch: Callable[[dict[Any, Any]], None] | None = None
) -> list[dict[str, Any]]:
    """The rows of ``unit`` (:func:`tta_bench.evaluate.run_unit` with the job's model, data and device)."""
    if source is None:
        source = job.images if job.images is not None else _source(job.config.dataset, job.data_dir)
    return evaluate.run_unit(
        job.config, job.model, unit, source, cache_dir=job.cache_dir, device=_device(job.device), on_batch=on_batch
    )


_worker_job: Job | None = None
"""The job of this worker process (set by :func:`_start_worker`)."""


def _start_worker(job: Job, driver: int) -> None:
    global _worker_job
    _worker_job = job
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    threading.Thread(target=_exit_without, args=(driver,), daemon=True).start()


def _exit_without(driver: int) -> None:
    """End this worker once the driver is gone (even killed by SIGKILL) rather than idle as an orphan."""
    while os.getppid() == driver:
        time.sleep(0.5)
    os._exit(1)


def _run_in_worker(unit: evaluate.Unit) -> list[dict[str, Any]]:
    assert _worker_job is not None, "not a worker started by run_in_processes"
    return run_unit(_worker_job, unit)


def _run_ray_task(job: Job, unit: evaluate.Unit) -> list[dict[str, Any]]:
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    return run_unit(job, unit)


# --------------------------------------------------------------------------------------- executors


def run_here(
    job: Job,
    units: Iterable[evaluate.Unit],
    *,
    source: Any = None,
    on_batch: Callable[[evaluate.Unit, dict[Any, Any]], None] | None = None,
) -> Generator[Outcome, None, None]:
    """Run the units one after the other in this process; ``on_batch(unit, tallies)`` after each batch."""
    units = list(units)
    for index, unit in enumerate(units):
        running = int(index + 1 < len(units))
        for attempt in range(1, RETRIES + 2):
            try:
                rows = run_unit(
                    job, unit, source=source, on_batch=None if on_batch is None else functools.partial(on_batch, unit)
                )
            except Exception as error:
                if _log_failure(unit, attempt, error):
                    yield Outcome(unit, [], _describe(error), running)
                continue
            yield Outcome(unit, rows, None, running)
            break


def run_in_processes(job: Job, units: Iterable[evaluate.Unit], *, workers: int) -> Generator[Outcome, None, None]:
    """Run the units in ``workers`` local processes (started with ``spawn``, so no thread or CUDA state
    of the driver is inherited), one unit at a time in each. Each process is a pool of its own, so a
    process that dies (e.g. killed for memory) ran exactly one unit: that unit counts an attempt and is
    retried in a new process like one that raised; the units of the other processes go on."""
    context = multiprocessing.get_context("spawn")
    waiting = deque(units)
    attempts: Counter[evaluate.Unit] = Counter()
    running: dict[Future[list[dict[str, Any]]], tuple[evaluate.Unit, ProcessPoolExecutor]] = {}
    pools: list[ProcessPoolExecutor] = []

    def start() -> ProcessPoolExecutor:
        pools.append(ProcessPoolExecutor(1, mp_context=context, initializer=_start_worker, initargs=(job, os.getpid())))
        return pools[-1]

    def submit(unit: evaluate.Unit, pool: ProcessPoolExecutor) -> None:
        attempts[unit] += 1
        running[pool.submit(_run_in_worker, unit)] = (unit, pool)

    try:
        for _ in range(min(workers, len(waiting))):
            submit(waiting.popleft(), start())
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                unit, pool = running.pop(future)
                error = future.exception()
                if isinstance(error, BrokenProcessPool):  # its one process died running this unit
                    pools.remove(pool)
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = start()
                if error is not None and not _log_failure(unit, attempts[unit], error):
                    submit(unit, pool)
                    continue
                if waiting:
                    submit(waiting.popleft(), pool)
                if error is None:
                    yield Outcome(unit, future.result(), None, len(running))
                else:
                    yield Outcome(unit, [], _describe(error), len(running))
    finally:
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)


def run_on_ray(
    job: Job,
    units: Iterable[evaluate.Unit],
    *,
    address: str | None = None,
    cpus_per_task: float = 1,
    gpus_per_task: float = 0,
) -> Generator[Outcome, None, None]:
    """Run the units as Ray tasks, collected in completion order (``ray.wait``). Connects as Ray does
    (``address``, else ``RAY_ADDRESS``, else a new local cluster) unless Ray is already initialized in
    this process; Ray retries a failed task (``max_retries``, ``retry_exceptions``)."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address)
    task = ray.remote(_run_ray_task).options(
        num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=RETRIES, retry_exceptions=True
    )
    job_ref = ray.put(job)
    pending = {task.remote(job_ref, unit): unit for unit in units}
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_task))
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(ref)
            try:
                rows = ray.get(ref)
            except ray.exceptions.RayError as error:
                log.error("unit %s failed after %d attempts: %s", unit.describe(), RETRIES + 1, _describe(error))
                yield Outcome(unit, [], _describe(error), min(slots, len(pending)))
                continue
            yield Outcome(unit, rows, None, min(slots, len(pending)))
    finally:
        for ref in pending:
            ray.cancel(ref)


def _log_failure(unit: evaluate.Unit, attempt: int, error: BaseException) -> bool:
    """Log a failed attempt; True when it was the last one."""
    if attempt <= RETRIES:
        log.warning(
            "unit %s failed (attempt %d of %d), retrying: %s", unit.describe(), attempt, RETRIES + 1, _describe(error)
        )
        return False
    log.error("unit %s failed after %d attempts", unit.describe(), attempt, exc_info=error)
    return True
