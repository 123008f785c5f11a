"""Data sources (docs/streams.md): embedded Fashion-MNIST, robustbench's CIFAR-C / ImageNet-C through tiny files
in the real on-disk layout, and the robustbench import shim."""

import gzip
import json
import struct
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tta_streams
import tta_streams.fmnist as fm
from tta_streams._robustbench import import_robustbench
from tta_streams.corruption_sets import _imagenet_helper_files


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


# ----------------------------------------------------------------------------- Fashion-MNIST
def test_embedded_test_split_is_the_balanced_10000_image_set_with_its_licence():
    data = tta_streams.fashion_mnist()
    assert data.images.shape == (10_000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.dtype == torch.int64
    assert torch.equal(data.labels.bincount(), torch.full((10,), 1000))  # 1,000 test images per class
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    licence = (resources.files("tta_streams") / "data" / "fashion_mnist" / "LICENSE").read_text()
    assert "MIT" in licence and "Zalando" in licence and "2017" in licence


def test_read_idx_parses_a_hand_written_file(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", array)
    assert np.array_equal(fm.read_idx(tmp_path / "x.gz"), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="not an idx file"):
        fm.read_idx(tmp_path / "bad")


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_train_split_is_read_from_root_in_both_layouts(tmp_path, layout):
    folder = tmp_path if layout == "flat" else tmp_path / "FashionMNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    write_idx(folder / "train-images-idx3-ubyte.gz", images)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 9, 9, 3]))
    data = tta_streams.fashion_mnist("train", root=tmp_path)
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))
    assert data.labels.tolist() == [0, 1, 2, 9, 9, 3]


def test_missing_train_split_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "_debian_dirs", lambda: [])
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.gz.*dataset-fashion-mnist"):
        tta_streams.fashion_mnist("train", root=tmp_path, download=False)
    with pytest.raises(ValueError, match="unknown split"):
        tta_streams.fashion_mnist("val")


# ----------------------------------------------------------------------------- robustbench
def test_robustbench_imports_through_the_shim():
    rb = import_robustbench()
    assert callable(rb.data.load_cifar10c) and callable(rb.data.load_imagenetc)
    assert sys.modules["autoattack"].__name__ == "pyautoattack"
    assert sys.modules["autoattack.state"].__name__ == "pyautoattack.state"


def write_cifar_c(root: Path, folder: str, corruptions, seed: int = 0) -> tuple[dict, np.ndarray]:
    """A tiny CIFAR-C in the real layout: 5 severities x 10,000 stacked (2 x 2 pixels to stay small)."""
    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True)
    labels = np.tile(rng.integers(0, 10, 10_000, dtype=np.uint8), 5)
    np.save(root / folder / "labels.npy", labels)
    files = {}
    for c in corruptions:
        files[c] = rng.integers(0, 256, (50_000, 2, 2, 3), dtype=np.uint8)
        np.save(root / folder / f"{c}.npy", files[c])
    return files, labels


def test_cifar10c_domain_is_loaded_exactly_through_robustbench(tmp_path):
    files, labels = write_cifar_c(tmp_path, "CIFAR-10-C", ["fog"])
    data = tta_streams.cifar_c("cifar10-c", "fog", 3, tmp_path, n_examples=25)
    expected = files["fog"][20_000:20_025].transpose(0, 3, 1, 2)  # severity 3 = third block of 10,000
    assert data.images.dtype == torch.uint8 and np.array_equal(data.images.numpy(), expected)
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == labels[:25].tolist()
    assert data.classes[0] == "airplane" and len(data.classes) == 10


def test_cifar100c_missing_files_are_one_clear_error_and_nothing_is_downloaded(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CIFAR-100-C[/\\]fog\.npy is missing.*zenodo\.org/records/3555552"):
        tta_streams.cifar_c("cifar100-c", "fog", 5, tmp_path / "data")
    assert not (tmp_path / "data").exists()  # robustbench would have created it and started a download
    write_cifar_c(tmp_path, "CIFAR-10-C", ["fog"])
    with pytest.raises(FileNotFoundError, match=r"snow\.npy is missing.*2535967"):
        tta_streams.cifar_c("cifar10-c", "snow", 5, tmp_path)


def test_cifar_c_bad_arguments(tmp_path):
    write_cifar_c(tmp_path, "CIFAR-10-C", ["fog"])
    with pytest.raises(ValueError, match="unknown precomputed set"):
        tta_streams.cifar_c("cifar10", "fog", 5, tmp_path)
    with pytest.raises(ValueError, match="severity"):
        tta_streams.cifar_c("cifar10-c", "fog", 6, tmp_path)
    with pytest.raises(ValueError, match="unknown corruption"):
        tta_streams.cifar_c("cifar10-c", "mist", 5, tmp_path)
    with pytest.raises(ValueError, match="larger than"):
        tta_streams.cifar_c("cifar10-c", "fog", 5, tmp_path, n_examples=10_001)


def write_imagenet_c(root: Path, corruption: str, severity: int, n: int) -> list[np.ndarray]:
    ids, wnids = _imagenet_helper_files()
    folder = root / "ImageNet-C" / corruption / str(severity)
    for wnid in wnids:
        (folder / wnid).mkdir(parents=True)
    rng = np.random.default_rng(1)
    decoded = []
    for image_id in ids[:n]:
        path = folder / image_id
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path, format="JPEG")
        decoded.append(np.asarray(Image.open(path).convert("RGB")))
    return decoded


def test_imagenet_c_domain_is_loaded_through_robustbench(tmp_path):
    decoded = write_imagenet_c(tmp_path, "fog", 2, 3)
    data = tta_streams.imagenet_c("fog", 2, tmp_path, n_examples=3)
    assert np.array_equal(data.images.numpy(), np.stack(decoded).transpose(0, 3, 1, 2))
    ids, _ = _imagenet_helper_files()
    class_index = json.loads(
        (
            Path(sys.modules["robustbench"].__file__).parent / "helper_files" / "imagenet_class_to_id_map.json"
        ).read_text()
    )
    assert data.labels.tolist() == [class_index[i.split("/")[0]] for i in ids[:3]]
    assert len(data.classes) == 1000


def test_imagenet_c_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageNet-C[/\\]fog[/\\]5 is missing.*zenodo"):
        tta_streams.imagenet_c("fog", 5, tmp_path)
    write_imagenet_c(tmp_path, "fog", 5, 2)
    with pytest.raises(FileNotFoundError, match=r"\.JPEG is missing"):
        tta_streams.imagenet_c("fog", 5, tmp_path, n_examples=3)
    with pytest.raises(ValueError, match="larger than"):
        tta_streams.imagenet_c("fog", 5, tmp_path, n_examples=5001)


def test_stream_over_a_precomputed_source_never_corrupts_again(tmp_path, monkeypatch):
    files, labels = write_cifar_c(tmp_path, "CIFAR-10-C", ["fog", "snow"])
    monkeypatch.setattr("tta_streams.corruptions.corrupt", lambda *a, **k: pytest.fail("corrupted again"))
    source = tta_streams.cifar_c_source("cifar10-c", tmp_path)
    for setting in ["continual", "mixed"]:
        stream = tta_streams.Stream(
            source,
            corruptions=["fog", "snow"],
            severities=[1, 4],
            setting=setting,
            batch_size=16,
            n_examples=30,
            cache_dir=tmp_path / "cache",
        )
        seen = {}
        for batch in stream:
            for x, y, domain in zip(batch.x, batch.y, batch.domain):
                seen.setdefault(domain, []).append(
                    (tuple((x * 255).round().to(torch.uint8).flatten().tolist()), int(y))
                )
        assert sorted(seen) == [("fog", 1), ("fog", 4), ("snow", 1), ("snow", 4)]
        for (c, s), items in seen.items():
            block = files[c][(s - 1) * 10_000 : (s - 1) * 10_000 + 30].transpose(0, 3, 1, 2)
            expected = [(tuple(img.flatten().tolist()), int(y)) for img, y in zip(block, labels[:30])]
            assert sorted(items) == sorted(expected)
    with pytest.raises(ValueError, match="already corrupted"):
        tta_streams.Stream(source, corruptions=["fog"], table="cifar")
    with pytest.raises(ValueError, match="no clean domain"):
        tta_streams.Stream(source, corruptions=None)


def test_a_loaded_cifar_c_domain_is_refused_as_a_stream_source(tmp_path, monkeypatch):
    write_cifar_c(tmp_path, "CIFAR-10-C", ["fog"])
    monkeypatch.setattr("tta_streams.corruptions.corrupt", lambda *a, **k: pytest.fail("corrupted again"))
    loaded = tta_streams.cifar_c("cifar10-c", "fog", 3, tmp_path, n_examples=30)
    assert loaded.precorrupted == ("cifar10-c", "fog", 3) and loaded.head(10).precorrupted == loaded.precorrupted
    for corruptions in (["snow"], None):  # corrupted again, or labelled clean: both wrong
        with pytest.raises(
            ValueError,
            match=r"cifar10-c fog at severity 3.*already corrupted.*"
            r"tta_streams\.cifar_c_source\('cifar10-c', data_dir\)",
        ):
            tta_streams.Stream(loaded, corruptions=corruptions, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_loaded_imagenet_c_domain_is_refused_as_a_stream_source(tmp_path):
    write_imagenet_c(tmp_path, "fog", 2, 3)
    loaded = tta_streams.imagenet_c("fog", 2, tmp_path, n_examples=3)
    assert loaded.precorrupted == ("imagenet-c", "fog", 2)
    with pytest.raises(ValueError, match=r"imagenet-c fog at severity 2.*tta_streams\.imagenet_c_source\(data_dir\)"):
        tta_streams.Stream(loaded, corruptions=["fog"], n_examples=3, cache_dir=tmp_path / "cache")


def test_clean_image_sets_are_unmarked_and_a_bad_marker_is_an_error():
    assert tta_streams.fashion_mnist().precorrupted is None
    images, labels = torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="precorrupted must be None or"):
        tta_streams.ImageSet(images, labels, ["a"], precorrupted="fog")
