"""The two other Fashion-MNIST families (VGG-style, pre-activation ResNet) and their training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tta
from tests.benchmarks.test_source_model import tiny_train_root  # noqa: F401  (the fixture)
from tta_bench.model_families import FAMILIES, FashionPreActResNet, FashionVGG, build_family
from tta_bench.source_model import FMNIST_MEAN, FMNIST_STD
from tta_bench.train_source import train_source


@pytest.mark.parametrize(("name", "batchnorms"), [("resnet", 10), ("vgg", 5), ("preact", 7)])
def test_each_family_maps_images_to_ten_logits_through_its_batchnorm_layers(name, batchnorms):
    model = build_family(name).eval()
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == batchnorms
    assert isinstance([m for m in model.modules() if isinstance(m, nn.Linear)][-1], nn.Linear)


@pytest.mark.parametrize("cls", [FashionVGG, FashionPreActResNet])
def test_the_standardization_is_inside_the_model(cls):
    model = cls().eval()
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(model.normalize(x), (x - FMNIST_MEAN) / FMNIST_STD)


@pytest.mark.parametrize("name", ["vgg", "preact"])
def test_source_over_each_family_is_the_model_bit_for_bit(name):
    model = build_family(name).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(tta.adapt(model, "source")(x), expected)


def test_an_unknown_family_is_refused_naming_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown model family 'alexnet'; choose from: resnet, vgg, preact"):
        train_source(tmp_path / "m.pt", arch="alexnet")
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("name", ["vgg", "preact"])
def test_train_source_trains_the_family_it_is_given(name, tiny_train_root, tmp_path):  # noqa: F811
    out = tmp_path / f"{name}.pt"
    result = train_source(out, epochs=1, seed=0, root=tiny_train_root, batch_size=32, n_test=20, arch=name)
    model = FAMILIES[name]()
    model.load_state_dict(torch.load(out, weights_only=True))  # the checkpoint is that family's
    assert result["arch"] == name


@pytest.mark.slow
@pytest.mark.parametrize(("name", "cls"), [("vgg", FashionVGG), ("preact", FashionPreActResNet)])
def test_the_committed_checkpoint_of_each_family_classifies_the_clean_test_split(name, cls):
    import json
    from pathlib import Path

    import tta_streams

    weights = Path(__file__).resolve().parents[2] / "benchmarks" / "weights" / f"fmnist_{name}.pt"
    model = cls().eval()
    model.load_state_dict(torch.load(weights, weights_only=True))
    test = tta_streams.fashion_mnist("test")
    with torch.no_grad():
        accuracy = float((model(test.images[:2000].float().div(255)).argmax(1) == test.labels[:2000]).float().mean())
    recorded = json.loads(weights.with_suffix(".json").read_text())
    assert recorded["arch"] == name and recorded["test_accuracy"] > 0.9  # recorded by train-source on 10,000
    assert accuracy > 0.88
