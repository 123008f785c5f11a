"""``tta-bench`` end to end at a tiny size: results, resume after a kill, report, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import streams
from benchmarks import cli, grid
from benchmarks.models import load_bundled_model
from benchmarks.results import read_rows

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "--dataset", "fmnist-c", "--model", "bundled", "--policies", "source,tbn", "--setting", "single",
    "--order", "iid,sorted", "--corruptions", "brightness,contrast", "--severity", "5",
    "--n-examples", "200", "--batch-size", "50", "--seeds", "0", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir) -> Path:
    """One complete run of SMALL (shared by the tests that only read it)."""
    out = tmp_path_factory.mktemp("run") / "out"
    assert cli.main(["run", *SMALL, "--cache-dir", str(cache_dir), "--out", str(out)]) == 0
    return out


def grid_keys(args: list[str]) -> set[tuple]:
    """The rows the arguments ask for, enumerated by hand from the flag values."""
    value = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    return {
        (policy, "single", order, int(seed), corruption, 5)
        for policy in value["--policies"].split(",")
        for order in value["--order"].split(",")
        for seed in value["--seeds"].split(",")
        for corruption in value["--corruptions"].split(",")
    }


def keys_of(rows: list[dict]) -> list[tuple]:
    return [grid.row_key(row) for row in rows]


def test_run_writes_one_row_per_grid_cell_and_the_report(finished):
    rows = read_rows(finished / "results.jsonl")
    assert sorted(keys_of(rows)) == sorted(grid_keys(SMALL))
    for row in rows:
        assert row["n"] == 200
        assert 0 <= row["errors"] <= 200
        assert row["error"] == pytest.approx(100 * row["errors"] / 200, abs=1e-3)
    for name in ("report.md", "results.csv", "errors.png", "config.json"):
        assert (finished / name).stat().st_size > 0


def test_source_rows_match_the_unadapted_model_evaluated_by_hand(finished, cache_dir):
    # spec M1: `source` is the original model; its errors do not depend on the label order.
    model = load_bundled_model().eval()
    stream = streams.Stream(streams.fashion_mnist("test"), corruptions=["brightness"], severities=5,
                            order="iid", batch_size=50, n_examples=200, seed=0, cache_dir=cache_dir)
    with torch.no_grad():
        expected = sum(int((model(b.x).argmax(1) != b.y).sum()) for b in stream)
    rows = {grid.row_key(r): r for r in read_rows(finished / "results.jsonl")}
    for order in ("iid", "sorted"):
        assert rows[("source", "single", order, 0, "brightness", 5)]["errors"] == expected


def test_test_batch_statistics_suffer_from_class_sorted_streams(finished):
    # The signature finding of NOTE (references.md): batch statistics collapse on label-sorted streams
    # (at 200 images in batches of 50 a sorted batch holds two or three classes).
    rows = {grid.row_key(r): r for r in read_rows(finished / "results.jsonl")}
    for corruption in ("brightness", "contrast"):
        iid = rows[("tbn", "single", "iid", 0, corruption, 5)]["error"]
        sorted_ = rows[("tbn", "single", "sorted", 0, corruption, 5)]["error"]
        assert sorted_ > iid + 5


def test_rerun_with_the_same_arguments_skips_everything(finished, cache_dir, capsys):
    before = (finished / "results.jsonl").read_bytes()
    assert cli.main(["run", *SMALL, "--cache-dir", str(cache_dir), "--out", str(finished)]) == 0
    assert (finished / "results.jsonl").read_bytes() == before
    assert "8 already" in capsys.readouterr().out


def test_report_rebuilds_the_same_tables_from_results(finished, capsys):
    report = (finished / "report.md").read_text()
    for name in ("report.md", "results.csv", "errors.png"):
        (finished / name).unlink()
    assert cli.main(["report", str(finished)]) == 0
    assert (finished / "report.md").read_text() == report
    assert (finished / "errors.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "| source" in printed and "| tbn" in printed


def test_results_of_other_arguments_are_refused_not_mixed(finished, cache_dir, capsys):
    before = (finished / "results.jsonl").read_bytes()
    changed = list(SMALL)
    changed[changed.index("--batch-size") + 1] = "25"
    assert cli.main(["run", *changed, "--cache-dir", str(cache_dir), "--out", str(finished)]) == 2
    err = capsys.readouterr().err
    assert "different arguments" in err and "batch_size" in err
    assert (finished / "results.jsonl").read_bytes() == before


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--policies", "source,no_such_policy"), ("--corruptions", "brightness,no_such_corruption"),
     ("--dataset", "no_such_dataset"), ("--order", "iid,no_such_order"), ("--setting", "no_such_setting")],
)
def test_unknown_names_are_refused_before_anything_is_written(tmp_path, capsys, flag, value):
    args = list(SMALL)
    args[args.index(flag) + 1] = value
    assert cli.main(["run", *args, "--out", str(tmp_path / "out")]) == 2
    assert value.split(",")[-1] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_killed_run_resumes_without_losing_or_repeating_a_row(tmp_path, cache_dir):
    args = [*SMALL, "--cache-dir", str(cache_dir), "--out", str(tmp_path / "out")]
    i = args.index("--order")
    args[i + 1] = "iid,sorted,dirichlet:1.0"  # 12 results in 6 episodes
    results = tmp_path / "out" / "results.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "benchmarks.cli", "run", *args], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_for_lines(process: subprocess.Popen, count: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if results.exists() and results.read_bytes().count(b"\n") >= count:
                return
            time.sleep(0.01)
        raise AssertionError(f"no {count} results before the process ended: {process.communicate()}")

    # 1. killed outright (no chance to clean up) after the first episode is saved
    process = start()
    wait_for_lines(process, 1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = results.read_bytes()
    kept = len(read_rows(results))
    assert 1 <= kept < 12, "the run finished before it could be killed: enlarge the grid"

    # 2. interrupted like Ctrl-C after at least one more episode
    process = start()
    wait_for_lines(process, kept + 1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    if process.returncode != 0:  # it may have finished just before the signal arrived
        assert process.returncode == 130 and "rerun the same command to resume" in err
    assert results.read_bytes().startswith(first[: first.rfind(b"\n") + 1])

    # 3. the rerun completes the grid: every row exactly once, earlier rows untouched
    assert cli.main(["run", *args]) == 0
    rows = read_rows(results)
    assert len(rows) == len(set(keys_of(rows))) == 12
    assert set(keys_of(rows)) == grid_keys(args)
    assert results.read_bytes().startswith(first[: first.rfind(b"\n") + 1])
    for line in results.read_text().splitlines():
        json.loads(line)
