"""Model loading for the benchmark: specs, offline errors, cached weights, BatchNorm check.

Every cache (TORCH_HOME, the Hugging Face hub cache, RobustBench's model_dir) points at a temporary
folder, so nothing is downloaded; "cached" weights are random ones written in the real file layout.
"""

from __future__ import annotations

import os
import re

import huggingface_hub.constants
import pytest
import torch
import torchvision
from torch import nn

from tta_bench.models import MissingWeightsError, count_batchnorm, load_model
from tta_bench.source_model import load_bundled_model

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(autouse=True)
def empty_caches(tmp_path, monkeypatch):
    """Point every weights cache at empty temporary folders."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("TTA_CACHE_DIR", str(tmp_path / "tta"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def _tiny_bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))


# --- bundled -----------------------------------------------------------------------------------------


def test_bundled_spec_gives_the_shipped_model_in_eval_mode():
    model = load_model("bundled", dataset="fmnist-c")
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), load_bundled_model()(x))
    assert not model.training and count_batchnorm(model) > 0


def test_bundled_spec_refuses_other_datasets():
    with pytest.raises(ValueError, match="Fashion-MNIST"):
        load_model("bundled", dataset="cifar10-c")


def test_unknown_dataset_and_spec_are_named_in_the_error():
    with pytest.raises(ValueError, match="svhn"):
        load_model("bundled", dataset="svhn")
    with pytest.raises(ValueError, match="'resnet'"):
        load_model("resnet", dataset="imagenet")


# --- torchvision -------------------------------------------------------------------------------------


def test_torchvision_without_cached_weights_names_the_missing_file(empty_caches):
    with pytest.raises(MissingWeightsError) as error:
        load_model("torchvision:resnet18", dataset="imagenet")
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message  # the file name of torchvision's published weights
    assert str(empty_caches / "torch" / "hub" / "checkpoints") in message


def test_torchvision_with_cached_weights_loads_them_behind_imagenet_normalization(empty_caches):
    reference = torchvision.models.resnet18().eval()
    checkpoints = empty_caches / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(reference.state_dict(), checkpoints / "resnet18-f37072fd.pth")

    model = load_model("torchvision:resnet18", dataset="imagenet-c")
    assert not model.training and count_batchnorm(model) == 20
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference((x - IMAGENET_MEAN) / IMAGENET_STD))


def test_torchvision_model_without_batchnorm_is_rejected(empty_caches):
    checkpoints = empty_caches / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), checkpoints / "squeezenet1_1-b8a52dc0.pth")
    with pytest.raises(ValueError, match="no BatchNorm"):
        load_model("torchvision:squeezenet1_1", dataset="imagenet")


def test_imagenet_classifiers_refuse_other_datasets():
    with pytest.raises(ValueError, match="ImageNet"):
        load_model("torchvision:resnet18", dataset="cifar10")


# --- timm ----------------------------------------------------------------------------------------------


def test_timm_without_cached_weights_names_the_missing_file():
    with pytest.raises(MissingWeightsError, match=r"timm/mobilenetv3_small_050\.lamb_in1k.*model\.safetensors"):
        load_model("timm:mobilenetv3_small_050", dataset="imagenet")


def test_timm_with_weights_in_the_hub_cache_loads_them(empty_caches):
    import safetensors.torch
    import timm

    reference = timm.create_model("mobilenetv3_small_050").eval()
    # Hugging Face hub cache layout: models--<org>--<name>/{refs/main, snapshots/<commit>/<file>}.
    repo = empty_caches / "hf" / "models--timm--mobilenetv3_small_050.lamb_in1k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    safetensors.torch.save_file(reference.state_dict(), repo / "snapshots" / commit / "model.safetensors")

    model = load_model("timm:mobilenetv3_small_050", dataset="imagenet")
    assert not model.training and count_batchnorm(model) > 0
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference((x - IMAGENET_MEAN) / IMAGENET_STD))


# --- robustbench ---------------------------------------------------------------------------------------


def test_robustbench_without_checkpoint_names_the_missing_file(empty_caches):
    with pytest.raises(MissingWeightsError) as error:
        load_model("robustbench:Standard", dataset="cifar10-c", model_dir=empty_caches / "rb")
    assert str(empty_caches / "rb" / "cifar10" / "corruptions" / "Standard.pt") in str(error.value)


def test_robustbench_default_model_dir_is_under_the_tta_cache(empty_caches):
    with pytest.raises(MissingWeightsError, match=re.escape(str(empty_caches / "tta" / "models"))):
        load_model("robustbench:Standard", dataset="cifar10")


def test_robustbench_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="NoSuchModel2099"):
        load_model("robustbench:NoSuchModel2099", dataset="cifar10")


def test_robustbench_with_cached_checkpoint_loads_it_through_robustbench(empty_caches):
    from tta_streams._robustbench import import_robustbench

    import_robustbench()
    from robustbench.model_zoo.cifar10 import Hendrycks2020AugMixResNeXtNet

    reference = Hendrycks2020AugMixResNeXtNet().eval()
    folder = empty_caches / "rb" / "cifar10" / "corruptions"
    folder.mkdir(parents=True)
    torch.save(reference.state_dict(), folder / "Hendrycks2020AugMix_ResNeXt.pt")

    model = load_model("robustbench:Hendrycks2020AugMix_ResNeXt", dataset="cifar10", model_dir=empty_caches / "rb")
    assert not model.training and count_batchnorm(model) > 0
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))  # preprocessing is inside the model


# --- paths and callables -----------------------------------------------------------------------------


class _WritesMarker:
    """Unpickling this object opens (creates) ``marker``: stands for any code a pickle can run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_whole_pickled_module_loads_only_with_trust_pickle(tmp_path):
    net = _tiny_bn_net()
    net(torch.rand(2, 1, 8, 8))  # materialize the lazy layer
    net.train()
    torch.save(net, tmp_path / "net.pt")
    with pytest.raises(ValueError, match="--trust-pickle"):
        load_model(str(tmp_path / "net.pt"), dataset="fmnist")
    model = load_model(str(tmp_path / "net.pt"), dataset="fmnist", trust_pickle=True)
    assert not model.training
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net.eval()(x))


def test_a_malicious_pickle_runs_nothing_without_trust_pickle(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"weight": _WritesMarker(str(marker))}, tmp_path / "evil.pt")
    for extra in ({}, {"arch": "bundled"}):
        with pytest.raises(ValueError, match=r"not a plain state dict.*--trust-pickle"):
            try:
                load_model(str(tmp_path / "evil.pt"), dataset="fmnist", **extra)
            finally:
                assert not marker.exists()


def test_state_dict_without_arch_asks_for_arch(tmp_path):
    torch.save(nn.BatchNorm2d(3).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ValueError, match=r"state dict.*--arch"):
        load_model(str(tmp_path / "sd.pt"), dataset="fmnist")


def test_state_dict_with_arch_loads_the_weights(tmp_path):
    reference = load_bundled_model()
    torch.save(reference.state_dict(), tmp_path / "sd.pt")
    model = load_model(str(tmp_path / "sd.pt"), dataset="fmnist", arch="bundled")
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_state_dict_of_another_architecture_is_a_clear_error(tmp_path):
    torch.save(nn.BatchNorm2d(3).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="does not fit --arch 'bundled'"):
        load_model(str(tmp_path / "sd.pt"), dataset="fmnist", arch="bundled")


def test_state_dict_into_a_torchvision_architecture_with_arguments(tmp_path):
    reference = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(reference.state_dict(), tmp_path / "sd.pt")
    model = load_model(
        str(tmp_path / "sd.pt"), dataset="imagenet", arch="torchvision:resnet18", model_args={"num_classes": 10}
    )
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference((x - IMAGENET_MEAN) / IMAGENET_STD))


def test_torchscript_archive_is_refused_with_a_reason(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).eval()
    with pytest.warns(FutureWarning):
        torch.jit.script(net).save(str(tmp_path / "net.pt"))
    with pytest.raises(ValueError, match=r"TorchScript archive.*state_dict"):
        load_model(str(tmp_path / "net.pt"), dataset="fmnist")


def test_missing_checkpoint_path_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing.pt"):
        load_model(str(tmp_path / "nothing.pt"), dataset="fmnist")


def test_module_callable_spec_builds_the_model():
    model = load_model("tta_bench.source_model:build_model", dataset="fmnist")
    assert not model.training and count_batchnorm(model) > 0


def test_module_callable_spec_takes_keyword_arguments():
    model = load_model("torchvision.models:resnet18", dataset="imagenet", model_args={"num_classes": 7})
    assert model.fc.out_features == 7


def test_model_arguments_where_nothing_takes_them_are_refused():
    for spec, dataset in (
        ("bundled", "fmnist"),
        ("torchvision:resnet18", "imagenet"),
        ("robustbench:Standard", "cifar10"),
    ):
        with pytest.raises(ValueError, match="takes none"):
            load_model(spec, dataset=dataset, model_args={"num_classes": 7})


def test_model_without_batchnorm_is_rejected_before_anything_runs():
    with pytest.raises(ValueError, match="no BatchNorm"):
        load_model("torch.nn:Identity", dataset="fmnist")


def test_count_batchnorm_counts_every_kind():
    model = nn.Sequential(nn.BatchNorm1d(2), nn.BatchNorm2d(2), nn.BatchNorm3d(2), nn.LayerNorm(2), nn.GroupNorm(1, 2))
    assert count_batchnorm(model) == 3


def _hub_cache_file(root, org_repo: str, filename: str):
    """The path of ``filename`` in a Hugging Face hub cache layout under ``root``."""
    repo = root / "hf" / f"models--{org_repo.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    return repo / "snapshots" / commit / filename


@pytest.mark.parametrize("library", ["torchvision", "timm", "robustbench"])
def test_crafted_files_in_the_library_weight_caches_run_nothing(empty_caches, library):
    """A shared cache is writable by others: the libraries' own loaders must not unpickle code from it
    (torchvision's loader asks torch.load for a full unpickle)."""
    marker = empty_caches / "marker"
    evil = {"weight": _WritesMarker(str(marker))}
    if library == "torchvision":
        path = empty_caches / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
        spec, kwargs = "torchvision:resnet18", {"dataset": "imagenet"}
    elif library == "timm":
        path = _hub_cache_file(empty_caches, "timm/mobilenetv3_small_050.lamb_in1k", "pytorch_model.bin")
        spec, kwargs = "timm:mobilenetv3_small_050", {"dataset": "imagenet"}
    else:
        path = empty_caches / "rb" / "cifar10" / "corruptions" / "Hendrycks2020AugMix_ResNeXt.pt"
        spec = "robustbench:Hendrycks2020AugMix_ResNeXt"
        kwargs = {"dataset": "cifar10", "model_dir": empty_caches / "rb"}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(evil, path)
    with pytest.raises(ValueError, match=f"{re.escape(spec)}: a cached weights file is not plain tensors"):
        try:
            load_model(spec, **kwargs)
        finally:
            assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # the switch is restored
