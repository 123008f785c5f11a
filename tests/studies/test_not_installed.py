"""The studies stay in the repository: the package's wheel does not carry them."""

from __future__ import annotations

from pathlib import Path

import pytest
from setuptools import find_packages

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_packages_found_for_the_wheel_hold_the_benchmark_but_no_study():
    tomllib = pytest.importorskip("tomllib")
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    found = find_packages(str(REPO), include=include)
    assert {"tta", "streams", "benchmarks"} <= set(found)
    assert not [name for name in found if name.startswith("studies") or "faithfulness" in name]
