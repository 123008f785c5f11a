"""The README's Python examples run as written (in a scratch folder with its own cache)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks under the README's ``## <section>`` heading, up to the next ``## ``."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"README has no section {section!r}"
    return re.findall(r"^```python\n(.*?)^```", match.group(1), flags=re.S | re.M)


@pytest.mark.parametrize("section", ["The API", "Methods"])
def test_readme_example_runs(section: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(section)
    assert blocks
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TTA_CACHE_DIR", str(tmp_path / "cache"))
    for block in blocks:
        exec(compile(block, f"README.md ({section})", "exec"), {"__name__": "readme"})
