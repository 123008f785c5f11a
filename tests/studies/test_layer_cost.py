"""``python -m studies.layer_cost``: every BatchNorm layer of the bundled model is timed on its own input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from studies import layer_cost
from tta_bench.source_model import load_bundled_model

pytestmark = pytest.mark.slow


def test_each_layer_is_recorded_with_the_input_the_model_gives_it():
    model = load_bundled_model().eval()
    x = torch.rand(3, 1, 28, 28)
    recorded = layer_cost.recorded_inputs(model, x)
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [bn for bn, _ in recorded] == layers
    assert all(inputs.shape[:2] == (3, bn.num_features) for bn, inputs in recorded)
    with torch.inference_mode():  # the stem's BatchNorm sees the stem convolution of the standardized input
        stem_input = model.stem[0](model.normalize(x))
    torch.testing.assert_close(recorded[0][1], stem_input)


def test_main_prints_a_line_per_layer_and_the_sums(capsys):
    layer_cost.main(["--batch-size", "2", "--threads", "1", "--policies", "tbn,rbn", "--calls", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    n_layers = sum(isinstance(m, nn.BatchNorm2d) for m in load_bundled_model().modules())
    assert len(lines) == n_layers + 2
    assert all(line.startswith(f"layer {i} ") for i, line in enumerate(lines[1:-1]))
    for name in ("unadapted", "F.batch_norm train", "moments kernel", "tbn", "rbn"):
        assert f"{name} " in lines[-1]
