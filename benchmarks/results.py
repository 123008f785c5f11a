"""The append-only results store of a benchmark folder: ``config.json`` plus ``results.jsonl``.

``results.jsonl`` holds one JSON object per finished (method, policy, setting, order, seed, domain),
appended, flushed and fsynced as soon as it is known, so a killed run loses nothing already reported.
``config.json`` holds the :class:`tta_bench.grid.GridConfig` the rows were produced with. Reopening a
folder with a different configuration is refused (never mixed): the identity of a results folder is its
whole grid configuration (dataset, model, methods, policies, settings, orders, corruptions, severities,
seeds, batch size, number of examples, policy and method options); the data location, cache, device and
output folder are not part of it.

One process writes a folder at a time: :class:`FolderLock` holds an OS-level lock (``filelock``, released
by the OS when the holder dies, even by ``kill -9``) on ``.lock`` for the whole run, and records the
holder's PID in ``.lock.pid`` so a refused run can name it. Every file of a folder is read through one
checked path (:func:`read_json_file`, :func:`read_results`): a file that cannot be read or written, or
a line or value its writer never writes, is a :class:`FolderFileError` naming the file and line.
Readers tolerate a key stored twice (left by an older, unlocked version): it counts once and is
reported. A finished folder may be archived with its rows compressed, ``results.jsonl.gz`` in place of
``results.jsonl`` (``gzip results.jsonl``; :func:`results_file`): readers take either, runs refuse to append
to an archive. Rows and configs written before methods existed (no ``method`` key, no ``methods``) are
``none``'s: such a folder resumes with the same command.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import filelock
import jsonschema
from jsonschema.exceptions import best_match

from tta_bench.grid import NO_METHOD, GridConfig, RowKey, row_key

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
RESULTS_NAME = "results.jsonl"
ARCHIVE_NAME = "results.jsonl.gz"
LOCK_NAME = ".lock"
LOCK_PID_NAME = ".lock.pid"
REQUIRED_KEYS: tuple[str, ...] = (
    "policy",
    "setting",
    "order",
    "seed",
    "corruption",
    "severity",
    "n",
    "errors",
    "error",
)


_NAMES = {"type": "array", "items": {"type": "string"}}
_INTEGERS = {"type": "array", "items": {"type": "integer"}}
ROW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": list(REQUIRED_KEYS),
    "properties": {
        **{key: {"type": "string"} for key in ("method", "policy", "setting", "order", "corruption")},
        **{key: {"type": "integer", "minimum": 0} for key in ("seed", "severity", "n", "errors")},
        "error": {"type": "number"},
    },
}
"""What a line of ``results.jsonl`` holds (other keys are free)."""
CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "dataset",
        "model",
        "policies",
        "settings",
        "orders",
        "corruptions",
        "severities",
        "seeds",
        "batch_size",
        "n_examples",
    ],
    "properties": {
        "dataset": {"type": "string"},
        "model": {"type": "string"},
        "policies": {**_NAMES, "minItems": 1},
        "methods": {**_NAMES, "minItems": 1},
        "settings": _NAMES,
        "orders": _NAMES,
        "corruptions": _NAMES,
        "severities": _INTEGERS,
        "seeds": _INTEGERS,
        "batch_size": {"type": "integer", "minimum": 1},
        "n_examples": {"type": ["integer", "null"]},
        "options": {"type": "object", "additionalProperties": {"type": "object"}},
        "arch": {"type": ["string", "null"]},
        "model_args": {"type": "object"},
        "table": {"type": ["string", "null"]},
        "images": {"type": ["string", "null"]},
        "window": {"type": ["integer", "null"], "minimum": 2},
    },
}
"""What ``config.json`` holds (:meth:`tta_bench.grid.GridConfig.to_json`)."""


class FolderFileError(ValueError):
    """A file of a results folder cannot be read or written, or holds what its writer never writes."""


class ConfigMismatchError(ValueError):
    """The folder holds results of a different configuration."""


class FolderInUseError(RuntimeError):
    """Another process holds the results folder's lock."""


class FolderLock:
    """Exclusive lock on a results folder for the duration of a ``with`` block; fails at once if held.

    The lock is ``filelock.FileLock`` on ``folder/.lock`` (``flock`` on POSIX): the OS drops it when the
    holding process ends in any way, so a stale ``.lock`` file never blocks. The holder writes its PID
    and start time to ``folder/.lock.pid`` after acquiring, for the message of a refused contender.

    Args:
        folder: the results folder (it must exist).
        created: the topmost folder created for this run (:func:`make_folder`), or None. On release,
            while still locked, ``folder`` and its parents up to ``created`` are removed if they hold
            nothing but the lock: a run that failed before writing anything leaves no folder behind.
    """

    def __init__(self, folder: str | os.PathLike[str], *, created: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder)
        self.created = None if created is None else Path(created)
        self._lock = filelock.FileLock(str(self.folder / LOCK_NAME), timeout=0)

    def __enter__(self) -> FolderLock:
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise FolderInUseError(
                f"{self.folder} is in use by another tta-bench run ({self.holder()}); wait for it to "
                "finish, or choose another --out folder"
            ) from None
        except OSError as error:
            raise folder_file_error(self.folder / LOCK_NAME, "cannot lock", error) from None
        try:
            write_atomic(
                self.folder / LOCK_PID_NAME,
                json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n",
            )
        except FolderFileError:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            (self.folder / LOCK_PID_NAME).unlink(missing_ok=True)
            if self.created is not None:
                self._remove_if_unused()
        finally:
            self._lock.release()

    def _remove_if_unused(self) -> None:
        if {path.name for path in self.folder.iterdir()} != {LOCK_NAME}:
            return
        (self.folder / LOCK_NAME).unlink()
        folder = self.folder
        try:
            while True:
                folder.rmdir()  # raises on a folder something else was put in: it is kept
                if folder == self.created:
                    return
                folder = folder.parent
        except OSError:
            return

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


def make_folder(folder: str | os.PathLike[str]) -> Path | None:
    """Create ``folder`` with its missing parents; the topmost folder created, None if it existed.
    Raises :class:`FolderFileError` when it cannot be created."""
    folder = Path(folder)
    created = None
    for path in reversed([folder, *folder.parents]):
        if path.is_dir():
            continue
        try:
            path.mkdir()
        except FileExistsError:  # made by another run at the same moment
            continue
        except OSError as error:
            raise folder_file_error(path, "cannot create the folder", error) from None
        created = created or path
    return created


def folder_file_error(path: str | os.PathLike[str], what: str, error: OSError) -> FolderFileError:
    """``"<path>: <what>: <the system's reason>"`` as a :class:`FolderFileError`."""
    return FolderFileError(f"{path}: {what}: {error.strerror or error}")


def _check(data: Any, validator: jsonschema.Validator, where: str) -> None:
    """Raise :class:`FolderFileError` at ``where`` when ``data`` does not match the validator's schema."""
    problem = best_match(validator.iter_errors(data))
    if problem is not None:
        at = "".join(f"[{part!r}]" for part in problem.absolute_path)
        raise FolderFileError(
            f"{where}: {f'value {at}: ' if at else ''}{problem.message}; this file was not "
            "written by tta-bench or was damaged: fix or delete it"
        )


def _read_bytes(path: Path) -> bytes | None:
    """The bytes of ``path``, None when there is no such file."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise folder_file_error(path, "cannot read", error) from None


def _parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise FolderFileError(f"{where}: not UTF-8 text; fix or delete it") from None
    except json.JSONDecodeError as error:
        raise FolderFileError(f"{where}, line {error.lineno}: not valid JSON ({error.msg}); fix or delete it") from None


def read_json_file(path: str | os.PathLike[str], schema: dict[str, Any]) -> Any:
    """The JSON document in ``path`` checked against ``schema``; None when there is no such file.
    Raises :class:`FolderFileError` naming the file (and line) it cannot read, parse or accept."""
    path = Path(path)
    data = _read_bytes(path)
    if data is None:
        return None
    document = _parse_json(data, str(path))
    _check(document, jsonschema.Draft202012Validator(schema), str(path))
    return document


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All complete rows of a ``results.jsonl``, each key once; a key stored more than once is logged
    (see :func:`read_results`)."""
    rows, duplicates = read_results(path)
    if duplicates:
        log.warning(
            "%s: %d result(s) stored more than once, each counted once: %s",
            path,
            len(duplicates),
            "; ".join(describe_key(row_key(row)) for row in duplicates),
        )
    return rows


def results_file(folder: str | os.PathLike[str]) -> Path:
    """The file holding a folder's rows: its ``results.jsonl``, or its ``results.jsonl.gz`` when only that
    archive is there."""
    folder = Path(folder)
    plain, archive = folder / RESULTS_NAME, folder / ARCHIVE_NAME
    return archive if archive.exists() and not plain.exists() else plain


def read_results(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of a ``results.jsonl`` (or of its gzip archive, a path ending in ``.gz``) with each key once
    (the first stored), and the later rows of a key stored before (duplicates, not counted again).

    A torn last line (a write cut by a kill) is ignored. A line anywhere else that is not a row
    (:data:`ROW_SCHEMA`) is a :class:`FolderFileError` naming the line: the file was edited or corrupted.
    """
    path = Path(path)
    data = _read_bytes(path)
    if data is None:
        return [], []
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise FolderFileError(f"{path}: not a complete gzip archive ({error}); fix or delete it") from None
    lines = data.split(b"\n")
    torn = lines.pop()  # text after the last newline: empty unless the last write was cut
    if torn.strip():
        log.warning("%s: ignoring an incomplete last line (an interrupted write)", path)
    rows = []
    validator = jsonschema.Draft202012Validator(ROW_SCHEMA)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = _parse_json(line, f"{path}, line {number}")
        _check(row, validator, f"{path}, line {number}")
        rows.append(row)
    unique: dict[RowKey, dict[str, Any]] = {}
    duplicates = []
    for row in rows:
        if row_key(row) in unique:
            duplicates.append(row)
        else:
            unique[row_key(row)] = row
    return list(unique.values()), duplicates


def describe_key(key: RowKey, *, with_method: bool | None = None) -> str:
    """``"tent/tbn single iid seed 0 fog-5"``: a row key for messages. The method is named when
    ``with_method`` says so; by default when it is not ``none`` (``"tbn single iid seed 0 fog-5"``)."""
    method, policy, setting, order, seed, corruption, severity = key
    if with_method is None:
        with_method = method != NO_METHOD
    learner = f"{method}/{policy}" if with_method else policy
    return f"{learner} {setting} {order} seed {seed} {corruption}-{severity}"


def read_config_json(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The folder's ``config.json`` as stored (checked against :data:`CONFIG_SCHEMA`), None if absent."""
    return read_json_file(Path(folder) / CONFIG_NAME, CONFIG_SCHEMA)


def read_config(folder: str | os.PathLike[str]) -> GridConfig:
    """The configuration a results folder was produced with."""
    stored = read_config_json(folder)
    if stored is None:
        raise FileNotFoundError(f"{Path(folder) / CONFIG_NAME} not found: {folder} is not a benchmark results folder")
    return GridConfig.from_json(stored)


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
        if results_file(folder).name == ARCHIVE_NAME:
            raise ConfigMismatchError(
                f"{folder} is archived ({ARCHIVE_NAME}): runs append to {RESULTS_NAME}; to resume, "
                f"decompress it first (gunzip {folder / ARCHIVE_NAME}), or choose another --out folder"
            )
        make_folder(folder)
        config_path = folder / CONFIG_NAME
        results_path = folder / RESULTS_NAME
        wanted = config.to_json()
        rows = read_rows(results_path)
        stored = read_config_json(folder)
        if rows:
            if stored is None:
                raise ConfigMismatchError(
                    f"{results_path} has results but no {CONFIG_NAME}: cannot tell which arguments made "
                    f"them; use another --out folder"
                )
            if stored != wanted:
                raise ConfigMismatchError(
                    f"{folder} holds results of different arguments; they are not mixed.\n"
                    f"{_describe_differences(stored, wanted)}\n"
                    f"Rerun with the same arguments to resume, or choose another --out folder "
                    f"(or delete {folder} to start over)."
                )
        else:
            write_atomic(config_path, json.dumps(wanted, indent=2) + "\n")
        _cut_torn_tail(results_path)
        return cls(folder, config, rows)

    def rows(self) -> list[dict[str, Any]]:
        """The stored rows, in the order they were appended."""
        return list(self._rows)

    def done(self, key: RowKey) -> bool:
        """Whether the row ``key`` is stored."""
        return key in self._done

    def append(self, rows: Iterable[dict[str, Any]]) -> int:
        """Append the rows not stored yet (one write, then flush and fsync); returns how many were new.
        A row is done once written: a failed write (:class:`FolderFileError`) marks none."""
        new: dict[RowKey, dict[str, Any]] = {}
        for row in rows:
            missing = [key for key in REQUIRED_KEYS if key not in row]
            if missing:
                raise ValueError(f"result row misses keys {missing}: {row}")
            key = row_key(row)
            if key not in self._done:
                new.setdefault(key, row)
        if not new:
            return 0
        text = "".join(json.dumps(row, sort_keys=False) + "\n" for row in new.values())
        try:
            with open(self.results_path, "a", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
        except OSError as error:
            raise folder_file_error(self.results_path, "cannot write", error) from None
        self._done.update(new)
        self._rows.extend(new.values())
        return len(new)


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` by ``text`` at once (a temporary file renamed over it); a failure leaves the old
    file and no temporary one, and is a :class:`FolderFileError` naming the file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise folder_file_error(path, "cannot write", error) from None


def _cut_torn_tail(path: Path) -> None:
    """Truncate ``path`` after its last newline (drops a partial line left by a killed writer)."""
    if not path.exists():
        return
    try:
        with open(path, "rb+") as file:
            data = file.read()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                file.truncate(end)
    except OSError as error:
        raise folder_file_error(path, "cannot cut its incomplete last line", error) from None
