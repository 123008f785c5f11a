"""``tta_bench.run.run_grid`` called as a notebook would: rows, resume, the folder lock, typed errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tta_bench import cli, grid, results, run
from tta_bench.results import read_rows
from tta_streams import ImageSet

CONFIG = {
    "dataset": "fmnist-c",
    "policies": ["source", "tbn"],
    "orders": ["iid", "sorted"],
    "corruptions": ["brightness", "contrast"],
    "severities": [5],
    "seeds": [0],
    "n_examples": 200,
    "batch_size": 50,
}
FLAGS = {
    "dataset": "--dataset",
    "policies": "--policies",
    "settings": "--setting",
    "orders": "--order",
    "corruptions": "--corruptions",
    "severities": "--severity",
    "seeds": "--seeds",
    "n_examples": "--n-examples",
    "batch_size": "--batch-size",
}


def cli_args(config: dict) -> list[str]:
    """The ``tta-bench run`` flags of the ``make_config`` arguments ``config`` (lists as comma lists)."""

    def text(value: object) -> str:
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)

    return ["run", *(part for key, value in config.items() for part in (FLAGS[key], text(value))), "--no-progress"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def config() -> grid.GridConfig:
    return grid.make_config(**CONFIG)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir, config) -> tuple[Path, run.RunResult]:
    out = tmp_path_factory.mktemp("run") / "out"
    return out, run.run_grid(config, out, device="cpu", cache_dir=cache_dir)


def test_make_config_takes_lists_as_the_command_line_takes_comma_strings(config):
    assert config == grid.make_config(
        dataset="fmnist-c",
        policies="source,tbn",
        orders="iid,sorted",
        corruptions="brightness,contrast",
        severities="5",
        seeds="0",
        n_examples=200,
        batch_size=50,
    )


def test_run_grid_stores_every_row_of_the_grid_and_writes_the_report(finished, config):
    out, result = finished
    assert result.status == "complete" and result.failures == []
    assert result.added == result.total == len(grid.row_keys(config)) == 8
    assert [grid.row_key(row) for row in result.rows] == grid.row_keys(config)
    assert sorted(map(grid.row_key, read_rows(out / results.RESULTS_NAME))) == sorted(grid.row_keys(config))
    assert set(result.report) == {"report", "csv", "plot"} and all(path.exists() for path in result.report.values())


def test_run_grid_gives_the_rows_of_the_command_line(finished, tmp_path, cache_dir):
    out, _ = finished
    assert cli.main([*cli_args(CONFIG), "--cache-dir", str(cache_dir), "--out", str(tmp_path / "cli")]) == 0
    assert read_rows(tmp_path / "cli" / results.RESULTS_NAME) == read_rows(out / results.RESULTS_NAME)


def test_a_second_call_resumes_and_adds_nothing(finished, config, cache_dir):
    out, first = finished
    events: list[run.Event] = []
    again = run.run_grid(config, out, device="cpu", cache_dir=cache_dir, progress=events.append)
    assert again.status == "complete" and again.added == 0 and again.rows == first.rows
    planned = [event for event in events if isinstance(event, run.GridPlanned)]
    assert [(event.total, event.done) for event in planned] == [(8, 8)]
    assert not any(isinstance(event, run.UnitFinished) for event in events)


def test_a_missing_row_is_run_again_and_reported_through_the_callback(finished, config, cache_dir, tmp_path):
    out, first = finished
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in (results.CONFIG_NAME, results.RESULTS_NAME):
        (partial / name).write_bytes((out / name).read_bytes())
    lines = (partial / results.RESULTS_NAME).read_text().splitlines(keepends=True)
    (partial / results.RESULTS_NAME).write_text("".join(lines[:-1]))
    events: list[run.Event] = []
    result = run.run_grid(config, partial, device="cpu", cache_dir=cache_dir, progress=events.append)
    assert result.added == 1 and result.rows == first.rows
    finished_units = [event for event in events if isinstance(event, run.UnitFinished)]
    assert len(finished_units) == 1 and finished_units[0].finished == finished_units[0].total == 8


def test_a_folder_of_another_grid_is_refused(finished, cache_dir):
    out, _ = finished
    with pytest.raises(results.ConfigMismatchError):
        run.run_grid(grid.make_config(**{**CONFIG, "seeds": [1]}), out, device="cpu", cache_dir=cache_dir)


def test_a_locked_folder_is_refused_before_the_config_is_built(tmp_path):
    def never() -> grid.GridConfig:
        raise AssertionError("the config was built while the folder was locked")

    with results.FolderLock(tmp_path, created=None), pytest.raises(results.FolderInUseError):
        run.run_grid(never, tmp_path, device="cpu")


@pytest.mark.parametrize("arguments, named", [
    ({"workers": 0}, "--workers must be >= 1"),
    ({"threads": 0}, "--threads must be >= 1"),
    ({"ray_address": "auto"}, "--ray-address: only with --executor ray"),
    ({"device": "no-such-device"}, "--device 'no-such-device'"),
])  # fmt: skip
def test_bad_arguments_are_a_run_error_and_leave_no_folder(tmp_path, config, arguments, named):
    with pytest.raises(run.RunError, match=named):
        run.run_grid(config, tmp_path / "new", **arguments)
    assert not (tmp_path / "new").exists()


def test_a_stream_its_arguments_cannot_draw_is_refused_before_anything_runs(tmp_path, cache_dir):
    # NOTE's Dirichlet order fills one chunk per class with at least ten images each: 60 images per domain
    # cannot. The grid is refused whole, naming the stream, and leaves no folder, though its first stream
    # (i.i.d. order) could run.
    config = grid.make_config(**{**CONFIG, "orders": ["iid", "dirichlet:1.0"], "n_examples": 60})
    with pytest.raises(run.RunError, match=r"setting single, order dirichlet:1.0, seed 0: dirichlet:1.0: 60 samples"):
        run.run_grid(config, tmp_path / "new", device="cpu", cache_dir=cache_dir)
    assert not (tmp_path / "new").exists()


def test_a_bad_config_is_a_config_error_naming_the_argument():
    with pytest.raises(grid.ConfigError, match="n-examples"):
        grid.make_config(**{**CONFIG, "n_examples": 0})
    with pytest.raises(grid.ConfigError, match="nonsense"):
        grid.make_config(**{**CONFIG, "policies": ["tbn", "nonsense"]})


def test_an_out_path_that_is_a_file_is_a_run_error(tmp_path, config):
    (tmp_path / "file").write_text("")
    with pytest.raises(run.RunError, match="exists and is not a folder"):
        run.run_grid(config, tmp_path / "file")


def user_images(seed: int = 0) -> ImageSet:
    """64 images a user might hold: 28 x 28 grayscale as floats in [0, 1], labels 0..9."""
    generator = torch.Generator().manual_seed(seed)
    return ImageSet.from_tensors(torch.rand(64, 1, 28, 28, generator=generator), torch.arange(64) % 10)


USER_GRID = {
    "dataset": "fmnist-c",
    "policies": ["source", "tbn"],
    "settings": ["single"],
    "corruptions": ["none"],
    "batch_size": 16,
}


@pytest.mark.parametrize("corruptions", [["fog", "gaussian_noise"], ["none"]])
def test_a_users_images_give_the_rows_of_the_command_line_on_their_file(tmp_path, cache_dir, corruptions):
    images = user_images()
    settings = ["single"] if corruptions == ["none"] else ["single", "continual"]
    arguments = {**USER_GRID, "corruptions": corruptions, "settings": settings}
    config = grid.make_config(**arguments)
    result = run.run_grid(config, tmp_path / "notebook", device="cpu", cache_dir=cache_dir, images=images)
    assert result.status == "complete" and len(result.rows) == len(grid.row_keys(result.config))
    assert {row["images"] for row in result.rows} == {grid.fingerprint_images(images)}
    assert {row["n"] for row in result.rows} == {64}
    images.save(tmp_path / "images.pt")
    assert (
        cli.main(
            [
                *cli_args(arguments),
                "--images",
                str(tmp_path / "images.pt"),
                "--cache-dir",
                str(cache_dir),
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    assert read_rows(tmp_path / "cli" / results.RESULTS_NAME) == read_rows(tmp_path / "notebook" / results.RESULTS_NAME)


def test_a_folder_of_other_images_is_refused_and_the_images_are_required(tmp_path, cache_dir):
    config = grid.make_config(**USER_GRID)
    out = tmp_path / "out"
    run.run_grid(config, out, device="cpu", cache_dir=cache_dir, images=user_images())
    with pytest.raises(results.ConfigMismatchError, match="images"):
        run.run_grid(config, out, device="cpu", cache_dir=cache_dir, images=user_images(seed=1))
    with pytest.raises(results.ConfigMismatchError, match="images"):
        run.run_grid(config, out, device="cpu", cache_dir=cache_dir)
    stored = results.read_config(out)
    with pytest.raises(run.RunError, match="pass them"):
        run.run_grid(stored, out, device="cpu", cache_dir=cache_dir)
    assert run.run_grid(stored, out, device="cpu", cache_dir=cache_dir, images=user_images()).added == 0


def test_an_images_file_that_is_no_set_of_images_is_one_error(tmp_path, capsys):
    torch.save({"pictures": torch.zeros(2)}, tmp_path / "bad.pt")
    for path in (tmp_path / "bad.pt", tmp_path / "missing.pt"):
        assert cli.main(["run", "--corruptions", "none", "--images", str(path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and f"--images {path}" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.multiprocess
def test_worker_processes_stream_the_users_images_to_the_rows_of_a_serial_run(tmp_path, cache_dir):
    config = grid.make_config(**{**USER_GRID, "corruptions": ["fog"], "settings": ["single", "continual"]})
    serial = run.run_grid(config, tmp_path / "serial", device="cpu", cache_dir=cache_dir, images=user_images())
    parallel = run.run_grid(
        config, tmp_path / "parallel", device="cpu", cache_dir=cache_dir, images=user_images(), workers=2
    )
    assert parallel.status == "complete" and parallel.rows == serial.rows


def test_a_window_grid_counts_the_errors_of_each_frame_predicted_through_its_window(tmp_path, cache_dir):
    import tta
    from tta_bench.models import load_bundled_model

    window_config = grid.make_config(
        dataset="fmnist-c",
        policies=["tbn", "rbn"],
        methods=["none", "lame"],
        orders=["sorted"],
        corruptions=["fog"],
        n_examples=40,
        batch_size=1,
        window=8,
    )
    assert grid.GridConfig.from_json(window_config.to_json()) == window_config
    outcome = run.run_grid(window_config, tmp_path / "out", device="cpu", cache_dir=cache_dir)
    rows = {(r["method"], r["policy"]): r for r in read_rows(tmp_path / "out" / "results.jsonl")}
    assert len(rows) == 4 == len(outcome.rows) and all(r["window"] == 8 and r["n"] == 40 for r in rows.values())
    # the same frames through tta.SlidingWindow by hand
    stream = tta_streams_stream(cache_dir)
    for (method, policy), row in rows.items():
        model = tta.adapt(load_bundled_model(), policy)
        learner = model if method == "none" else tta.attach_method(model, method)
        window = tta.SlidingWindow(learner, 8)
        errors = 0
        with torch.no_grad():
            for x, y, _ in stream:
                errors += int((window(x).argmax(1) != y).sum())
        assert row["errors"] == errors, (method, policy)


def tta_streams_stream(cache_dir: Path):
    import tta_streams

    return tta_streams.Stream(
        "fmnist",
        corruptions=["fog"],
        severities=5,
        order="sorted",
        n_examples=40,
        batch_size=1,
        seed=0,
        cache_dir=cache_dir,
    )


@pytest.mark.parametrize(
    ("window", "batch_size", "named"),
    [(1, 1, "--window must be an integer of at least 2"), (8, 4, "needs --batch-size 1")],
)
def test_a_window_below_two_frames_or_over_batches_is_refused(window, batch_size, named):
    with pytest.raises(grid.ConfigError, match=named):
        grid.make_config(dataset="fmnist-c", batch_size=batch_size, window=window)
