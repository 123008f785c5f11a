"""``docs/tutorials/compare_policies.ipynb`` runs from top to bottom (at a small size), so it never rots."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import tta

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "tutorials"
NOTEBOOK = EXAMPLES / "compare_policies.ipynb"


def test_the_committed_notebook_has_no_outputs_and_matches_its_builder():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_compare_policies", EXAMPLES / "build_compare_policies.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    committed = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in committed.cells if cell.cell_type == "code")
    assert [c.source for c in committed.cells] == [c.source for c in builder.build().cells]


def test_the_notebook_executes_at_a_small_size(tmp_path, monkeypatch):
    monkeypatch.setenv("TTA_NB_N", "200")
    monkeypatch.setenv("TTA_NB_CORRUPTIONS", "brightness,contrast")
    monkeypatch.setenv("TTA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the kernel runs in tmp_path: put this checkout first, or it imports the installed package (another tree)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(EXAMPLES.parent), os.environ.get("PYTHONPATH")]))
    )
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # per cell: a hang fails, a slow shared machine (each cell builds its corrupted domains first) does not
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    text = "\n".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert f"{len(tta.list_policies())} policies, 2 corruptions, 200 images each" in text
    # the correlation section: a row per policy, then LAME over adabn and rbn; a column per order
    table = text[text.index("| policy ") :].split("\n\n")[0]
    names = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert names == [*tta.list_policies(), "lame/adabn", "lame/rbn"]
    # the methods section: a table per order, a row per method, a column per policy
    for order in ("iid", "dirichlet:0.1"):
        table = text[text.index(f"{order}: mean error (%) over 2 corruptions, 200 images each") :].split("\n\n")[0]
        rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ")]
        assert [c.strip() for c in rows[0]] == ["method", "tbn", "rbn", "unmix_tns"]
        assert [row[0].strip() for row in rows[1:]] == ["none", "tent", "rotta"]
    # the drift figure covers exactly the stateful policies
    final = [o for o in notebook.cells[-1].outputs if o.get("name") == "stdout"][-1]["text"]
    assert all(name in final for name in ("adabn", "momentum_decay", "rbn", "unmix_tns"))
    assert "'tbn'" not in final and "'source'" not in final
