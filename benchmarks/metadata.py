"""What makes a results folder reproducible beyond its arguments: versions, commit, device, threads, dates.

Stored in ``meta.json`` next to ``config.json``: the unadapted model's clean error (computed once per
folder) and one entry per ``tta-bench run`` invocation. None of it is part of the folder's identity
(:mod:`tta_bench.results`): a resumed run on another day, commit or machine appends its own entry.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

import tta
from tta_bench import results

META_NAME = "meta.json"
META_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"runs": {"type": "array", "items": {"type": "object"}}, "clean_error": {"type": "object"}},
}
"""What ``meta.json`` holds (the parts a run reads back)."""

_REPO = Path(__file__).resolve().parent.parent


def git_commit(repo: Path = _REPO) -> str:
    """The commit of the checkout this code runs from (``<hash>-dirty`` with local changes), or
    ``"unknown"`` outside a git checkout of the toolkit (e.g. an installed wheel)."""
    try:
        top = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        if Path(top).resolve() != repo:  # e.g. a virtual environment inside some other checkout
            return "unknown"
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def environment(device: torch.device | str) -> dict[str, Any]:
    """The versions, commit, device and thread count of this process."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "tta_version": tta.__version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": f"{device} ({name})" if name else str(device),
        "threads": torch.get_num_threads(),
    }


def utc_now() -> str:
    """The current time, ISO 8601 in UTC to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_meta(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The folder's ``meta.json`` (``{}`` when there is none); a damaged one is a
    :class:`tta_bench.results.FolderFileError` naming it."""
    meta = results.read_json_file(Path(folder) / META_NAME, META_SCHEMA)
    return {} if meta is None else meta


def write_meta(folder: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """Replace the folder's ``meta.json`` atomically."""
    results.write_atomic(Path(folder) / META_NAME, json.dumps(meta, indent=2) + "\n")
