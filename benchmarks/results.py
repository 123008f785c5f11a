"""The append-only results store of a benchmark folder: ``config.json`` plus ``results.jsonl``.

``results.jsonl`` holds one JSON object per finished (method, policy, setting, order, seed, domain),
appended, flushed and fsynced as soon as it is known, so a killed run loses nothing already reported.
``config.json`` holds the :class:`benchmarks.grid.GridConfig` the rows were produced with. Reopening a
folder with a different configuration is refused (never mixed): the identity of a results folder is its
whole grid configuration (dataset, model, methods, policies, settings, orders, corruptions, severities,
seeds, batch size, number of examples, policy and method options); the data location, cache, device and
output folder are not part of it.

One process writes a folder at a time: :class:`FolderLock` holds an OS-level lock (``filelock``, released
by the OS when the holder dies, even by ``kill -9``) on ``.lock`` for the whole run, and records the
holder's PID in ``.lock.pid`` so a refused run can name it. Readers tolerate a key stored twice (left
by an older, unlocked version): it counts once and is reported. Rows and configs written before methods
existed (no ``method`` key, no ``methods``) are ``none``'s: such a folder resumes with the same command.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import filelock

from benchmarks.grid import NO_METHOD, GridConfig, RowKey, row_key

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
RESULTS_NAME = "results.jsonl"
LOCK_NAME = ".lock"
LOCK_PID_NAME = ".lock.pid"
REQUIRED_KEYS: tuple[str, ...] = (
    "policy", "setting", "order", "seed", "corruption", "severity", "n", "errors", "error",
)


class ConfigMismatchError(ValueError):
    """The folder holds results of a different configuration."""


class FolderInUseError(RuntimeError):
    """Another process holds the results folder's lock."""


class FolderLock:
    """Exclusive lock on a results folder for the duration of a ``with`` block; fails at once if held.

    The lock is ``filelock.FileLock`` on ``folder/.lock`` (``flock`` on POSIX): the OS drops it when the
    holding process ends in any way, so a stale ``.lock`` file never blocks. The holder writes its PID
    and start time to ``folder/.lock.pid`` after acquiring, for the message of a refused contender.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._lock = filelock.FileLock(str(self.folder / LOCK_NAME), timeout=0)

    def __enter__(self) -> FolderLock:
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise FolderInUseError(
                f"{self.folder} is in use by another tta-bench run ({self.holder()}); wait for it to "
                "finish, or choose another --out folder"
            ) from None
        _write_atomic(
            self.folder / LOCK_PID_NAME,
            json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n",
        )
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        (self.folder / LOCK_PID_NAME).unlink(missing_ok=True)
        self._lock.release()

    def holder(self) -> str:
        """``"PID 1234 since <UTC time>"`` as the holder recorded it, or what is known of it."""
        try:
            info = json.loads((self.folder / LOCK_PID_NAME).read_text(encoding="utf-8"))
            return f"PID {info['pid']} since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "PID unknown: the holder has not recorded it yet"


def _describe_differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    lines = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            lines.append(f"  {key}: {old.get(key)!r} there, {new.get(key)!r} now")
    return "\n".join(lines)


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All complete rows of a ``results.jsonl``, each key once (see :func:`read_results`)."""
    return read_results(path)[0]


def read_results(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of a ``results.jsonl`` with each key once (the first stored), and the later rows of a
    key stored before (duplicates: a warning is logged, they are not counted again).

    A torn last line (a write cut by a kill) is ignored. A malformed line anywhere else is an error
    naming the line: the file was edited or corrupted.
    """
    path = Path(path)
    if not path.exists():
        return [], []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    torn = lines.pop()  # text after the last newline: empty unless the last write was cut
    if torn.strip():
        log.warning("%s: ignoring an incomplete last line (an interrupted write)", path)
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg}); fix or delete the line") from None
        missing = [key for key in REQUIRED_KEYS if key not in row]
        if missing:
            raise ValueError(f"{path}, line {number}: missing keys {missing}")
        rows.append(row)
    unique: dict[RowKey, dict[str, Any]] = {}
    duplicates = []
    for row in rows:
        if row_key(row) in unique:
            duplicates.append(row)
        else:
            unique[row_key(row)] = row
    if duplicates:
        log.warning("%s: %d result(s) stored more than once, each counted once: %s", path, len(duplicates),
                    "; ".join(describe_key(row_key(row)) for row in duplicates))
    return list(unique.values()), duplicates


def describe_key(key: RowKey, *, with_method: bool | None = None) -> str:
    """``"tent/tbn single iid seed 0 fog-5"``: a row key for messages. The method is named when
    ``with_method`` says so; by default when it is not ``none`` (``"tbn single iid seed 0 fog-5"``)."""
    method, policy, setting, order, seed, corruption, severity = key
    if with_method is None:
        with_method = method != NO_METHOD
    learner = f"{method}/{policy}" if with_method else policy
    return f"{learner} {setting} {order} seed {seed} {corruption}-{severity}"


def read_config(folder: str | os.PathLike[str]) -> GridConfig:
    """The configuration a results folder was produced with."""
    path = Path(folder) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {folder} is not a benchmark results folder")
    return GridConfig.from_json(json.loads(path.read_text(encoding="utf-8")))


class ResultStore:
    """The results of one grid configuration in one folder; open with :meth:`open`."""

    def __init__(self, folder: Path, config: GridConfig, rows: list[dict[str, Any]]) -> None:
        self.folder = folder
        self.config = config
        self._rows = rows
        self._done: set[RowKey] = {row_key(row) for row in rows}

    @property
    def results_path(self) -> Path:
        return self.folder / RESULTS_NAME

    @classmethod
    def open(cls, folder: str | os.PathLike[str], config: GridConfig) -> ResultStore:
        """Open (or create) ``folder`` for ``config``.

        Raises :class:`ConfigMismatchError` when the folder already holds rows of another configuration,
        or rows without a ``config.json``. A torn last line left by a kill is cut off so appends stay
        one object per line.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config_path = folder / CONFIG_NAME
        results_path = folder / RESULTS_NAME
        wanted = config.to_json()
        rows = read_rows(results_path)
        if rows:
            if not config_path.exists():
                raise ConfigMismatchError(
                    f"{results_path} has results but no {CONFIG_NAME}: cannot tell which arguments made "
                    f"them; use another --out folder"
                )
            stored = json.loads(config_path.read_text(encoding="utf-8"))
            if stored != wanted:
                raise ConfigMismatchError(
                    f"{folder} holds results of different arguments; they are not mixed.\n"
                    f"{_describe_differences(stored, wanted)}\n"
                    f"Rerun with the same arguments to resume, or choose another --out folder "
                    f"(or delete {folder} to start over)."
                )
        else:
            _write_atomic(config_path, json.dumps(wanted, indent=2) + "\n")
        _cut_torn_tail(results_path)
        return cls(folder, config, rows)

    def rows(self) -> list[dict[str, Any]]:
        """The stored rows, in the order they were appended."""
        return list(self._rows)

    def done(self, key: RowKey) -> bool:
        """Whether the row ``key`` is stored."""
        return key in self._done

    def append(self, rows: Iterable[dict[str, Any]]) -> int:
        """Append the rows not stored yet (one write, then flush and fsync); returns how many were new."""
        new = []
        for row in rows:
            missing = [key for key in REQUIRED_KEYS if key not in row]
            if missing:
                raise ValueError(f"result row misses keys {missing}: {row}")
            key = row_key(row)
            if key in self._done:
                continue
            self._done.add(key)
            new.append(row)
        if not new:
            return 0
        text = "".join(json.dumps(row, sort_keys=False) + "\n" for row in new)
        with open(self.results_path, "a", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        self._rows.extend(new)
        return len(new)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _cut_torn_tail(path: Path) -> None:
    """Truncate ``path`` after its last newline (drops a partial line left by a killed writer)."""
    if not path.exists():
        return
    with open(path, "rb+") as file:
        data = file.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            file.truncate(end)
