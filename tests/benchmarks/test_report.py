"""Report tables and files from hand-made rows (expected numbers computed by hand)."""

from __future__ import annotations

import csv

import pytest

from tta_bench import report


def row(policy, corruption, error, *, seed=0, order="iid", severity=5):
    return {
        "policy": policy,
        "setting": "single",
        "order": order,
        "seed": seed,
        "corruption": corruption,
        "severity": severity,
        "n": 100,
        "errors": int(error),
        "error": float(error),
    }


ROWS = [
    row("source", "fog", 10),
    row("source", "snow", 20),  # seed 0: mean 15
    row("source", "fog", 30, seed=1),
    row("source", "snow", 40, seed=1),  # seed 1: mean 35
    row("tbn", "fog", 5),
    row("tbn", "snow", 6),
    row("tbn", "fog", 50, order="sorted"),
    row("tbn", "snow", 70, order="sorted"),
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


# --- methods: rows = methods, a table per (setting, order) ------------------------------------------------


def with_method(method, r):
    return {**r, "method": method}


METHOD_ROWS = [
    *[with_method("none", r) for r in ROWS],
    with_method("tent", row("source", "fog", 8)),
    with_method("tent", row("source", "snow", 12)),  # mean 10
    with_method("tent", row("tbn", "fog", 4)),
    with_method("tent", row("tbn", "snow", 5)),  # mean 4.5
    with_method("tent", row("tbn", "fog", 40, order="sorted")),
    with_method("tent", row("tbn", "snow", 44, order="sorted")),
]


def test_with_methods_the_summary_is_a_table_per_order_with_a_line_per_method():
    text = report.summary_table(METHOD_ROWS, policies=["source", "tbn"], methods=["none", "tent"])
    iid, sorted_ = text.split("**single, sorted**")
    assert iid.startswith("**single, iid**")
    assert cells(iid) == [["method", "source", "tbn"], ["none", "25.0 ± 14.1", "5.5"], ["tent", "10.0", "4.5"]]
    assert cells(sorted_) == [["method", "source", "tbn"], ["none", "", "60.0"], ["tent", "", "42.0"]]


def test_the_best_table_names_the_best_policy_under_each_method_and_of_all():
    text = report.best_table(METHOD_ROWS, policies=["source", "tbn"], methods=["none", "tent"])
    assert cells(text) == [
        ["setting", "order", "source", "best, none", "best, tent", "best of all"],
        # iid: source 25.0 (mean of seeds 15, 35), tbn 5.5; under tent source 10.0, tbn 4.5
        ["single", "iid", "25.0", "5.5 (tbn)", "4.5 (tbn)", "4.5 (tbn + tent)"],
        # sorted: source has no result, tbn 60.0 alone and 42.0 under tent
        ["single", "sorted", "", "60.0 (tbn)", "42.0 (tbn)", "42.0 (tbn + tent)"],
    ]


def test_a_compared_pair_gets_its_error_and_its_distance_to_the_best_of_all():
    text = report.best_table(
        METHOD_ROWS, policies=["source", "tbn"], methods=["none", "tent"], compare=["source+tent", "tbn"]
    )
    table = cells(text)
    assert table[0][-2:] == ["source + tent", "tbn"]
    # iid: best of all 4.5 (tbn + tent); source + tent 10.0 is 5.5 from it, tbn alone 5.5 is 1.0 from it
    assert table[1][-2:] == ["10.0 (+5.5)", "5.5 (+1.0)"]
    # sorted: no source + tent; tbn alone 60.0, 18.0 from tbn + tent's 42.0
    assert table[2][-2:] == ["", "60.0 (+18.0)"]


def test_a_pair_to_compare_without_results_is_refused_naming_those_there():
    with pytest.raises(ValueError, match=r"no results of 'tbn\+lame' to compare; the rows hold: source, source\+tent"):
        report.compared_pairs(METHOD_ROWS, ["tbn+lame"])


def test_the_best_table_leaves_out_incomplete_cells_and_breaks_ties_by_the_policy_order():
    rows = [
        with_method("none", row("source", "fog", 10)),
        with_method("none", row("source", "snow", 20)),  # 15
        with_method("none", row("tbn", "fog", 5)),
        with_method("none", row("tbn", "snow", 25)),  # 15: a tie, source is listed first
        with_method("lame", row("tbn", "fog", 1)),  # no snow: incomplete, never the best
        with_method("lame", row("source", "fog", 12)),
        with_method("lame", row("source", "snow", 16)),  # 14
    ]
    assert cells(report.best_table(rows, policies=["source", "tbn"], methods=["none", "lame"], config=None))[1] == [
        "single",
        "iid",
        "15.0",
        "15.0 (source)",
        "14.0 (source)",
        "14.0 (source + lame)",
    ]


def test_with_methods_the_domain_table_and_csv_name_the_method(tmp_path):
    table = cells(
        report.domain_table(
            METHOD_ROWS, policies=["source", "tbn"], methods=["tent", "none"], corruptions=["fog", "snow"]
        )
    )
    assert table[0] == ["method", "policy", "setting", "order", "fog", "snow", "mean"]
    assert table[1] == ["tent", "source", "single", "iid", "8.0", "12.0", "10.0"]
    assert [line[0] for line in table[1:]] == ["tent"] * 3 + ["none"] * 3
    paths = report.write_report(
        tmp_path, METHOD_ROWS, config={"policies": ["source", "tbn"], "methods": ["none", "tent"]}
    )
    with open(paths["csv"], newline="") as file:
        lines = list(csv.DictReader(file))
    assert [line["method"] for line in lines] == [r["method"] for r in METHOD_ROWS]
    assert "| tent     | 10.0" in paths["report"].read_text()


def test_rows_of_none_alone_keep_the_policy_tables_with_or_without_a_method_key():
    marked = [with_method("none", r) for r in ROWS]
    policies = ["source", "tbn"]
    assert report.summary_table(marked, policies=policies) == report.summary_table(ROWS, policies=policies)
    assert report.domain_table(marked) == report.domain_table(ROWS)
    assert cells(report.summary_table(marked))[0] == ["policy", "iid", "sorted"]


GRID = {
    "dataset": "fmnist-c",
    "model": "bundled",
    "policies": ["source", "tbn"],
    "settings": ["single"],
    "orders": ["iid"],
    "corruptions": ["fog", "snow"],
    "severities": [5],
    "seeds": [0, 1],
    "batch_size": 64,
    "n_examples": None,
}


def test_a_seed_short_of_a_domain_of_the_grid_is_left_out_of_the_mean_and_the_cell_says_so():
    """A running or interrupted grid: source has both domains at seed 0 (mean 15) but only fog at seed 1,
    so its mean is seed 0's alone, not (15 + 30) / 2 nor the mean of the three rows; tbn has no seed with
    both domains: the cell counts its results instead of averaging some of the corruptions."""
    rows = [
        row("source", "fog", 10),
        row("source", "snow", 20),
        row("source", "fog", 30, seed=1),
        row("tbn", "fog", 5, seed=1),
    ]
    table = cells(report.summary_table(rows, policies=["source", "tbn"], config=GRID))
    assert table[1:] == [["source", "15.0 (1 of 2 seeds)"], ["tbn", "(1 of 4 results)"]]
    lines = cells(report.domain_table(rows, policies=["source", "tbn"], config=GRID))
    assert [line[-1] for line in lines[1:]] == ["15.0 (1 of 2 seeds)", "(1 of 4 results)"]
    complete = [*rows, row("source", "snow", 40, seed=1)]
    assert cells(report.summary_table(complete, policies=["source"], config=GRID))[1] == ["source", "25.0 ± 14.1"]


def test_without_a_grid_a_seed_lacking_a_domain_its_setting_has_elsewhere_is_left_out():
    rows = [
        row("source", "fog", 10),
        row("source", "snow", 20),
        row("tbn", "fog", 5),
        row("tbn", "snow", 7),
        row("tbn", "fog", 50, seed=1),
    ]
    assert cells(report.summary_table(rows, policies=["source", "tbn"]))[1:] == [
        ["source", "15.0"],
        ["tbn", "6.0 (1 of 2 seeds)"],
    ]
