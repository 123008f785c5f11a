"""``tta-bench run`` on every executor: the rows of serial, ``--workers 2`` and Ray are the
same; a killed driver resumes to every row exactly once; a failing unit is retried, then reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tta_bench import cli, grid
from tta_bench.results import read_rows

pytestmark = pytest.mark.multiprocess

REPO = Path(__file__).resolve().parents[2]
GRID = [
    "--dataset", "fmnist-c", "--model", "bundled", "--methods", "none,tent", "--policies", "source,tbn",
    "--setting", "single,continual", "--order", "iid", "--corruptions", "brightness,contrast", "--severity", "5",
    "--n-examples", "200", "--batch-size", "50", "--seeds", "0", "--no-progress",
]  # fmt: skip
"""16 rows (2 methods x 2 policies x 2 settings x 2 domains) in 6 units: 2 episodes of `single`, 4 learners
of `continual`."""
EXECUTORS = {"serial": [], "workers": ["--workers", "2"], "ray": ["--executor", "ray"]}
"""Each executor with its default threads per unit."""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="session")
def ray_cluster() -> str:
    """A local two-CPU Ray cluster for the session (Ray's local mode is gone); its address. Its workers
    import this checkout, as the driver does."""
    import ray

    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = _env()["PYTHONPATH"]  # the raylet, and so every worker, inherits it
    try:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, logging_level="ERROR")
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _needs(executor: str, request: pytest.FixtureRequest) -> list[str]:
    """The executor's flags; starts the Ray cluster only for Ray."""
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    return EXECUTORS[executor]


def hand_keys(args: list[str]) -> set[tuple]:
    """The rows the arguments ask for, enumerated by hand from the flag values."""
    value = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    return {
        (method, policy, setting, order, int(seed), corruption, 5)
        for method in value["--methods"].split(",")
        for policy in value["--policies"].split(",")
        for setting in value["--setting"].split(",")
        for order in value["--order"].split(",")
        for seed in value["--seeds"].split(",")
        for corruption in value["--corruptions"].split(",")
    }


@pytest.fixture(scope="module")
def serial_rows(tmp_path_factory, cache_dir) -> dict[tuple, dict]:
    out = tmp_path_factory.mktemp("serial") / "out"
    assert cli.main(["run", *GRID, "--cache-dir", str(cache_dir), "--out", str(out)]) == 0
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 16 and {grid.row_key(r) for r in rows} == hand_keys(GRID)
    assert _unit_threads(out) == 1
    return {grid.row_key(r): r for r in rows}


def _unit_threads(out: Path) -> int:
    return json.loads((out / "meta.json").read_text())["runs"][-1]["worker_threads"]


@pytest.mark.parametrize("executor", ["workers", pytest.param("ray", marks=pytest.mark.ray)])
def test_every_executor_gives_the_rows_of_a_serial_run(tmp_path, cache_dir, serial_rows, request, executor):
    args = [*GRID, *_needs(executor, request), "--cache-dir", str(cache_dir), "--out", str(tmp_path)]
    assert cli.main(["run", *args]) == 0
    rows = read_rows(tmp_path / "results.jsonl")
    assert len(rows) == 16
    assert {grid.row_key(r): r for r in rows} == serial_rows
    # the same torch threads per unit as serial by default: the statistics' last bits depend on them
    assert _unit_threads(tmp_path) == 1


KILLED = [*GRID, "--methods", "none", "--setting", "single", "--order", "iid,sorted,dirichlet:1.0"]
"""12 rows in 6 units (3 orders x 2 domains)."""


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc to find the worker processes")
@pytest.mark.parametrize("executor", ["workers", pytest.param("ray", marks=pytest.mark.ray)])
def test_a_driver_killed_mid_grid_resumes_to_every_row_exactly_once(tmp_path, cache_dir, request, executor):
    flags = _needs(executor, request)
    if executor == "ray":
        flags = [*flags, "--ray-address", request.getfixturevalue("ray_cluster")]
    args = [*KILLED, *flags, "--cache-dir", str(cache_dir), "--out", str(tmp_path / "out")]
    results = tmp_path / "out" / "results.jsonl"
    driver = subprocess.Popen(
        [sys.executable, "-m", "tta_bench.cli", "run", *args],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while not (results.exists() and results.read_bytes().count(b"\n") >= 1):
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
        time.sleep(0.01)
    workers = _children(driver.pid)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    first = results.read_bytes()
    assert 1 <= len(read_rows(results)) < 12, "the run finished before it could be killed: enlarge the grid"
    if executor == "workers":  # the driver's worker processes do not outlive it
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]

    assert cli.main(["run", *args]) == 0
    rows = read_rows(results)
    lines = results.read_text().splitlines()
    assert len(lines) == len(rows) == 12 and {grid.row_key(r) for r in rows} == hand_keys(args)
    assert results.read_bytes().startswith(first[: first.rfind(b"\n") + 1])


def flaky_args(tmp_path: Path, cache_dir: Path, flags: list[str], *model_args: str) -> tuple[list[str], Path]:
    """The arguments of a run of :data:`GRID` with ``flags`` on the flaky test model (each of
    ``model_args`` one ``--model-arg``, after its folder of attempts), and that folder."""
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    args = [
        *GRID,
        *flags,
        "--methods",
        "none",
        "--corruptions",
        "contrast,brightness",
        "--model",
        "tests.benchmarks.flaky_model:build",
        "--model-arg",
        f"attempts_dir={str(attempts)!r}",
    ]
    for model_arg in model_args:
        args += ["--model-arg", model_arg]
    return [*args, "--cache-dir", str(cache_dir), "--out", str(tmp_path / "out")], attempts


@pytest.mark.parametrize("executor", ["serial", "workers", pytest.param("ray", marks=pytest.mark.ray)])
def test_a_unit_that_keeps_failing_is_tried_twice_then_reported_and_the_rest_is_kept(
    tmp_path, cache_dir, request, executor, capsys
):
    # The flaky model raises on every bright (brightness-5) batch: the single-setting unit of brightness
    # fails, the one of contrast (first, so the probe batch passes) does not.
    args, attempts = flaky_args(tmp_path, cache_dir, [*_needs(executor, request), "--setting", "single"])
    assert cli.main(["run", *args]) == 1
    assert len(list(attempts.iterdir())) == 2
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert {grid.row_key(r) for r in rows} == {
        ("none", p, "single", "iid", 0, "contrast", 5) for p in ("source", "tbn")
    }
    err = capsys.readouterr().err
    assert "the grid is incomplete: 1 of 2 units failed after 2 attempts" in err
    assert "single iid seed 0 brightness-5 (source, tbn): RuntimeError: injected failure on a bright batch" in err


@pytest.mark.parametrize("executor", ["serial", "workers", pytest.param("ray", marks=pytest.mark.ray)])
def test_a_unit_that_fails_once_is_retried_and_gives_the_rows_of_a_run_without_failure(
    tmp_path, cache_dir, serial_rows, request, executor
):
    args, attempts = flaky_args(tmp_path, cache_dir, _needs(executor, request), "always=False")
    assert cli.main(["run", *args]) == 0
    assert [p.name for p in attempts.iterdir()] == ["failed-once"]
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert len(rows) == 8
    for row in rows:
        assert row["errors"] == serial_rows[grid.row_key(row)]["errors"]


@pytest.mark.parametrize("executor", ["workers", pytest.param("ray", marks=pytest.mark.ray)])
def test_a_unit_whose_worker_dies_is_retried_in_a_new_worker(tmp_path, cache_dir, serial_rows, request, executor):
    args, attempts = flaky_args(tmp_path, cache_dir, _needs(executor, request), "always=False", "crash=True")
    assert cli.main(["run", *args]) == 0
    assert [p.name for p in attempts.iterdir()] == ["failed-once"]  # one worker died
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert len(rows) == 8 and all(row["errors"] == serial_rows[grid.row_key(row)]["errors"] for row in rows)


def test_a_worker_that_dies_charges_only_its_own_unit_and_the_others_finish(tmp_path, cache_dir, capsys):
    # Every rbn unit ends its worker process at once; the tbn units run beside them in the other worker.
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    args = [
        *GRID,
        "--methods",
        "none",
        "--policies",
        "tbn,rbn",
        "--setting",
        "continual",
        "--order",
        "iid,sorted",
        "--seeds",
        "0,1",
        "--workers",
        "2",
        "--model",
        "tests.benchmarks.worker_models:crash_under_rbn",
        "--model-arg",
        f"attempts_dir={str(attempts)!r}",
        "--cache-dir",
        str(cache_dir),
        "--out",
        str(tmp_path / "out"),
    ]
    assert cli.main(["run", *args]) == 1
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert {grid.row_key(r) for r in rows} == {key for key in hand_keys(args) if key[1] == "tbn"}
    assert len(list(attempts.iterdir())) == 4 * 2  # each of the 4 rbn units tried twice, no more
    assert "the grid is incomplete: 4 of 8 units failed after 2 attempts" in capsys.readouterr().err


def test_a_model_that_cannot_be_pickled_is_one_error_before_anything_is_written(tmp_path, cache_dir, capsys):
    args = [
        *GRID,
        "--workers",
        "2",
        "--model",
        "tests.benchmarks.worker_models:unpicklable",
        "--cache-dir",
        str(cache_dir),
        "--out",
        str(tmp_path / "out"),
    ]
    assert cli.main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "cannot be pickled" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_ray_missing_is_one_error_naming_the_extra_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert cli.main(["run", *GRID, "--executor", "ray", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "pip install 'tta-norm[ray]'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--workers", "0"], "--workers must be >= 1"),
        (["--ray-address", "auto"], "--ray-address: only with --executor ray"),
        (["--executor", "ray", "--workers", "2"], "--workers is for --executor local"),
        (["--executor", "ray", "--device", "cuda"], "needs --gpus-per-task"),
    ],
)
def test_executor_flags_that_do_not_fit_are_one_error(tmp_path, capsys, flags, needle):
    assert cli.main(["run", *GRID, *flags, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and needle in err
    assert not (tmp_path / "out").exists()
