"""``tta-bench`` end to end at a tiny size: results, resume after a kill, report, refusals."""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import tta
import tta_streams
from tta_bench import cli, grid
from tta_bench.models import load_bundled_model
from tta_bench.results import read_rows

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
        (method, policy, "single", order, int(seed), corruption, 5)
        for method in value.get("--methods", "none").split(",")
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
    # docs/policies/source.md: `source` is the original model; its errors do not depend on the label order.
    model = load_bundled_model().eval()
    stream = tta_streams.Stream(
        tta_streams.fashion_mnist("test"),
        corruptions=["brightness"],
        severities=5,
        order="iid",
        batch_size=50,
        n_examples=200,
        seed=0,
        cache_dir=cache_dir,
    )
    with torch.no_grad():
        expected = sum(int((model(b.x).argmax(1) != b.y).sum()) for b in stream)
    rows = {grid.row_key(r): r for r in read_rows(finished / "results.jsonl")}
    for order in ("iid", "sorted"):
        assert rows[("none", "source", "single", order, 0, "brightness", 5)]["errors"] == expected


def test_test_batch_statistics_suffer_from_class_sorted_streams(finished):
    # The signature finding of NOTE (references.md): batch statistics collapse on label-sorted streams
    # (at 200 images in batches of 50 a sorted batch holds two or three classes).
    rows = {grid.row_key(r): r for r in read_rows(finished / "results.jsonl")}
    for corruption in ("brightness", "contrast"):
        iid = rows[("none", "tbn", "single", "iid", 0, corruption, 5)]["error"]
        sorted_ = rows[("none", "tbn", "single", "sorted", 0, corruption, 5)]["error"]
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


def test_report_into_another_folder_writes_the_same_report_there_and_leaves_the_results_folder(finished, tmp_path):
    before = {path.name: path.read_bytes() for path in finished.iterdir() if path.is_file()}
    out = tmp_path / "generated" / "report"
    assert cli.main(["report", str(finished), "--out", str(out)]) == 0
    assert (out / "report.md").read_text() == (finished / "report.md").read_text()
    assert sorted(path.name for path in out.iterdir()) == ["errors.png", "report.md", "results.csv"]
    assert {path.name: path.read_bytes() for path in finished.iterdir() if path.is_file()} == before


def test_report_compares_a_named_pair_and_refuses_one_without_results_before_writing(finished, tmp_path, capsys):
    out = tmp_path / "compared"
    assert cli.main(["report", str(finished), "--out", str(out), "--compare", "tbn"]) == 0
    text = (out / "report.md").read_text()
    best = text[text.index("## The best policy under each method") : text.index("## Error (%) per domain")]
    assert "| tbn " in best.splitlines()[2]  # the header of the table names the pair
    capsys.readouterr()
    refused = tmp_path / "refused"
    assert cli.main(["report", str(finished), "--out", str(refused), "--compare", "tbn+lame"]) == 2
    assert "no results of 'tbn+lame' to compare" in capsys.readouterr().err
    assert not refused.exists()


def test_an_archived_folder_reports_the_same_and_refuses_to_be_resumed(finished, cache_dir, tmp_path, capsys):
    archived = tmp_path / "archived"
    archived.mkdir()
    for name in ("config.json", "meta.json"):
        (archived / name).write_bytes((finished / name).read_bytes())
    (archived / "results.jsonl.gz").write_bytes(gzip.compress((finished / "results.jsonl").read_bytes()))
    assert cli.main(["report", str(archived)]) == 0
    assert (archived / "report.md").read_text() == (finished / "report.md").read_text()
    capsys.readouterr()
    assert cli.main(["run", *SMALL, "--cache-dir", str(cache_dir), "--out", str(archived)]) == 2
    assert "archived (results.jsonl.gz)" in capsys.readouterr().err
    assert not (archived / "results.jsonl").exists()


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
    [
        ("--policies", "source,no_such_policy"),
        ("--corruptions", "brightness,no_such_corruption"),
        ("--dataset", "no_such_dataset"),
        ("--order", "iid,no_such_order"),
        ("--setting", "no_such_setting"),
    ],
)
def test_unknown_names_are_refused_before_anything_is_written(tmp_path, capsys, flag, value):
    args = list(SMALL)
    args[args.index(flag) + 1] = value
    assert cli.main(["run", *args, "--out", str(tmp_path / "out")]) == 2
    assert value.split(",")[-1] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_killed_run_resumes_without_losing_or_repeating_a_row(tmp_path, cache_dir):
    args = [*SMALL, "--cache-dir", str(cache_dir), "--out", str(tmp_path / "out")]
    i = args.index("--order")
    args[i + 1] = "iid,sorted,dirichlet:1.0"  # 12 results in 6 episodes
    results = tmp_path / "out" / "results.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "tta_bench.cli", "run", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

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


# --- model files: nothing in a pickle runs without --trust-pickle --------------------------------------


class _WritesMarker:
    """Unpickling this object creates ``marker``: stands for any code a pickle can run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_run_on_a_malicious_model_file_runs_none_of_its_code(tmp_path, capsys):
    marker = tmp_path / "marker"
    torch.save(_WritesMarker(str(marker)), tmp_path / "evil.pt")
    for extra in ([], ["--arch", "bundled"]):
        args = [*SMALL, "--model", str(tmp_path / "evil.pt"), *extra, "--out", str(tmp_path / "out")]
        assert cli.main(["run", *args]) == 2
        assert not marker.exists()
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "--trust-pickle" in err and "state_dict" in err
        assert not (tmp_path / "out").exists()


def test_run_on_a_state_dict_with_arch_gives_the_bundled_models_rows(tmp_path, finished, cache_dir):
    torch.save(load_bundled_model().state_dict(), tmp_path / "weights.pt")
    args = [
        *SMALL,
        "--model",
        str(tmp_path / "weights.pt"),
        "--arch",
        "bundled",
        "--policies",
        "source",
        "--order",
        "iid",
        "--cache-dir",
        str(cache_dir),
        "--out",
        str(tmp_path / "out"),
    ]
    assert cli.main(["run", *args]) == 0
    expected = {
        grid.row_key(r): r["errors"]
        for r in read_rows(finished / "results.jsonl")
        if r["policy"] == "source" and r["order"] == "iid"
    }
    got = {grid.row_key(r): r["errors"] for r in read_rows(tmp_path / "out" / "results.jsonl")}
    assert got == expected
    assert json.loads((tmp_path / "out" / "config.json").read_text())["arch"] == "bundled"


# --- user errors: one error line, exit 2, nothing written --------------------------------------------


@pytest.mark.parametrize(
    "option",
    ["rbn.alpha=abc", "rbn.alpha=None", "momentum_decay.decay=1.5", "unmix_tns.temperature=nan"],
)
def test_a_bad_option_value_is_one_error_before_anything_is_written(tmp_path, cache_dir, capsys, option):
    policy = option.split(".")[0]
    args = [*SMALL, "--policies", f"source,{policy}", "--option", option, "--cache-dir", str(cache_dir)]
    assert cli.main(["run", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"policy {policy}" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_model_for_other_images_is_refused_before_the_grid_starts(tmp_path, cache_dir, capsys):
    # A 3-channel ImageNet architecture (built with 10 classes) cannot read 1-channel Fashion-MNIST.
    args = [
        *SMALL,
        "--model",
        "torchvision.models:resnet18",
        "--model-arg",
        "num_classes=10",
        "--cache-dir",
        str(cache_dir),
        "--out",
        str(tmp_path / "out"),
    ]
    assert cli.main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "cannot process the fmnist-c images" in err and "(50, 1, 28, 28)" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_an_out_path_that_is_no_folder_is_one_error(tmp_path, capsys, where):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" if where == "file" else tmp_path / "file" / "out"
    assert cli.main(["run", *SMALL, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--out" in err and "Traceback" not in err
    assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.parametrize(("flag", "value", "named"), [("--seeds", "1.5", "1.5"), ("--threads", "0", "--threads")])
def test_non_integer_seeds_and_zero_threads_are_refused(tmp_path, capsys, flag, value, named):
    args = list(SMALL)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert cli.main(["run", *args, "--out", str(tmp_path / "out")]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- one run per folder; duplicates counted once ---------------------------------------------------------


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_second_run_into_a_folder_in_use_fails_at_once_naming_the_holder(tmp_path, cache_dir, capsys):
    args = [
        *SMALL,
        "--order",
        "iid,sorted,dirichlet:1.0",
        "--cache-dir",
        str(cache_dir),
        "--out",
        str(tmp_path / "out"),
    ]
    results = tmp_path / "out" / "results.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-m", "tta_bench.cli", "run", *args],
        cwd=REPO,
        env=_subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (results.exists() and results.read_bytes().count(b"\n") >= 1):
            assert holder.poll() is None and time.monotonic() < deadline, holder.communicate()
            time.sleep(0.01)
        # The same arguments, and other seeds (which used to mix into the same folder), are both refused.
        for other in (args, [*args, "--seeds", "1"]):
            started = time.monotonic()
            assert cli.main(["run", *other]) == 2
            err = capsys.readouterr().err
            assert f"PID {holder.pid}" in err and "in use" in err
            assert time.monotonic() - started < 10
        assert holder.poll() is None, "the holder finished before the contender tried: enlarge the grid"
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: the OS must release it
        holder.wait()
    assert cli.main(["run", *args]) == 0
    rows = read_rows(results)
    assert len(rows) == len(set(keys_of(rows))) == 12
    assert json.loads((tmp_path / "out" / "config.json").read_text())["seeds"] == [0]


_AT_THE_SIGNAL = (
    "import sys, time, pathlib\n"
    "ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n"
    "from tta_bench import cli\n"
    "ready.touch()\n"
    "while not go.exists(): time.sleep(0.001)\n"
    "started = time.monotonic()\n"
    "status = cli.main(sys.argv[3:])\n"
    "print(f'seconds {time.monotonic() - started:.3f}')\n"
    "sys.exit(status)\n"
)
"""Runs ``tta-bench`` with the arguments after the first two: says it is ready by creating the file
named first, then starts once the file named second exists."""


@pytest.mark.parametrize("seeds", [["0", "0"], ["0", "1"]])
@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_runs_started_together_on_a_new_folder_one_is_refused_at_once(tmp_path, cache_dir, seeds):
    go = tmp_path / "go"
    out = tmp_path / "new" / "out"
    args = [*SMALL, "--order", "iid", "--cache-dir", str(cache_dir), "--out", str(out)]
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _AT_THE_SIGNAL, str(tmp_path / f"ready{i}"), str(go), "run", *args, "--seeds", seed],
            cwd=REPO,
            env=_subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, seed in enumerate(seeds)
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(run.poll() is None for run in runs)
        time.sleep(0.01)
    go.touch()
    ended = [run.communicate(timeout=300) for run in runs]
    statuses = [run.returncode for run in runs]
    assert sorted(statuses) == [0, 2], ended
    refused_out, refused_err = ended[statuses.index(2)]
    assert "in use" in refused_err and "Traceback" not in refused_err
    assert float(refused_out.split("seconds ")[-1]) < 5
    winner = seeds[statuses.index(0)]
    rows = read_rows(out / "results.jsonl")
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(rows) == 4
    assert set(keys_of(rows)) == grid_keys([*args, "--seeds", winner])
    assert json.loads((out / "config.json").read_text())["seeds"] == [int(winner)]


def test_report_counts_a_duplicated_result_once_and_says_so(finished, tmp_path, capsys):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(finished, folder)
    lines = (folder / "results.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    (folder / "results.jsonl").write_text("\n".join([*lines, lines[0]]) + "\n")  # e.g. two writers
    assert cli.main(["report", str(folder)]) == 0
    err = capsys.readouterr().err
    first = rows[0]
    assert "1 result(s) stored more than once" in err
    assert f"{first['policy']} single {first['order']} seed 0 {first['corruption']}-5" in err
    with open(folder / "results.csv", newline="") as file:
        assert len(list(csv.DictReader(file))) == len(rows)
    same = [r["error"] for r in rows if (r["policy"], r["order"]) == (first["policy"], first["order"])]
    line = next(
        line for line in (folder / "report.md").read_text().splitlines() if line.startswith(f"| {first['policy']} ")
    )
    assert f"{sum(same) / len(same):.1f}" in line


def _set_first_row(folder: Path, key: str, value) -> None:
    lines = (folder / "results.jsonl").read_text().splitlines(keepends=True)
    lines[0] = json.dumps({**json.loads(lines[0]), key: value}) + "\n"
    (folder / "results.jsonl").write_text("".join(lines))


def _drop_policies(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    del config["policies"]
    (folder / "config.json").write_text(json.dumps(config))


def _append_line(folder: Path, line: bytes) -> None:
    with open(folder / "results.jsonl", "ab") as file:
        file.write(line + b"\n")


def _results_as_folder(folder: Path) -> None:
    (folder / "results.jsonl").unlink()
    (folder / "results.jsonl").mkdir()


DAMAGE = {  # how a folder is damaged, and what the error must name
    "a number as a line": (lambda f: _append_line(f, b"5"), "results.jsonl, line 9"),
    "null as a line": (lambda f: _append_line(f, b"null"), "results.jsonl, line 9"),
    "an error of null": (lambda f: _set_first_row(f, "error", None), "results.jsonl, line 1"),
    "a seed that is text": (lambda f: _set_first_row(f, "seed", "x"), "results.jsonl, line 1"),
    "a line that is not UTF-8": (lambda f: _append_line(f, b"\xff\xfe"), "results.jsonl, line 9"),
    "results.jsonl a folder": (_results_as_folder, "results.jsonl"),
    "a config that is a list": (lambda f: (f / "config.json").write_text("[1, 2]"), "config.json"),
    "a truncated config": (
        lambda f: (f / "config.json").write_text((f / "config.json").read_text()[:50]),
        "config.json, line 4",
    ),
    "a config without policies": (_drop_policies, "config.json: 'policies'"),
    "a meta that is a list": (lambda f: (f / "meta.json").write_text("[]"), "meta.json"),
    "a truncated meta": (lambda f: (f / "meta.json").write_text((f / "meta.json").read_text()[:30]), "meta.json, line"),
}


@pytest.mark.parametrize("command", ["report", "run"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_folder_is_one_error_naming_the_file_and_line_and_is_left_as_it_was(
    finished, cache_dir, tmp_path, capsys, command, damage
):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(finished, folder, ignore=shutil.ignore_patterns("report.md", "results.csv", "errors.png"))
    damaged, named = DAMAGE[damage]
    damaged(folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    argv = (
        ["report", str(folder)]
        if command == "report"
        else ["run", *SMALL, "--cache-dir", str(cache_dir), "--out", str(folder)]
    )
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and named in err and "Traceback" not in err, err
    assert {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()} == before


@pytest.mark.parametrize(("kind", "named"), [("empty file", "is empty"), ("folder", "is a folder")])
def test_a_model_path_that_holds_no_model_is_one_error_naming_it(tmp_path, capsys, kind, named):
    model = tmp_path / "model.pt"
    model.write_bytes(b"") if kind == "empty file" else model.mkdir()
    assert cli.main(["run", *SMALL, "--model", str(model), "--arch", "bundled", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"{model} {named}" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_corruption_whose_package_is_missing_is_one_error_naming_both_before_anything_is_written(
    tmp_path, cache_dir, capsys, monkeypatch
):
    for module in ("corrupt_tta", "corrupt_tta.assets", "corrupt_tta.assets.frost"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it raises ImportError
    args = [*SMALL, "--policies", "source", "--order", "iid", "--corruptions", "brightness,frost"]
    assert cli.main(["run", *args, "--cache-dir", str(cache_dir), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("error:") == 1
        and "frost" in err
        and "corrupt-tta" in err
        and "pip install 'tta-norm[streams]'" in err
        and "Traceback" not in err
    )
    assert not (tmp_path / "out").exists()


@pytest.fixture
def full_disk(tmp_path) -> Path:
    """A 16 KiB file system with no space left (skipped where it cannot be mounted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(disk)]
    if subprocess.run(mount, capture_output=True, check=False).returncode:
        pytest.skip("cannot mount a small file system here (needs root)")
    try:
        with open(disk / "fill", "wb") as file, pytest.raises(OSError):
            file.write(b"\0" * 65536)
            file.flush()
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def test_a_new_folder_on_a_full_disk_is_one_error_and_leaves_nothing(full_disk, cache_dir, capsys):
    args = [*SMALL, "--policies", "source", "--order", "iid", "--cache-dir", str(cache_dir)]
    assert cli.main(["run", *args, "--out", str(full_disk / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "No space left on device" in err and str(full_disk / "out") in err, err
    assert "Traceback" not in err
    assert sorted(path.name for path in full_disk.iterdir()) == ["fill"]


def test_a_report_that_cannot_be_written_is_one_error_naming_the_file(finished, tmp_path, capsys):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(finished, folder)
    (folder / "report.md").unlink()
    (folder / "report.md").mkdir()
    assert cli.main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"{folder / 'report.md'}: cannot write" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.multiprocess
def test_report_warns_once_about_a_duplicated_result(finished, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(finished, folder)
    lines = (folder / "results.jsonl").read_text().splitlines()
    (folder / "results.jsonl").write_text("\n".join([*lines, lines[0]]) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "tta_bench.cli", "report", str(folder)],
        cwd=REPO,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and done.stderr.count("stored more than once") == 1, done.stderr


# --- reproducibility metadata, output without a terminal, smaller flags ----------------------------------


def _source_errors(cache_dir: Path, corruptions: list[str] | None, **stream_options) -> int:
    """Misclassified images of the unadapted bundled model on a stream built by hand."""
    model = load_bundled_model().eval()
    stream = tta_streams.Stream(
        tta_streams.fashion_mnist("test"),
        corruptions=corruptions,
        severities=5,
        order="iid",
        batch_size=50,
        n_examples=200,
        seed=0,
        cache_dir=cache_dir,
        **stream_options,
    )
    with torch.no_grad():
        return sum(int((model(b.x).argmax(1) != b.y).sum()) for b in stream)


def test_meta_records_versions_device_threads_and_the_clean_error(finished, cache_dir):
    meta = json.loads((finished / "meta.json").read_text())
    run = meta["runs"][0]
    assert run["tta_version"] == tta.__version__ and run["torch_version"] == torch.__version__
    assert run["device"].startswith("cpu") and run["threads"] == torch.get_num_threads()
    assert run["results_added"] == 8 and run["seconds"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", run["started"])
    assert run["git_commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", run["git_commit"])
    errors = _source_errors(cache_dir, None)
    assert meta["clean_error"]["n"] == 200 and meta["clean_error"]["errors"] == errors
    report = (finished / "report.md").read_text()
    assert f"Clean error of the unadapted model: {100 * errors / 200:.1f}%" in report
    assert run["git_commit"] in report and tta.__version__ in report


def test_a_resumed_run_reuses_the_clean_error_and_adds_its_own_entry(finished, cache_dir, monkeypatch):
    from tta_bench import evaluate

    def computed_again(*args, **kwargs):
        raise AssertionError("the clean error was computed again")

    before = json.loads((finished / "meta.json").read_text())
    monkeypatch.setattr(evaluate, "clean_error", computed_again)
    assert cli.main(["run", *SMALL, "--cache-dir", str(cache_dir), "--out", str(finished)]) == 0
    after = json.loads((finished / "meta.json").read_text())
    assert after["clean_error"] == before["clean_error"]
    assert after["runs"][:-1] == before["runs"] and after["runs"][-1]["results_added"] == 0


@pytest.mark.slow
def test_without_a_terminal_each_result_is_one_line_and_threads_are_recorded(tmp_path, cache_dir, capsys):
    args = [a for a in SMALL if a != "--no-progress"]  # capsys' stdout is not a terminal
    args[args.index("--order") + 1] = "iid"
    try:
        assert cli.main(["run", *args, "--threads", "2", "--cache-dir", str(cache_dir), "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(1)
    captured = capsys.readouterr()
    rows = read_rows(tmp_path / "results.jsonl")
    # two units (a domain episode each) of two results, one after the other
    expected = [
        f"[{i}/4] {r['policy']} single iid seed 0 {r['corruption']}-5: error {r['error']:.1f}% "
        f"(units: {int(i <= 2)} running, {(i + 1) // 2}/2 done)"
        for i, r in enumerate(rows, start=1)
    ]
    assert [line for line in captured.out.splitlines() if line.startswith("[")] == expected
    assert "\r" not in captured.out + captured.err
    assert json.loads((tmp_path / "meta.json").read_text())["runs"][0]["threads"] == 2


def test_table_is_given_to_the_stream_and_recorded(tmp_path, cache_dir):
    args = [
        *SMALL,
        "--policies",
        "source",
        "--order",
        "iid",
        "--corruptions",
        "contrast",
        "--table",
        "imagenet",
        "--cache-dir",
        str(cache_dir),
        "--out",
        str(tmp_path),
    ]
    assert cli.main(["run", *args]) == 0
    (row,) = read_rows(tmp_path / "results.jsonl")
    assert row["errors"] == _source_errors(cache_dir, ["contrast"], table="imagenet")
    assert json.loads((tmp_path / "config.json").read_text())["table"] == "imagenet"


def test_version_flag_prints_the_toolkit_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"tta-bench {tta.__version__}"


@pytest.mark.parametrize("command", ["run", "speed"])
def test_model_dir_is_where_robustbench_checkpoints_are_looked_for(tmp_path, capsys, command):
    args = [command, "--dataset", "cifar10-c", "--model", "robustbench:Standard", "--model-dir", str(tmp_path / "rb")]
    if command == "run":
        args += ["--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]
    assert cli.main(args) == 2
    assert str(tmp_path / "rb" / "cifar10" / "corruptions" / "Standard.pt") in capsys.readouterr().err


def test_train_source_writes_to_the_cache_by_default_not_the_shipped_weights(tmp_path, monkeypatch, capsys):
    from tta_bench import train_source

    written = []

    def fake_train(out, **options):
        written.append(Path(out))
        return {"path": str(out)}

    monkeypatch.setenv("TTA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(train_source, "train_source", fake_train)
    assert cli.main(["train-source", "--epochs", "1"]) == 0
    assert written == [tmp_path / "cache" / "fmnist_resnet.pt"]
    assert str(tmp_path / "cache" / "fmnist_resnet.pt") in capsys.readouterr().out
    assert cli.main(["train-source", "--out", str(tmp_path / "mine.pt")]) == 0
    assert written[-1] == tmp_path / "mine.pt"


def test_the_progress_bar_on_a_terminal_shows_each_policys_running_error(tmp_path, cache_dir, capsys, monkeypatch):
    args = [a for a in SMALL if a != "--no-progress"]
    args[args.index("--order") + 1] = "iid"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert cli.main(["run", *args, "--cache-dir", str(cache_dir), "--out", str(tmp_path)]) == 0
    bar = capsys.readouterr().err  # tqdm draws on stderr
    assert re.search(r"source=\d+\.\d%, tbn=\d+\.\d%", bar)


def test_a_run_over_single_streams_never_iterates_one_flat(tmp_path, cache_dir):
    """The probe batch and the grid walk each `single` stream by episode: no flat-iteration warning."""
    args = [*SMALL, "--cache-dir", str(cache_dir), "--out", str(tmp_path)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["run", *args]) == 0
    assert not [w for w in caught if "stream.episodes()" in str(w.message)]


# --- methods: a grid axis over the policies --------------------------------------------------------------

METHODS = [*SMALL, "--order", "iid", "--methods", "none,tent"]  # 2 methods x 2 policies x 2 corruptions


@pytest.fixture(scope="module")
def with_methods(tmp_path_factory, cache_dir) -> tuple[Path, str]:
    """One complete run of METHODS and what it printed (no terminal: one line per result)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("methods") / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["run", *METHODS, "--cache-dir", str(cache_dir), "--out", str(out)]) == 0
    return out, printed.getvalue()


def _hand_built_errors(
    cache_dir: Path,
    method: str,
    policy: str,
    corruptions: tuple[str, ...] = ("brightness", "contrast"),
    **options: object,
) -> dict[str, int]:
    """Misclassified images per corruption of ``method`` over ``policy``, by hand: adapt, attach, and walk
    the stream's episodes resetting the learner before each (no benchmark code, no no_grad)."""
    learner = tta.attach_method(tta.adapt(load_bundled_model().eval(), policy), method, **options)
    stream = tta_streams.Stream(
        tta_streams.fashion_mnist("test"),
        corruptions=list(corruptions),
        severities=5,
        order="iid",
        setting="single",
        batch_size=50,
        n_examples=200,
        seed=0,
        cache_dir=cache_dir,
    )
    errors = {}
    for domain, batches in stream.episodes():
        tta.reset(learner)
        errors[str(domain[0])] = sum(int((learner(b.x).argmax(1) != b.y).sum()) for b in batches)
    return errors


def test_a_method_grid_has_one_row_per_method_and_policy(with_methods):
    out, _ = with_methods
    rows = read_rows(out / "results.jsonl")
    assert sorted(keys_of(rows)) == sorted(grid_keys(METHODS)) and len(rows) == 8
    assert {(r["method"], r["policy"]) for r in rows} == {(m, p) for m in ("none", "tent") for p in ("source", "tbn")}
    assert json.loads((out / "config.json").read_text())["methods"] == ["none", "tent"]


def test_the_none_rows_of_a_method_grid_are_the_rows_of_a_run_without_methods(with_methods, finished):
    out, _ = with_methods
    plain = {grid.row_key(r): r for r in read_rows(finished / "results.jsonl") if r["order"] == "iid"}
    none = {grid.row_key(r): r for r in read_rows(out / "results.jsonl") if r["method"] == "none"}
    assert none.keys() == plain.keys()
    for key, row in none.items():
        assert {k: row[k] for k in ("n", "errors", "error")} == {k: plain[key][k] for k in ("n", "errors", "error")}


@pytest.mark.parametrize("policy", ["source", "tbn"])
def test_the_tent_rows_equal_a_hand_built_tent_loop_on_the_same_stream(with_methods, cache_dir, policy):
    out, _ = with_methods
    got = {
        r["corruption"]: r["errors"]
        for r in read_rows(out / "results.jsonl")
        if (r["method"], r["policy"]) == ("tent", policy)
    }
    assert got == _hand_built_errors(cache_dir, "tent", policy)


def test_dua_runs_in_the_grid_with_its_options_as_a_hand_built_loop(tmp_path, cache_dir):
    args = [
        *SMALL,
        "--order",
        "iid",
        "--corruptions",
        "brightness",
        "--policies",
        "momentum_decay",
        "--methods",
        "dua",
        "--option",
        "dua.copies=4",
    ]
    assert cli.main(["run", *args, "--cache-dir", str(cache_dir), "--out", str(tmp_path / "out")]) == 0
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert [(r["method"], r["policy"], r["method_options"]) for r in rows] == [("dua", "momentum_decay", {"copies": 4})]
    expected = _hand_built_errors(cache_dir, "dua", "momentum_decay", ("brightness",), copies=4, seed=0)
    assert {rows[0]["corruption"]: rows[0]["errors"]} == expected


def test_a_method_grid_names_the_method_in_each_line_and_reports_a_line_per_method(with_methods, capsys):
    out, printed = with_methods
    rows = read_rows(out / "results.jsonl")
    expected = [
        f"[{i}/8] {r['method']}/{r['policy']} single iid seed 0 {r['corruption']}-5: error {r['error']:.1f}% "
        f"(units: {int(i <= 4)} running, {(i + 3) // 4}/2 done)"
        for i, r in enumerate(rows, start=1)
    ]
    assert [line for line in printed.splitlines() if line.startswith("[")] == expected
    assert "(2 methods x 2 policies x 1 streams)" in printed
    report_md = (out / "report.md").read_text()
    summary = report_md[report_md.index("**single, iid**") : report_md.index("## The best policy under each method")]
    assert [line.split("|")[1].strip() for line in summary.splitlines() if line.startswith("| ")] == [
        "method",
        "none",
        "tent",
    ]
    assert [c.strip() for c in summary.splitlines()[2].split("|")[1:-1]] == ["method", "source", "tbn"]
    with open(out / "results.csv", newline="") as file:
        assert sorted(line["method"] for line in csv.DictReader(file)) == ["none"] * 4 + ["tent"] * 4
    for name in ("report.md", "results.csv", "errors.png"):
        (out / name).unlink()
    assert cli.main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == report_md
    assert "**single, iid**" in capsys.readouterr().out


def test_an_old_folder_without_methods_resumes_with_the_old_command_as_none(finished, cache_dir, tmp_path, capsys):
    import shutil

    folder = tmp_path / "old"
    shutil.copytree(finished, folder)
    config = json.loads((folder / "config.json").read_text())
    assert "methods" not in config
    rows = read_rows(folder / "results.jsonl")
    old = [{k: v for k, v in r.items() if k not in ("method", "method_options")} for r in rows[:-2]]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))  # the format before methods
    before = (folder / "results.jsonl").read_bytes()
    assert cli.main(["run", *SMALL, "--cache-dir", str(cache_dir), "--out", str(folder)]) == 0
    assert "6 already" in capsys.readouterr().out
    assert (folder / "results.jsonl").read_bytes().startswith(before)
    resumed = read_rows(folder / "results.jsonl")
    assert sorted(keys_of(resumed)) == sorted(grid_keys(SMALL))
    assert [r["errors"] for r in resumed[-2:]] == [r["errors"] for r in rows[-2:]]
    assert [r.get("method") for r in resumed] == [None] * 6 + ["none"] * 2
    assert cli.main(["report", str(folder)]) == 0

    def summary(text: str) -> str:
        return text[text.index("## Mean error") : text.index("## Error (%) per domain")]

    assert summary((folder / "report.md").read_text()) == summary((finished / "report.md").read_text())
    with open(folder / "results.csv", newline="") as file:
        assert {line["method"] for line in csv.DictReader(file)} == {"none"}


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--option", "tent.lr=-1"], "method tent with options {'lr': -1}"),
        (["--option", "tent.steps=1.5"], "must be an integer"),
        (["--methods", "none,warp"], "unknown method 'warp'"),
        (["--methods", "none", "--option", "tent.lr=0.1"], "not among --methods"),
    ],
)
def test_a_bad_method_or_method_option_is_one_error_before_anything_is_written(
    tmp_path, cache_dir, capsys, extra, needle
):
    args = [*METHODS, *extra, "--cache-dir", str(cache_dir), "--out", str(tmp_path / "out")]
    assert cli.main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_killed_method_grid_resumes_to_the_rows_of_an_uninterrupted_run(tmp_path, cache_dir, with_methods):
    args = [*METHODS, "--order", "iid,sorted", "--cache-dir", str(cache_dir), "--out", str(tmp_path / "out")]
    results = tmp_path / "out" / "results.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "tta_bench.cli", "run", *args],
        cwd=REPO,
        env=_subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (results.exists() and results.read_bytes().count(b"\n") >= 1):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = results.read_bytes()
    assert 1 <= len(read_rows(results)) < 16, "the run finished before it could be killed: enlarge the grid"
    assert cli.main(["run", *args]) == 0
    rows = read_rows(results)
    assert len(rows) == len(set(keys_of(rows))) == 16 and set(keys_of(rows)) == grid_keys(args)
    assert results.read_bytes().startswith(first[: first.rfind(b"\n") + 1])
    uninterrupted = {grid.row_key(r): r["errors"] for r in read_rows(with_methods[0] / "results.jsonl")}
    assert {grid.row_key(r): r["errors"] for r in rows if r["order"] == "iid"} == uninterrupted


def test_the_progress_bar_of_a_method_grid_shows_each_learners_running_error(tmp_path, cache_dir, capsys, monkeypatch):
    args = [a for a in METHODS if a != "--no-progress"] + ["--corruptions", "brightness"]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert cli.main(["run", *args, "--cache-dir", str(cache_dir), "--out", str(tmp_path)]) == 0
    bar = capsys.readouterr().err
    assert re.search(r"none/source=\d+\.\d%, none/tbn=\d+\.\d%, tent/source=\d+\.\d%, tent/tbn=\d+\.\d%", bar)


def test_the_report_does_not_depend_on_the_order_results_were_stored_in(finished, tmp_path, capsys):
    # Parallel executors store rows as units finish: a folder whose rows are stored in reverse must give
    # the same report.md, results.csv and printed summary as the serial run's.
    import shutil

    folder = tmp_path / "reversed"
    shutil.copytree(finished, folder)
    lines = (folder / "results.jsonl").read_text().splitlines()
    (folder / "results.jsonl").write_text("\n".join(reversed(lines)) + "\n")
    assert cli.main(["report", str(finished)]) == 0
    printed = capsys.readouterr().out
    assert cli.main(["report", str(folder)]) == 0
    assert capsys.readouterr().out.replace(str(folder), str(finished)) == printed
    for name in ("report.md", "results.csv"):
        assert (folder / name).read_text() == (finished / name).read_text()


def test_a_dataset_registered_by_its_own_module_is_listed_in_the_help(toy_dataset, capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert re.search(r"one of\s+fmnist-c,\s+cifar10-c,\s+cifar100-c,\s+imagenet-c,\s+toy-c", capsys.readouterr().out)
