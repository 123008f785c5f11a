"""The bundled Fashion-MNIST source model and its training script (docs/streams.md)."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tta_streams
from tta_bench import source_model
from tta_bench.source_model import FMNIST_MEAN, FMNIST_STD, WEIGHTS_PATH, build_model, load_bundled_model
from tta_bench.train_source import augment, train_source


def _write_idx(path, array: np.ndarray) -> None:
    """LeCun's idx format: magic (0, 0, 0x08 = ubyte, ndim), big-endian dims, raw bytes; gzipped."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_train_root(tmp_path):
    """A fake training split of 96 images in the real file layout; class k images have brightness 25k."""
    rng = np.random.default_rng(0)
    labels = np.arange(96) % 10
    images = (labels[:, None, None] * 25 + rng.integers(0, 10, (96, 28, 28))).astype(np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    return tmp_path


def test_shipped_checkpoint_is_a_small_float32_state_dict_loadable_with_weights_only():
    assert WEIGHTS_PATH.stat().st_size < 5 * 2**20
    state = torch.load(WEIGHTS_PATH, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float32 for k, v in state.items() if not k.endswith("num_batches_tracked"))
    build_model().load_state_dict(state)  # strict: exactly the bundled architecture's keys


def test_bundled_model_has_batchnorm_and_is_in_eval_mode():
    model = load_bundled_model()
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert n_bn >= 5
    assert not any(m.training for m in model.modules())


def test_bundled_model_reaches_92_percent_on_the_clean_test_split():
    test = tta_streams.fashion_mnist("test")
    model = load_bundled_model()
    with torch.inference_mode():
        predictions = torch.cat([model(x.float() / 255).argmax(1) for x in test.images.split(1000)])
    assert len(predictions) == 10_000
    assert (predictions == test.labels).float().mean().item() >= 0.92


def test_input_standardization_matches_the_data_statistics():
    # The fixed buffers should standardize Fashion-MNIST pixels: check against the embedded test split.
    pixels = tta_streams.fashion_mnist("test").images.float() / 255
    assert abs(pixels.mean().item() - FMNIST_MEAN) < 0.005
    assert abs(pixels.std().item() - FMNIST_STD) < 0.005


def test_missing_weights_error_names_file_and_training_command(tmp_path, monkeypatch):
    monkeypatch.setattr(source_model, "WEIGHTS_PATH", tmp_path / "nothing.pt")
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt.*tta-bench train-source"):
        load_bundled_model()


def test_augment_returns_a_padded_crop_or_its_mirror_of_each_image():
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0), pad=2)
    padded = F.pad(images, (2, 2, 2, 2))
    for i in range(len(images)):
        crops = [padded[i, :, dy : dy + 28, dx : dx + 28] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)


def test_train_source_writes_a_loadable_checkpoint_and_metadata(tiny_train_root, tmp_path):
    out = tmp_path / "weights" / "model.pt"
    rng_before = torch.get_rng_state()
    result = train_source(out, epochs=1, seed=3, root=tiny_train_root, batch_size=32, n_test=100)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    state = torch.load(out, weights_only=True)
    model = build_model()
    model.load_state_dict(state)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        initial = build_model().state_dict()
    assert not torch.equal(state["fc.weight"], initial["fc.weight"])  # training moved the weights
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["epochs"] == 1 and meta["seed"] == 3 and meta["n_test"] == 100
    assert meta["test_accuracy"] == result["test_accuracy"] and 0.0 <= meta["test_accuracy"] <= 1.0
    assert meta["torch_version"] == torch.__version__ and meta["train_seconds"] >= 0


def test_train_source_is_reproducible_from_its_seed(tiny_train_root, tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    for path in (a, b):
        train_source(path, epochs=1, seed=5, root=tiny_train_root, batch_size=48, n_test=10)
    state_a, state_b = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_train_source_rejects_zero_epochs(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        train_source(tmp_path / "m.pt", epochs=0)
