"""The corruption and severity list parser shared by Stream and the benchmark CLI."""

from __future__ import annotations

import numpy as np
import pytest

import tta_streams
from tta_streams.parsing import (
    parse_corruptions,
    parse_severities,
    parse_severity_list,
    split_list,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("all", tuple(tta_streams.CORRUPTIONS)),
        (["all"], tuple(tta_streams.CORRUPTIONS)),
        ("none", ("none",)),
        (None, ("none",)),
        (["none"], ("none",)),
        ("fog", ("fog",)),
        ("fog, snow,", ("fog", "snow")),
        (["snow", "fog"], ("snow", "fog")),
        (("saturate",), ("saturate",)),
    ],
)
def test_accepted_corruption_lists(given, expected):
    assert parse_corruptions(given) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "no corruption given"),
        ([], "no corruption given"),
        ("fog,mist", "unknown corruption 'mist'; choose from: all, none, gaussian_noise"),
        ("fogg", r"unknown corruption 'fogg' \(did you mean 'fog'\?\)"),
        ("fog,all", "unknown corruption 'all'"),
        (["fog", "fog"], "corruption 'fog' is listed twice"),
        ("none,fog", "cannot be mixed with corruptions"),
    ],
)
def test_refused_corruption_lists_name_the_problem(given, message):
    with pytest.raises(ValueError, match=message):
        parse_corruptions(given)


@pytest.mark.parametrize(
    ("given", "expected"),
    [(5, (5,)), (np.int64(2), (2,)), ([1, 3], (1, 3)), ((5, 1), (5, 1)), (np.array([2, 4]), (2, 4))],
)
def test_accepted_severities(given, expected):
    assert parse_severities(given) == expected
    assert all(type(v) is int for v in parse_severities(given))


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (0, "severity must be an integer in 1..5, got 0"),
        ([3, 6], "severity must be an integer in 1..5, got 6"),
        (True, "severities must be an integer in 1..5 or a list of them, got True"),
        ("5", "severities must be an integer in 1..5 or a list of them, got '5'"),
        ([2.0], "severity must be an integer in 1..5, got 2.0"),
        ([], "no severity given"),
        ([2, 2], "severity 2 is listed twice"),
    ],
)
def test_refused_severities_name_the_problem(given, message):
    with pytest.raises(ValueError, match=message):
        parse_severities(given)


def test_severity_text_is_a_comma_list_of_integers():
    assert parse_severity_list("1, 3,5,") == (1, 3, 5)
    with pytest.raises(ValueError, match="severity 'x' is not an integer"):
        parse_severity_list("1,x")
    with pytest.raises(ValueError, match="got 6"):
        parse_severity_list("6")
    with pytest.raises(ValueError, match="no severity given"):
        parse_severity_list(" , ")


def test_split_list_drops_blanks():
    assert split_list(" a, b,, ") == ["a", "b"]


def test_stream_and_grid_accept_the_same_corruption_spellings(tmp_path):
    from tta_bench import grid

    for text in ("all", "none", "fog, snow"):
        config = grid.make_config(dataset="fmnist-c", policies="source", corruptions=text)
        stream = tta_streams.Stream("fmnist", corruptions=text, n_examples=10, cache_dir=tmp_path)
        assert [c for c, _ in stream.domains] == [c for c, _ in grid.domains(config, "single")]
