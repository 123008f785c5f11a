"""The README is a landing page: short, its quickstart runs as written, its results table is the report's."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks under the README's ``## <section>`` heading, up to the next ``## ``."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"README has no section {section!r}"
    return re.findall(r"^```python\n(.*?)^```", match.group(1), flags=re.S | re.M)


def test_the_readme_is_a_landing_page_of_at_most_250_lines_and_20_kb():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert len(text.encode()) <= 20_000


def test_the_quickstart_is_the_only_python_example_and_imports_no_benchmark():
    text = README.read_text()
    assert len(re.findall(r"^```python", text, flags=re.M)) == 1
    (block,) = python_blocks("Quickstart")
    assert "tta_bench" not in block and "benchmarks" not in block


def test_the_quickstart_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (block,) = python_blocks("Quickstart")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(block, "README.md (Quickstart)", "exec"), namespace)
    assert type(namespace["deployable"].bn1).__name__ == "BatchNorm2d"  # type: ignore[attr-defined]


def test_every_local_link_of_the_readme_exists():
    for target in re.findall(r"\]\(([^)#]+)\)", README.read_text()):
        if not re.match(r"[a-z]+://", target):
            assert (REPO / target).exists(), target


def test_the_results_table_is_the_report_of_the_committed_results():
    spec = importlib.util.spec_from_file_location("update_readme", REPO / "docs" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = README.read_text()
    assert "<!-- results: quick -->" in text
    assert module.updated(text) == text, "run python docs/update_readme.py"
    assert "| rebalance" in text.split("<!-- results: quick -->")[1]
