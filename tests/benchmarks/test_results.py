"""The append-only results store: round trip, torn writes, duplicates and refusal of other arguments."""

from __future__ import annotations

import gzip
import json

import pytest

from tta_bench import grid
from tta_bench.results import ConfigMismatchError, FolderFileError, ResultStore, read_results, read_rows, results_file


def config(**overrides):
    args = dict(dataset="fmnist-c", policies="source,tbn", corruptions="brightness,contrast")
    args.update(overrides)
    return grid.make_config(**args)


def row(policy="tbn", corruption="brightness", errors=3, n=10, seed=0):
    return {
        "policy": policy,
        "setting": "single",
        "order": "iid",
        "seed": seed,
        "corruption": corruption,
        "severity": 5,
        "n": n,
        "errors": errors,
        "error": 100.0 * errors / n,
    }


def test_rows_survive_reopening_and_count_as_done(tmp_path):
    store = ResultStore.open(tmp_path, config())
    assert store.append([row("source"), row("tbn")]) == 2
    again = ResultStore.open(tmp_path, config())
    assert again.rows() == [row("source"), row("tbn")]
    assert again.done(("none", "tbn", "single", "iid", 0, "brightness", 5))
    assert not again.done(("none", "tbn", "single", "iid", 0, "contrast", 5))
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [row("source"), row("tbn")]


def test_a_row_already_stored_is_not_appended_twice(tmp_path):
    store = ResultStore.open(tmp_path, config())
    store.append([row()])
    assert store.append([row(), row(corruption="contrast")]) == 1
    assert len(read_rows(tmp_path / "results.jsonl")) == 2


def test_a_torn_last_line_is_dropped_and_appends_stay_one_object_per_line(tmp_path):
    store = ResultStore.open(tmp_path, config())
    store.append([row("source")])
    with open(tmp_path / "results.jsonl", "a") as file:
        file.write('{"policy": "tbn", "sett')  # a write cut by a kill
    assert read_rows(tmp_path / "results.jsonl") == [row("source")]
    store = ResultStore.open(tmp_path, config())
    store.append([row("tbn")])
    assert read_rows(tmp_path / "results.jsonl") == [row("source"), row("tbn")]


def test_a_malformed_line_inside_the_file_is_an_error_naming_it(tmp_path):
    ResultStore.open(tmp_path, config()).append([row("source")])
    with open(tmp_path / "results.jsonl", "a") as file:
        file.write("garbage\n")
        file.write(json.dumps(row("tbn")) + "\n")
    with pytest.raises(ValueError, match="line 2"):
        read_rows(tmp_path / "results.jsonl")


def test_results_of_other_arguments_are_refused_naming_the_difference(tmp_path):
    ResultStore.open(tmp_path, config()).append([row()])
    with pytest.raises(ConfigMismatchError, match="batch_size") as raised:
        ResultStore.open(tmp_path, config(batch_size=32))
    assert "another --out" in str(raised.value)
    with pytest.raises(ConfigMismatchError, match="policies"):
        ResultStore.open(tmp_path, config(policies="source"))
    # refused, not mixed: the file is untouched
    assert read_rows(tmp_path / "results.jsonl") == [row()]


def test_results_without_their_config_are_refused(tmp_path):
    ResultStore.open(tmp_path, config()).append([row()])
    (tmp_path / "config.json").unlink()
    with pytest.raises(ConfigMismatchError, match=r"config.json"):
        ResultStore.open(tmp_path, config())


def test_a_folder_without_results_takes_the_new_config(tmp_path):
    ResultStore.open(tmp_path, config())
    store = ResultStore.open(tmp_path, config(batch_size=32))
    assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 32
    assert store.rows() == []


def test_rows_missing_required_keys_are_rejected(tmp_path):
    store = ResultStore.open(tmp_path, config())
    incomplete = row()
    del incomplete["errors"]
    with pytest.raises(ValueError, match="errors"):
        store.append([incomplete])


def test_a_failed_append_marks_no_row_done(tmp_path):
    store = ResultStore.open(tmp_path, config())
    (tmp_path / "results.jsonl").mkdir()  # every write to it fails
    with pytest.raises(ValueError, match=r"results.jsonl"):
        store.append([row()])
    assert not store.done(grid.row_key(row())) and store.rows() == []


@pytest.mark.parametrize("line", ["5", "null", "[]"])
def test_a_line_that_is_no_row_is_an_error_naming_it(tmp_path, line):
    ResultStore.open(tmp_path, config()).append([row("source")])
    with open(tmp_path / "results.jsonl", "a") as file:
        file.write(line + "\n")
    with pytest.raises(ValueError, match="line 2"):
        read_rows(tmp_path / "results.jsonl")


def test_an_archive_is_read_as_the_file_it_compresses_and_the_plain_file_wins(tmp_path):
    ResultStore.open(tmp_path, config()).append([row("source"), row("tbn"), row("tbn")])
    plain = tmp_path / "results.jsonl"
    (tmp_path / "results.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    assert results_file(tmp_path) == plain  # both there: the one runs append to
    plain.unlink()
    assert results_file(tmp_path) == tmp_path / "results.jsonl.gz"
    assert read_results(results_file(tmp_path)) == ([row("source"), row("tbn")], [])


def test_a_damaged_archive_is_an_error_naming_it(tmp_path):
    (tmp_path / "results.jsonl.gz").write_bytes(gzip.compress(json.dumps(row()).encode() + b"\n")[:-6])
    with pytest.raises(FolderFileError, match=r"results.jsonl.gz: not a complete gzip archive"):
        read_results(tmp_path / "results.jsonl.gz")
