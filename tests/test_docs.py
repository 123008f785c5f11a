"""The documentation's sources: a page per policy and method, examples that run, citations that resolve.

The site itself is built by ``make docs`` (warnings as errors, every code cell executed), which ``make
test`` runs before the test suite.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import tta
from tests.test_repository_text import tracked_text_files

DOCS = Path(__file__).resolve().parents[1] / "docs"
ROOT = DOCS.parent
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts and "_generated" not in p.parts)


@pytest.mark.parametrize(("kind", "names"), [("policy", tta.list_policies()), ("method", tta.list_methods())])
def test_every_registered_policy_and_method_has_a_page_with_its_generated_options_table(kind, names):
    folder = DOCS / ("policies" if kind == "policy" else "methods")
    toctree = (folder / "index.md").read_text()
    for name in names:
        page = (folder / f"{name}.md").read_text()
        assert f"```{{tta-options}} {kind} {name}\n```" in page, name
        assert re.search(rf"^{name}$", toctree, flags=re.M), f"{name} is not in {folder / 'index.md'}'s toctree"


def test_code_examples_in_the_pages_are_executed_cells_not_static_python_blocks():
    static = [p.relative_to(DOCS) for p in PAGES if re.search(r"^```python", p.read_text(), flags=re.M)]
    assert not static, f"use {{code-cell}} (executed at build) instead of ```python in {static}"


def test_a_page_with_code_cells_is_declared_an_executed_notebook():
    for page in PAGES:
        text = page.read_text()
        if "```{code-cell}" in text:
            assert text.startswith("---\nfile_format: mystnb\n"), page.relative_to(DOCS)


SPEC_CITATION = re.compile(r"\bspec [MS][0-9]+[a-z]?\b|spec/(methods|streams|references)\.md")


def tracked_lines(suffixes: set[str], skip: str | None = None) -> Iterator[tuple[str, int, str]]:
    """``(file, line number, line)`` of every tracked file with one of ``suffixes`` (but those starting with
    ``skip``) that exists in the working tree."""
    for path in tracked_text_files():
        name = path.relative_to(ROOT).as_posix()
        if path.suffix not in suffixes or (skip and name.startswith(skip)) or not path.exists():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            yield name, number, line


def test_no_tracked_file_cites_the_unshipped_specification():
    found = [
        f"{name}:{number}: {line.strip()[:100]}"
        for name, number, line in tracked_lines({".py", ".md", ".toml", ".ipynb"}, skip="tests/test_docs")
        if SPEC_CITATION.search(line)
    ]
    assert not found, "citations of a specification that does not ship:\n" + "\n".join(found)


@pytest.mark.slow
@pytest.mark.parametrize("folder", sorted(p.parent.name for p in (DOCS / "results").glob("*/report.md")))
def test_a_committed_report_is_what_tta_bench_report_writes_from_the_committed_results(folder, tmp_path):
    from tta_bench.cli import main

    assert main(["report", str(DOCS / "results" / folder), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text() == (DOCS / "results" / folder / "report.md").read_text()


DOC_REFERENCE = re.compile(r":doc:`(?:[^`<]*<)?(/[\w/.-]+?)>?`|\bdocs/([\w/-]+)\.md\b")


def test_every_docs_page_a_tracked_file_refers_to_exists():
    missing = []
    for name, number, line in tracked_lines({".py", ".md", ".ipynb"}):
        for match in DOC_REFERENCE.finditer(line):
            page = (match.group(1) or "/" + match.group(2)).lstrip("/")
            if not (DOCS / f"{page}.md").exists() and not (DOCS / f"{page}.ipynb").exists():
                missing.append(f"{name}:{number}: {page}")
    assert not missing, "references to docs pages that do not exist:\n" + "\n".join(missing)
