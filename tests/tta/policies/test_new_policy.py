"""A new policy is one new module and one registration: the contract tests cover it with no test list edited."""

from __future__ import annotations

import importlib
import inspect
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

import tta
import tta.registry
from tests.tta.conftest import MODELS
from tests.tta.policies import test_contract

NAME = "throwaway_ema"

MODULE = textwrap.dedent(f'''
    """A policy written for this test only: an EMA of the batch statistics at a fixed rate."""

    from typing import Annotated

    import torch
    from torch import Tensor

    from tta.options import Range
    from tta.policies.base import source_mean, source_var
    from tta.policies.running import RunningStatsPolicy, State
    from tta.registry import register_policy


    @register_policy("{NAME}")
    class ThrowawayEMA(RunningStatsPolicy):
        def __init__(self, bn, *, rate: Annotated[float, Range(0, 1)] = 0.5, **base: object) -> None:
            super().__init__(bn, **base)
            self.rate = rate
            self.add_state("running_mean", source_mean)
            self.add_state("running_var", source_var)

        def update(self, mean: Tensor, var: Tensor, n: int) -> dict[str, Tensor]:
            return {{
                "running_mean": torch.lerp(self.running_mean, mean, self.rate),
                "running_var": torch.lerp(self.running_var, var, self.rate),
            }}

        def statistics(self, state: State) -> tuple[Tensor, Tensor]:
            return state["running_mean"], state["running_var"]
''')


def runs_per_policy() -> int:
    """How many contract tests one policy gets: each test times its other parameters."""
    total = 0
    for name, test in vars(test_contract).items():
        if not name.startswith("test_"):
            continue
        runs = len(MODELS) if "model_name" in inspect.signature(test).parameters else 1
        for mark in getattr(test, "pytestmark", []):
            if mark.name == "parametrize":
                runs *= len(mark.args[1])
        total += runs
    return total


@pytest.fixture
def throwaway_module(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """The module written to a temporary folder, importable from it; the registry is restored afterwards."""
    (tmp_path / "throwaway_policy.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(tta.registry._POLICIES, "classes", dict(tta.registry._POLICIES.classes))
    monkeypatch.delitem(sys.modules, "throwaway_policy", raising=False)
    return tmp_path


def test_a_registered_policy_is_listed_with_the_facts_its_class_declares(throwaway_module: pathlib.Path) -> None:
    importlib.import_module("throwaway_policy")
    assert tta.list_policies()[-1] == NAME
    layer_class = tta.get_policy(NAME)
    assert layer_class.stateful and layer_class.combines_across_processes and not layer_class.uses_predictions
    assert tta.policy_options(NAME) == {"rate": 0.5}


@pytest.mark.multiprocess
def test_the_contract_tests_collect_and_pass_a_policy_from_a_temporary_module(throwaway_module: pathlib.Path) -> None:
    """pytest, in a new process that imports the module as a plugin before collecting, runs every contract
    test for the new policy (its ``policy`` parameter is read from the registry at collection)."""
    root = pathlib.Path(__file__).parents[3]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(throwaway_module), str(root)])}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "throwaway_policy",
        str(pathlib.Path(test_contract.__file__)),
        "-k",
        NAME,
    ]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) == runs_per_policy(), result.stdout[-3000:]
    assert "failed" not in result.stdout and "skipped" not in result.stdout
