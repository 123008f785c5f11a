"""Sphinx configuration of the tta documentation (``make docs``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

import tta  # noqa: E402

project = "tta"
author = "tta developers"
copyright = "tta developers"
version = release = tta.__version__

extensions = [
    "myst_nb",  # Markdown pages; pages and notebooks with code cells are executed at every build
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinxarg.ext",
    "sphinx_copybutton",
    "tta_docs",  # options tables from the declared options, results pages from results files
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = [
    "_build",
    "_generated/**/*.md",
    "results/*/*.md",
    "Thumbs.db",
    ".DS_Store",
    "**.ipynb_checkpoints",
    "README.md",
]
# the pairs a results page compares with the best of all in each cell (tta-bench report --compare)
tta_results_compare = {
    name: ["rebalance+prior_refine", "rebalance+lame"]
    for name in ("attribution-b64", "attribution-gradual-b64", "attribution-b16", "attribution-gradual-b16")
}
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# every code cell runs at every build; an error in one fails the build
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_timeout = 1800  # per cell: a loaded CI machine runs the tutorials several times slower
nb_merge_streams = True
# TTA_DOCS_QUICK=1 leaves the tutorials unexecuted (a faster build while writing pages; CI runs them all)
nb_execution_excludepatterns = ["tutorials/*"] if os.environ.get("TTA_DOCS_QUICK") else []

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_class_signature = "separated"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False

html_theme = "furo"
html_title = f"tta {version}"
html_static_path: list[str] = []
