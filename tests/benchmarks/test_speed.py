"""``tta-bench speed``: every policy is timed and compared with ``source`` (no timing thresholds here:
speed targets are read from the command's printed numbers)."""

from __future__ import annotations

import math

import pytest
from torch import nn

import tta
from benchmarks import cli
from benchmarks.speed import measure_speed


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))


def test_every_policy_gets_a_positive_throughput_and_source_has_ratio_one():
    model = tiny_model()
    model(__import__("torch").rand(2, 1, 8, 8))  # materialize the lazy layer
    results = measure_speed(model, tta.policies(), input_shape=(1, 8, 8), batch_size=4,
                            warmup=1, repeats=2, batches_per_repeat=1)
    assert [r.policy for r in results] == tta.policies()
    for r in results:
        assert r.images_per_s > 0 and len(r.runs) == 2 and math.isfinite(r.ratio_to_source)
    source = results[0]
    assert source.ratio_to_source == 1.0
    for r in results:
        assert r.ratio_to_source == pytest.approx(r.images_per_s / source.images_per_s)


def test_the_input_model_is_left_unadapted():
    model = tiny_model()
    model(__import__("torch").rand(2, 1, 8, 8))
    measure_speed(model, ["tbn"], input_shape=(1, 8, 8), batch_size=2, warmup=0, repeats=1, batches_per_repeat=1)
    assert tta.policy_layers(model) == []
    assert isinstance(model[1], nn.BatchNorm2d)


def test_speed_command_prints_a_row_per_policy(capsys):
    assert cli.main(["speed", "--policies", "tbn,rbn", "--batch-size", "8", "--warmup", "0",
                     "--repeats", "1", "--batches-per-repeat", "1", "--device", "cpu"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in lines] == ["policy", "tbn", "rbn"]


def test_speed_refuses_an_unknown_policy(capsys):
    assert cli.main(["speed", "--policies", "tbn,warp_drive"]) == 2
    assert "warp_drive" in capsys.readouterr().err


def test_methods_are_timed_over_every_policy_against_source_under_none():
    model = tiny_model()
    model(__import__("torch").rand(2, 1, 8, 8))
    results = measure_speed(model, ["tbn", "rbn"], methods=["none", "tent"], input_shape=(1, 8, 8), batch_size=4,
                            warmup=1, repeats=2, batches_per_repeat=1)
    assert [(r.method, r.policy) for r in results] == [
        ("none", "tbn"), ("none", "rbn"), ("tent", "tbn"), ("tent", "rbn")]
    assert all(r.images_per_s > 0 and math.isfinite(r.ratio_to_source) for r in results)
    assert tta.policy_layers(model) == []


def test_speed_command_with_methods_prints_a_row_per_method_and_policy(capsys):
    assert cli.main(["speed", "--methods", "none,tent", "--policies", "source,tbn", "--batch-size", "8",
                     "--warmup", "0", "--repeats", "1", "--batches-per-repeat", "1", "--device", "cpu"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [[c.strip() for c in line.split("|")[1:3]] for line in lines] == [
        ["method", "policy"], ["none", "source"], ["none", "tbn"], ["tent", "source"], ["tent", "tbn"]]
    source = lines[1].split("|")
    assert source[4].strip() == "1.00"


def test_speed_refuses_an_unknown_method_and_an_option_of_a_method_not_timed(capsys):
    assert cli.main(["speed", "--methods", "none,warp"]) == 2
    assert "warp" in capsys.readouterr().err
    assert cli.main(["speed", "--policies", "tbn", "--option", "tent.lr=0.1"]) == 2
    assert "not among --methods" in capsys.readouterr().err


def test_speed_times_dua_with_its_options(capsys):
    assert cli.main(["speed", "--methods", "dua", "--policies", "momentum_decay", "--option", "dua.copies=2",
                     "--batch-size", "4", "--warmup", "0", "--repeats", "1", "--batches-per-repeat", "1",
                     "--device", "cpu"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [[c.strip() for c in line.split("|")[1:3]] for line in lines] == [
        ["method", "policy"], ["dua", "momentum_decay"]]
