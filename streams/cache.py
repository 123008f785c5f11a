"""On-disk cache of corrupted domains: one ``.npy`` file per domain, read memory-mapped.

A domain file is named by a hash of everything that determines its content (source fingerprint,
corruption, severity, table, corruption seed, number of examples, corruption-engine version), so a
changed input never reads a stale file. Beside it, ``<key>.json`` records its shape, dtype, size in
bytes and CRC-32; a file is checked against it each time it is opened, and one that is truncated,
damaged in place or has no record is logged as a warning naming it and rebuilt (CRC-32 catches
accidental damage, not tampering; checking costs little beside reading the file).

Both files are written to temporary names (``.<key>.<pid>@<host>.<token>.npy.tmp``) and renamed into
place, the record first, so an interrupted run never leaves a half-written domain and concurrent
processes building the same domain end with one complete file. Temporary files whose writer is gone
(its process has ended on this host, or the file is older than :data:`STALE_TMP_AGE` seconds) are
removed before each write. Files are created with mode ``0o666`` minus the umask, so a shared cache
directory is readable by whom the umask allows. The location is ``cache_dir`` if given, else
``$TTA_CACHE_DIR``, else ``~/.cache/tta``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import socket
import stat
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["STALE_TMP_AGE", "DomainCache", "cache_key", "default_cache_dir"]

log = logging.getLogger(__name__)

STALE_TMP_AGE = 24 * 3600
"""Seconds after which a temporary file is removed even if its writer's liveness cannot be checked
(another host, or a name without a process id)."""
_FORMAT = 1
_READ_CHUNK = 1 << 22
RECORD_LIMIT = 1 << 16
"""Bytes a checksum record may hold (a record is under 200); a larger or special file is refused."""
_TMP_NAME = re.compile(r"^\.(?P<key>[^.]+)\.(?P<pid>\d+)@(?P<host>.+)\.[0-9a-f]{16}\.(npy|json)\.tmp$")


def default_cache_dir() -> Path:
    """``$TTA_CACHE_DIR`` if set, else ``~/.cache/tta``."""
    env = os.environ.get("TTA_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tta"


def cache_key(**fields: object) -> str:
    """A stable hex digest of ``fields`` (JSON with sorted keys; values must be JSON-serializable)."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def file_checksum(path: Path) -> tuple[int, int]:
    """(size in bytes, CRC-32) of the file at ``path``, read in 4 MB chunks."""
    crc, size = 0, 0
    buffer = bytearray(_READ_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        while n := f.readinto(buffer):
            crc = zlib.crc32(view[:n], crc)
            size += n
    return size, crc


def read_record(path: Path, limit: int = RECORD_LIMIT) -> str:
    """The text of the small regular file at ``path``, opened once and checked on the open file: a
    directory, device, pipe or socket (also behind a symbolic link) or a file over ``limit`` bytes is an
    ``OSError``, so a record replaced by a link to ``/dev/zero`` or a FIFO is never read without bound."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
        if info.st_size > limit:
            raise OSError(f"{path} holds {info.st_size} bytes, more than a record's {limit}")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{path} holds more than a record's {limit} bytes")
    return data.decode()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (True when it cannot be told)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would send CTRL_C_EVENT on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


class DomainCache:
    """Corrupted domains as uint8 ``.npy`` arrays under ``root/domains/``, each with a checksum record."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = (Path(root).expanduser() if root is not None else default_cache_dir()) / "domains"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def record_path(self, key: str) -> Path:
        """The JSON record (shape, dtype, size, CRC-32) that ``path(key)`` is checked against."""
        return self.root / f"{key}.json"

    def load(self, key: str) -> np.ndarray | None:
        """The cached array for ``key`` (read-only, memory-mapped), or None on a miss. A file that fails
        its check is a miss too, with a warning naming it (the caller rebuilds it)."""
        path = self.path(key)
        if not path.is_file():
            return None
        problem = self._problem(key)
        if problem is None:
            try:
                return np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as error:
                problem = f"is damaged (numpy cannot read it: {error})"
        log.warning("cache file %s %s; rebuilding it", path, problem)
        return None

    def _problem(self, key: str) -> str | None:
        """Why ``path(key)`` does not match its record (a phrase: "is damaged (...)"), or None if it does."""
        record_path = self.record_path(key)
        try:
            record = json.loads(read_record(record_path))
            expected_size, expected_crc = int(record["bytes"]), int(record["crc32"])
            if record.get("format") != _FORMAT:
                return f"cannot be verified (its record {record_path} has format {record.get('format')!r})"
        except FileNotFoundError:
            return (
                f"cannot be verified (no checksum record {record_path}: written before records were "
                "kept, or the record was deleted)"
            )
        except (OSError, ValueError, KeyError, TypeError) as error:  # UnicodeDecodeError is a ValueError
            return f"cannot be verified (unreadable checksum record {record_path}: {error})"
        path = self.path(key)
        size = path.stat().st_size
        if size != expected_size:
            return f"is damaged (truncated or extended: {size} bytes, its record says {expected_size})"
        size, crc = file_checksum(path)
        if size != expected_size or crc != expected_crc:
            return f"is damaged (CRC-32 {crc:08x}, its record says {expected_crc:08x})"
        return None

    def _temporary(self, key: str, suffix: str) -> Path:
        """A new empty file for ``key``, named after this process, created with mode 0o666 & ~umask."""
        path = self.root / f".{key}.{os.getpid()}@{_host()}.{secrets.token_hex(8)}{suffix}.tmp"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        return path

    def remove_stale_temporaries(self) -> list[Path]:
        """Remove temporary files left by writers that are gone; return them. A file is stale if its name
        carries a process id of this host that no longer exists, or it is older than
        :data:`STALE_TMP_AGE`; a live writer's file is never removed."""
        removed = []
        host, now = _host(), time.time()
        for path in self.root.glob(".*.tmp"):
            match = _TMP_NAME.match(path.name)
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:  # its writer renamed or removed it meanwhile
                continue
            dead = match is not None and match["host"] == host and not _pid_alive(int(match["pid"]))
            if not (dead or age > STALE_TMP_AGE):
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as error:  # e.g. another user's file in a shared directory
                log.debug("cannot remove stale temporary file %s: %s", path, error)
                continue
            log.info("removed stale temporary file %s (%s)", path, "writer gone" if dead else f"{age:.0f} s old")
            removed.append(path)
        return removed

    def store(self, key: str, shape: tuple[int, ...], fill: Callable[[np.ndarray], None]) -> np.ndarray:
        """Let ``fill`` write a uint8 array of ``shape`` into a fresh memory-mapped temporary file, record
        its checksum, rename both into place atomically and return the array memory-mapped read-only."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.remove_stale_temporaries()
        temporaries = [self._temporary(key, ".npy")]
        try:
            out = np.lib.format.open_memmap(temporaries[0], mode="w+", dtype=np.uint8, shape=tuple(shape))
            fill(out)
            out.flush()
            del out
            size, crc = file_checksum(temporaries[0])
            record = {"format": _FORMAT, "shape": list(shape), "dtype": "uint8", "bytes": size, "crc32": crc}
            temporaries.append(self._temporary(key, ".json"))
            temporaries[1].write_text(json.dumps(record) + "\n")
            # the record first: a reader that sees the new array always sees its record
            os.replace(temporaries[1], self.record_path(key))
            os.replace(temporaries[0], self.path(key))
        except BaseException:
            for path in temporaries:
                path.unlink(missing_ok=True)
            raise
        log.info("cached domain %s", self.path(key))
        return np.load(self.path(key), mmap_mode="r", allow_pickle=False)

    def get_or_create(self, key: str, shape: tuple[int, ...], fill: Callable[[np.ndarray], None]) -> np.ndarray:
        """:meth:`load`, or on a miss (or a damaged file) :meth:`store`; checks the cached array has the
        expected shape."""
        array = self.load(key)
        if array is None:
            array = self.store(key, shape, fill)
        if array.shape != tuple(shape) or array.dtype != np.uint8:
            raise RuntimeError(
                f"cache file {self.path(key)} holds {array.dtype} {array.shape}, expected uint8 "
                f"{tuple(shape)}; delete it and run again"
            )
        return array
