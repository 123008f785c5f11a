"""``tta_streams.ImageSet`` from a user's tensors and from a file."""

from __future__ import annotations

import pytest
import torch

from tta_streams import ImageSet


def test_from_tensors_stores_floats_in_0_1_as_uint8_and_names_the_classes():
    images = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1, 1).expand(3, 1, 2, 2)
    made = ImageSet.from_tensors(images, [2, 0, 1])
    assert made.images.dtype == torch.uint8 and made.images[:, 0, 0, 0].tolist() == [0, 128, 255]
    assert made.labels.dtype == torch.int64 and made.labels.tolist() == [2, 0, 1]
    assert made.classes == ["0", "1", "2"]


def test_from_tensors_takes_uint8_and_one_channel_images_without_a_channel_axis():
    images = torch.randint(0, 256, (4, 5, 5), dtype=torch.uint8)
    made = ImageSet.from_tensors(images, torch.tensor([0, 1, 0, 1]), classes=["cat", "dog"])
    assert made.images.shape == (4, 1, 5, 5) and torch.equal(made.images[:, 0], images)
    assert made.classes == ["cat", "dog"]


@pytest.mark.parametrize("images, labels, message", [
    (torch.full((2, 1, 2, 2), 2.0), [0, 1], "in \\[0, 1\\]"),
    (torch.zeros(2, 1, 2, 2), [0.0, 1.0], "integers"),
    (torch.zeros(2, 1, 2, 2), [0, 3], "0..1"),
])  # fmt: skip
def test_from_tensors_refuses_what_is_not_images_and_labels(images, labels, message):
    with pytest.raises(ValueError, match=message):
        ImageSet.from_tensors(images, labels, classes=None if message != "0..1" else ["a", "b"])


def test_save_and_load_give_the_same_set_and_a_file_of_something_else_is_a_value_error(tmp_path):
    made = ImageSet.from_tensors(torch.randint(0, 256, (3, 3, 4, 4), dtype=torch.uint8), [0, 1, 1], ["a", "b"])
    made.save(tmp_path / "set.pt")
    loaded = ImageSet.load(tmp_path / "set.pt")
    assert torch.equal(loaded.images, made.images) and torch.equal(loaded.labels, made.labels)
    assert loaded.classes == made.classes
    torch.save({"images": made.images}, tmp_path / "no_labels.pt")
    (tmp_path / "text.pt").write_text("not a tensor file")
    for name in ("no_labels.pt", "text.pt"):
        with pytest.raises(ValueError, match=name):
            ImageSet.load(tmp_path / name)
