"""DUA's augmented update (spec M5, ``augment=N``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import tta
from tests.tta.conftest import build, inputs
from tta.augment import CROP_PADDING, augment_copies


def all_transforms(image: torch.Tensor) -> list[torch.Tensor]:
    """Every crop of the padded image, flipped or not, turned 0-3 quarter turns."""
    h, w = image.shape[-2:]
    padded = F.pad(image, [CROP_PADDING] * 4)
    out = []
    for dy in range(2 * CROP_PADDING + 1):
        for dx in range(2 * CROP_PADDING + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            for flipped in (crop, crop.flip(-1)):
                out.extend(torch.rot90(flipped, k, dims=(-2, -1)) for k in range(4))
    return out


def test_every_copy_is_an_augmentation_of_its_own_image() -> None:
    images = torch.randn(2, 3, 6, 6)
    copies = augment_copies(images, 3, torch.Generator().manual_seed(0))
    assert copies.shape == (6, 3, 6, 6)
    for i, copy in enumerate(copies):
        assert any(torch.equal(copy, t) for t in all_transforms(images[i // 3]))
    again = augment_copies(images, 3, torch.Generator().manual_seed(0))
    assert torch.equal(copies, again)


def test_augmented_update_updates_from_copies_then_predicts_the_original() -> None:
    x = inputs("small_cnn", 2, 0)
    wrapped = tta.adapt(build("small_cnn"), "momentum_decay", augment=4)
    assert isinstance(wrapped, tta.AugmentedUpdate)
    plain = tta.adapt(build("small_cnn"), "momentum_decay")
    with torch.no_grad():
        out = wrapped(x)
        plain(augment_copies(x, 4, torch.Generator().manual_seed(0)))
        with tta.paused(plain):
            expected = plain(x)
    assert torch.equal(out, expected)
    tta.reset(wrapped)
    assert int(wrapped.calls) == 0
    with torch.no_grad():
        tta.reset(plain)
        assert torch.equal(wrapped(x), out)
    assert not isinstance(tta.detach(wrapped), tta.AugmentedUpdate)
