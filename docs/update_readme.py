"""Write the README's results table: ``tta-bench report``'s summary of the committed results folder.

``python docs/update_readme.py`` replaces the lines between ``<!-- results: quick -->`` and
``<!-- /results -->`` in README.md by the summary table that ``tta-bench report docs/results/quick``
prints; ``--check`` only says whether the README is up to date (exit status 1 if not).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MARKERS = re.compile(r"(<!-- results: (?P<name>[\w-]+) -->\n)(.*?)(<!-- /results -->)", flags=re.S)


def summary(name: str) -> str:
    """The summary table of ``docs/results/<name>``, as ``tta-bench report`` writes it."""
    from tta_bench import report, results

    folder = REPO / "docs" / "results" / name
    rows, _ = results.read_results(results.results_file(folder))
    config = results.read_config_json(folder)
    rows = report.in_grid_order(rows, config)
    methods = config.get("methods") if config else None
    policies = config["policies"] if config else None
    return report.summary_table(rows, policies=policies, methods=methods, config=config)


def updated(text: str) -> str:
    """``text`` with every marked results table rewritten from its results folder."""
    return MARKERS.sub(lambda m: f"{m.group(1)}{summary(m.group('name'))}\n{m.group(4)}", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = parser.parse_args(argv)
    text = README.read_text()
    new = updated(text)
    if args.check:
        if new != text:
            print("README.md's results table differs from the report: run python docs/update_readme.py")
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
