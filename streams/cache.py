"""On-disk cache of corrupted domains (spec S5): one ``.npy`` file per domain, read memory-mapped.

A domain file is named by a hash of everything that determines its content (source fingerprint,
corruption, severity, table, corruption seed, number of examples, corruption-engine version), so a
changed input never reads a stale file. Files are written to a temporary name and renamed into place,
so an interrupted run or two processes writing the same domain never leave a half-written file.
The location is ``cache_dir`` if given, else ``$TTA_CACHE_DIR``, else ``~/.cache/tta``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["DomainCache", "cache_key", "default_cache_dir"]

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$TTA_CACHE_DIR`` if set, else ``~/.cache/tta``."""
    env = os.environ.get("TTA_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tta"


def cache_key(**fields: object) -> str:
    """A stable hex digest of ``fields`` (JSON with sorted keys; values must be JSON-serializable)."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class DomainCache:
    """Corrupted domains as uint8 ``.npy`` arrays under ``root/domains/``."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = (Path(root).expanduser() if root is not None else default_cache_dir()) / "domains"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def load(self, key: str) -> np.ndarray | None:
        """The cached array for ``key`` (read-only, memory-mapped), or None on a miss."""
        path = self.path(key)
        return np.load(path, mmap_mode="r") if path.is_file() else None

    def store(self, key: str, shape: tuple[int, ...], fill: Callable[[np.ndarray], None]) -> np.ndarray:
        """Let ``fill`` write a uint8 array of ``shape`` into a fresh memory-mapped temporary file, rename
        it into place atomically and return it memory-mapped read-only."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=f".{key}.", suffix=".npy.tmp")
        os.close(fd)
        try:
            out = np.lib.format.open_memmap(tmp_name, mode="w+", dtype=np.uint8, shape=tuple(shape))
            fill(out)
            out.flush()
            del out
            os.replace(tmp_name, self.path(key))
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        log.info("cached domain %s", self.path(key))
        return np.load(self.path(key), mmap_mode="r")

    def get_or_create(
        self, key: str, shape: tuple[int, ...], fill: Callable[[np.ndarray], None]
    ) -> np.ndarray:
        """:meth:`load`, or on a miss :meth:`store`; checks the cached array has the expected shape."""
        array = self.load(key)
        if array is None:
            array = self.store(key, shape, fill)
        if array.shape != tuple(shape) or array.dtype != np.uint8:
            raise RuntimeError(
                f"cache file {self.path(key)} holds {array.dtype} {array.shape}, expected uint8 "
                f"{tuple(shape)}; delete it and run again"
            )
        return array
