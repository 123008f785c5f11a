"""The repository speaks to a reader outside the team: no tracked file refers to work-log entries (a stop
or an issue by number), which nobody outside can look up."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STOP, ISSUE = "st" + "op", "iss" + "ue"
WORK_LOG = re.compile(r"\b(this|last|next) stop\b|\bstops? [0-9]+\b|\bissue #?[0-9]+\b", re.IGNORECASE)


def tracked_text_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    return [ROOT / name for name in listed.decode().split("\0") if name]


def test_no_tracked_file_refers_to_a_stop_or_an_issue_by_number() -> None:
    found = []
    for path in tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue  # binary data (weights, images) or a file deleted in the working tree
        for number, line in enumerate(text.splitlines(), 1):
            if WORK_LOG.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not found, "work-log references:\n" + "\n".join(found)


# built from parts, so that this file itself holds no reference for the first test to find
@pytest.mark.parametrize(
    "text", [f"since {STOP} 22", f"see {ISSUE} 12", f"as in this {STOP}", f"{ISSUE.title()} #7", f"{STOP}s 3"]
)
def test_the_pattern_finds_work_log_references(text: str) -> None:
    assert WORK_LOG.search(text)


@pytest.mark.parametrize("text", ["a non-stop stream", "the issue with batch 1", "stop the run", "tissue 12"])
def test_the_pattern_leaves_ordinary_words_alone(text: str) -> None:
    assert not WORK_LOG.search(text)
