"""Report tables and files from hand-made rows (expected numbers computed by hand)."""

from __future__ import annotations

import csv

import pytest

from benchmarks import report


def row(policy, corruption, error, *, seed=0, order="iid", severity=5):
    return {"policy": policy, "setting": "single", "order": order, "seed": seed, "corruption": corruption,
            "severity": severity, "n": 100, "errors": int(error), "error": float(error)}


ROWS = [
    row("source", "fog", 10), row("source", "snow", 20),   # seed 0: mean 15
    row("source", "fog", 30, seed=1), row("source", "snow", 40, seed=1),  # seed 1: mean 35
    row("tbn", "fog", 5), row("tbn", "snow", 6),
    row("tbn", "fog", 50, order="sorted"), row("tbn", "snow", 70, order="sorted"),
]


def cells(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[:1] + lines[2:]]


def test_summary_is_the_unweighted_mean_over_domains_then_seeds():
    table = cells(report.summary_table(ROWS, policies=["source", "tbn"]))
    assert table[0] == ["policy", "iid", "sorted"]
    # source: per-seed means 15 and 35 -> 25.0; sample std of (15, 35) = 14.142...
    assert table[1] == ["source", "25.0 ± 14.1", ""]
    assert table[2] == ["tbn", "5.5", "60.0"]


def test_domain_table_averages_seeds_per_domain_in_the_given_corruption_order():
    table = cells(report.domain_table(ROWS, policies=["source", "tbn"], corruptions=["snow", "fog"]))
    assert table[0] == ["policy", "setting", "order", "snow", "fog", "mean"]
    assert table[1] == ["source", "single", "iid", "30.0", "20.0", "25.0"]
    assert table[2] == ["tbn", "single", "iid", "6.0", "5.0", "5.5"]
    assert table[3] == ["tbn", "single", "sorted", "70.0", "50.0", "60.0"]


def test_several_severities_get_one_column_each():
    rows = [row("tbn", "fog", 10, severity=3), row("tbn", "fog", 30, severity=5)]
    assert cells(report.domain_table(rows))[0] == ["policy", "setting", "order", "fog-3", "fog-5", "mean"]


def test_write_report_writes_markdown_csv_and_a_png(tmp_path):
    paths = report.write_report(tmp_path, ROWS, config={"dataset": "fmnist-c", "policies": ["tbn", "source"]})
    text = paths["report"].read_text()
    assert "| tbn " in text and "25.0 ± 14.1" in text
    assert text.index("| tbn ") < text.index("| source ")  # the config's policy order
    with open(paths["csv"], newline="") as file:
        lines = list(csv.DictReader(file))
    assert len(lines) == len(ROWS)
    assert [float(line["error"]) for line in lines] == [r["error"] for r in ROWS]
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_empty_report_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no result rows"):
        report.write_report(tmp_path, [])
