"""``tta-bench speed``: every policy is timed and compared with ``source`` (no timing thresholds here:
speed targets are read from the command's printed numbers)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import tta
from tta_bench import cli, speed
from tta_bench.speed import measure_speed


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))


def test_every_policy_gets_a_positive_throughput_and_source_has_ratio_one():
    model = tiny_model()
    model(torch.rand(2, 1, 8, 8))  # materialize the lazy layer
    results = measure_speed(
        model, tta.list_policies(), input_shape=(1, 8, 8), batch_size=4, warmup=1, repeats=2, batches_per_repeat=1
    )
    assert [r.policy for r in results] == tta.list_policies()
    for r in results:
        assert r.images_per_s > 0 and len(r.runs) == 2 and math.isfinite(r.ratio_to_source)
        assert math.isfinite(r.ratio_to_unadapted) and r.spread[0] <= r.ratio_to_unadapted <= r.spread[1]
        assert r.compile_s is None and r.recompiles_on_batch_change is None
    assert results[0].ratio_to_source == 1.0  # each round's ratio of source to itself


class FakeClock:
    """``time.perf_counter`` for the benchmark: advanced only by the forwards of :class:`Costly`."""

    now = 0.0


class Costly(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        FakeClock.now += self.seconds
        return x


def test_ratios_are_images_per_second_relative_to_the_unadapted_model_and_to_source(monkeypatch):
    """With known costs per forward (a fake clock): unadapted 2 s, source 2.5 s, tbn 4 s, rbn 5 s."""
    costs = {"source": 0.5, "tbn": 2.0, "rbn": 3.0}  # on top of the model's own 2 s
    monkeypatch.setattr(speed.time, "perf_counter", lambda: FakeClock.now)
    monkeypatch.setattr(speed.tta, "adapt", lambda model, policy, **_: nn.Sequential(model, Costly(costs[policy])))
    results = measure_speed(
        nn.Sequential(Costly(2.0)),
        ["tbn", "rbn"],
        input_shape=(1,),
        batch_size=8,
        warmup=1,
        repeats=3,
        batches_per_repeat=2,
    )
    tbn, rbn = results
    assert tbn.images_per_s == pytest.approx(8 / 4.0) and rbn.images_per_s == pytest.approx(8 / 5.0)
    assert tbn.unadapted_images_per_s == pytest.approx(8 / 2.0)
    assert tbn.ratio_to_unadapted == pytest.approx(2 / 4) and rbn.ratio_to_unadapted == pytest.approx(2 / 5)
    assert tbn.ratio_to_source == pytest.approx(2.5 / 4) and rbn.ratio_to_source == pytest.approx(2.5 / 5)
    assert rbn.spread == pytest.approx((2 / 5, 2 / 5))  # the same in every round


@pytest.mark.compile
def test_compiled_models_report_the_first_call_and_do_not_recompile_for_another_batch_size():
    torch._dynamo.reset()
    model = tiny_model()
    model(torch.rand(2, 1, 8, 8))
    results = measure_speed(
        model,
        ["rbn"],
        input_shape=(1, 8, 8),
        batch_size=4,
        warmup=1,
        repeats=1,
        batches_per_repeat=1,
        compile=True,
        methods=("none", "tent", "lame"),  # lame's hook: a copy of rbn without it is compiled first
    )
    assert [result.method for result in results] == ["none", "tent", "lame"]
    for result in results:  # a method is attached to the compiled adapted model
        assert result.compile_s > 0 and result.images_per_s > 0 and math.isfinite(result.ratio_to_unadapted)
        assert result.recompiles_on_batch_change is False
        assert result.unadapted_recompiles is False and result.unadapted_compile_s > 0
        assert result.other_batch_size == 2


class BranchOnBatchSize(nn.Module):
    """A model whose own forward depends on the batch size: compiled, a smaller batch needs a new graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.shape[0] > 3 else x


def test_a_recompile_caused_by_the_model_itself_is_reported_for_the_unadapted_model_too():
    torch._dynamo.reset()
    model = nn.Sequential(tiny_model(), BranchOnBatchSize())
    model(torch.rand(2, 1, 8, 8))
    (result,) = measure_speed(
        model, ["tbn"], input_shape=(1, 8, 8), batch_size=4, warmup=1, repeats=1, batches_per_repeat=1, compile=True
    )
    assert result.unadapted_recompiles is True and result.recompiles_on_batch_change is True


def test_the_input_model_is_left_unadapted():
    model = tiny_model()
    model(torch.rand(2, 1, 8, 8))
    measure_speed(model, ["tbn"], input_shape=(1, 8, 8), batch_size=2, warmup=0, repeats=1, batches_per_repeat=1)
    assert tta.policy_layers(model) == []
    assert isinstance(model[1], nn.BatchNorm2d)


def test_speed_command_prints_a_row_per_policy(capsys):
    assert (
        cli.main(
            [
                "speed",
                "--policies",
                "tbn,rbn",
                "--batch-size",
                "8",
                "--warmup",
                "0",
                "--repeats",
                "1",
                "--batches-per-repeat",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in lines] == ["policy", "tbn", "rbn"]
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == [
        "policy",
        "images/s",
        "x unadapted",
        "spread (IQR)",
        "x source",
    ]


def test_speed_writes_the_printed_table_and_the_environment_to_its_out_file(capsys, tmp_path):
    out = tmp_path / "speed" / "table.md"
    args = ["speed", "--policies", "tbn", "--batch-size", "8", "--warmup", "0", "--repeats", "1"]
    assert cli.main([*args, "--batches-per-repeat", "1", "--device", "cpu", "--out", str(out)]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    written = out.read_text().splitlines()
    assert [line for line in written if line.startswith("| ")] == printed
    assert written[0].startswith("timing 1 policies") and "torch_version" in written[-1]


def test_speed_refuses_an_unknown_policy(capsys):
    assert cli.main(["speed", "--policies", "tbn,warp_drive"]) == 2
    assert "warp_drive" in capsys.readouterr().err


def test_methods_are_timed_over_every_policy_against_source_under_none():
    model = tiny_model()
    model(torch.rand(2, 1, 8, 8))
    results = measure_speed(
        model,
        ["tbn", "rbn"],
        methods=["none", "tent"],
        input_shape=(1, 8, 8),
        batch_size=4,
        warmup=1,
        repeats=2,
        batches_per_repeat=1,
    )
    assert [(r.method, r.policy) for r in results] == [
        ("none", "tbn"),
        ("none", "rbn"),
        ("tent", "tbn"),
        ("tent", "rbn"),
    ]
    assert all(r.images_per_s > 0 and math.isfinite(r.ratio_to_source) for r in results)
    assert tta.policy_layers(model) == []


def test_speed_command_with_methods_prints_a_row_per_method_and_policy(capsys):
    assert (
        cli.main(
            [
                "speed",
                "--methods",
                "none,tent",
                "--policies",
                "source,tbn",
                "--batch-size",
                "8",
                "--warmup",
                "0",
                "--repeats",
                "1",
                "--batches-per-repeat",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [[c.strip() for c in line.split("|")[1:3]] for line in lines] == [
        ["method", "policy"],
        ["none", "source"],
        ["none", "tbn"],
        ["tent", "source"],
        ["tent", "tbn"],
    ]
    source = lines[1].split("|")
    assert source[6].strip() == "1.00"


def test_speed_refuses_an_unknown_method_and_an_option_of_a_method_not_timed(capsys):
    assert cli.main(["speed", "--methods", "none,warp"]) == 2
    assert "warp" in capsys.readouterr().err
    assert cli.main(["speed", "--policies", "tbn", "--option", "tent.lr=0.1"]) == 2
    assert "not among --methods" in capsys.readouterr().err


def test_speed_times_dua_with_its_options(capsys):
    assert (
        cli.main(
            [
                "speed",
                "--methods",
                "dua",
                "--policies",
                "momentum_decay",
                "--option",
                "dua.copies=2",
                "--batch-size",
                "4",
                "--warmup",
                "0",
                "--repeats",
                "1",
                "--batches-per-repeat",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [[c.strip() for c in line.split("|")[1:3]] for line in lines] == [
        ["method", "policy"],
        ["dua", "momentum_decay"],
    ]


@pytest.mark.parametrize("flag", ["--batch-size", "--repeats", "--batches-per-repeat"])
def test_speed_refuses_a_size_below_one_before_printing_anything(capsys, flag):
    assert cli.main(["speed", "--policies", "tbn", "--device", "cpu", flag, "0"]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.count("error:") == 1 and "must be >= 1" in printed.err
