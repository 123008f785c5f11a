"""Sphinx directives of the tta docs: tables generated from the code, never typed by hand.

- ``{tta-options} policy rbn`` (or ``method tent``): the options a policy or method declares, with their
  type, range or choices and default (:func:`tta.options.declared_options`), and the description its
  docstring's ``Args:`` section gives; an option the docstring leaves undescribed is a build warning.
- the results pages: at every build, ``tta-bench report`` runs on each committed results folder
  (``docs/results/<name>/``: its ``results.jsonl`` or ``results.jsonl.gz``, ``config.json`` and
  ``meta.json``) and writes into ``docs/_generated/results/<name>/``, which the page includes (with the
  pairs ``tta_results_compare`` names for it compared with the best of all).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging

LOG = logging.getLogger(__name__)


def docstring_args(cls: type) -> dict[str, str]:
    """The ``Args:`` entries of a class's docstring (Google style), joined to one line each."""
    doc = inspect.getdoc(cls) or ""
    match = re.search(r"^Args:\n((?:[ \t]+.*\n?|\n)+)", doc, flags=re.M)
    if not match:
        return {}
    entries: dict[str, str] = {}
    current = None
    for line in match.group(1).splitlines():
        head = re.match(r"^ {4}(\w+)(?: \(.*?\))?: ?(.*)$", line)
        if head:
            current = head.group(1)
            entries[current] = head.group(2).strip()
        elif current and line.strip():
            entries[current] += " " + line.strip()
    return entries


def _range_text(option) -> str:
    if option.choice is not None:
        return ", ".join(f"``{value}``" for value in option.choice.values)
    if option.range is not None:
        return f"{option.range}"
    return "any" if option.kind is not bool else "``True``, ``False``"


class OptionsTable(Directive):
    """The declared options of one registered policy or method, as a table."""

    required_arguments = 2

    def run(self) -> list[nodes.Node]:
        import tta.registry
        from tta.options import declared_options

        kind, name = self.arguments
        if kind not in ("policy", "method"):
            raise self.error(f"tta-options: the first argument is policy or method, not {kind!r}")
        cls = tta.registry.get_policy(name) if kind == "policy" else tta.registry.get_method(name)
        options = declared_options(cls.__init__)
        if not options:
            paragraph = nodes.paragraph(text=f"{name} takes no options.")
            return [paragraph]
        described = docstring_args(cls)
        rows = []
        for option_name, option in options.items():
            text = described.get(option_name)
            if not text:
                LOG.warning(f"{cls.__module__}.{cls.__qualname__}: option {option_name!r} has no Args: entry")
                text = ""
            kind_text = option.kind.__name__ + (" or None" if option.optional else "")
            rows.append((f"``{option_name}``", kind_text, _range_text(option), f"``{option.default!r}``", text))
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 14 10 16 10 50", ""]
        lines += ["   * - option", "     - type", "     - accepts", "     - default", "     - meaning"]
        for row in rows:
            lines.append(f"   * - {row[0]}")
            lines += [f"     - {cell}" for cell in row[1:]]
        container = nodes.container()
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return container.children


def write_reports(app: Sphinx) -> None:
    """Run ``tta-bench report`` on every committed results folder (``docs/results/<name>/results.jsonl``, or
    its archive ``results.jsonl.gz``), writing into ``docs/_generated/results/<name>/``, which the results
    pages include. ``tta_results_compare`` (in ``conf.py``) maps a folder's name to the pairs its report
    compares with the best of all (``tta-bench report --compare``)."""
    from tta_bench.cli import main

    source = Path(app.srcdir)
    compare: dict[str, list[str]] = app.config.tta_results_compare
    for folder in sorted({path.parent for path in (source / "results").glob("*/results.jsonl*")}):
        out = source / "_generated" / "results" / folder.name
        pairs = [arg for pair in compare.get(folder.name, []) for arg in ("--compare", pair)]
        with contextlib.redirect_stdout(io.StringIO()):  # the tables it prints are in the files it writes
            status = main(["report", str(folder), "--out", str(out), *pairs])
        if status != 0:
            raise RuntimeError(f"tta-bench report {folder} failed")


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("tta-options", OptionsTable)
    app.add_config_value("tta_results_compare", {}, "env")
    app.connect("builder-inited", write_reports)
    return {"parallel_read_safe": True, "version": "1"}
