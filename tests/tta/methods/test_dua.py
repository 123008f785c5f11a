"""DUA as a method (docs/methods/dua.md): the augmentation, one update per call from the copies, the prediction of
the original, seeded draws, reset, paused, the refusals. Every method x policy x model invariant is in
test_invariants.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tta
from tests.tta.conftest import build, inputs
from tests.tta.methods.conftest import assert_same, run, snapshot
from tta.methods.dua import CROP_PADDING, augment_copies


def dua_learner(policy: str = "momentum_decay", **options: object) -> tta.Method:
    """DUA on the small CNN (its model always built from seed 0; ``seed`` here is DUA's), 2 copies by default."""
    return tta.attach_method(tta.adapt(build("small_cnn"), policy), "dua", **{"copies": 2, **options})


def documented_generator(seed: int, update: int) -> torch.Generator:
    """The generator of the ``update``-th update as the docstring states it: seeded by (seed, update)
    through numpy's SeedSequence."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, update]).generate_state(1)[0]))


def all_transforms(image: torch.Tensor, turns: int = 4) -> list[torch.Tensor]:
    """Every crop of the padded image, flipped or not, turned by each of the first ``turns`` quarter turns."""
    h, w = image.shape[-2:]
    padded = F.pad(image, [CROP_PADDING] * 4)
    out = []
    for dy in range(2 * CROP_PADDING + 1):
        for dx in range(2 * CROP_PADDING + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            for flipped in (crop, crop.flip(-1)):
                out.extend(torch.rot90(flipped, k, dims=(-2, -1)) for k in range(turns))
    return out


def test_every_copy_is_an_augmentation_of_its_own_image() -> None:
    images = torch.randn(2, 3, 6, 6)
    copies = augment_copies(images, 3, torch.Generator().manual_seed(0))
    assert copies.shape == (6, 3, 6, 6)
    for i, copy in enumerate(copies):
        assert any(torch.equal(copy, t) for t in all_transforms(images[i // 3]))
    assert torch.equal(copies, augment_copies(images, 3, torch.Generator().manual_seed(0)))


def test_a_non_square_image_is_cropped_and_flipped_but_never_turned() -> None:
    images = torch.randn(1, 3, 5, 7)
    copies = augment_copies(images, 16, torch.Generator().manual_seed(1))
    assert copies.shape == (16, 3, 5, 7)
    for copy in copies:
        assert any(torch.equal(copy, t) for t in all_transforms(images[0], turns=1))


def test_dua_takes_copies_and_a_seed_with_the_official_default() -> None:
    assert tta.method_options("dua") == {"copies": 64, "seed": 0}  # 64: jmiemirza/DUA, methods/dua.py
    model = tta.adapt(build("small_cnn"), "momentum_decay")
    with pytest.raises(ValueError, match=r"method 'dua' option 'copies' must lie in \[1, inf\), got 0"):
        tta.attach_method(model, "dua", copies=0)
    with pytest.raises(TypeError, match=r"method 'dua' option 'copies' must be an integer, got 2.0"):
        tta.attach_method(model, "dua", copies=2.0)
    with pytest.raises(ValueError, match="method 'dua' option 'seed' must lie in"):
        tta.attach_method(model, "dua", seed=-1)


def test_one_call_updates_the_statistics_once_from_the_copies_then_predicts_the_original() -> None:
    """Spec M5 by hand on the first layer: m_1 = 0.1 * 0.94 + 0.005, the batch of the 2 x 4 copies."""
    x = inputs("small_cnn", 2, 0)
    dua = dua_learner(copies=4, seed=3)
    source_mean, source_var = dua.model[1].source_mean.clone(), dua.model[1].source_var.clone()
    with torch.no_grad():
        out = dua(x)
        copies = augment_copies(x, 4, documented_generator(3, 0))
        features = dua.model[0](copies)  # the first layer's input: the copies through the first conv
    m1 = 0.1 * 0.94 + 0.005
    torch.testing.assert_close(dua.model[1].running_mean, (1 - m1) * source_mean + m1 * features.mean((0, 2, 3)))
    torch.testing.assert_close(
        dua.model[1].running_var, (1 - m1) * source_var + m1 * features.var((0, 2, 3), unbiased=True)
    )
    assert [int(layer.step) for layer in dua.layers] == [1, 1] and int(dua.updates) == 1
    # the prediction: the original images through the updated statistics, updating nothing more
    plain = tta.adapt(build("small_cnn"), "momentum_decay")
    with torch.no_grad():
        plain(copies)
        with tta.paused(plain):
            assert torch.equal(out, plain(x))


def test_the_seed_decides_the_draws_reset_replays_them_and_paused_updates_nothing() -> None:
    state = torch.get_rng_state()
    first, same, other = (dua_learner(seed=s) for s in (0, 0, 1))
    outs = run(first, "small_cnn", range(3))
    assert all(torch.equal(a, b) for a, b in zip(outs, run(same, "small_cnn", range(3))))
    assert not torch.equal(outs[0], run(other, "small_cnn", range(1))[0])
    assert torch.equal(torch.get_rng_state(), state)
    held = snapshot(first)
    with tta.paused(first):
        paused_out = run(first, "small_cnn", range(3, 4))[0]
    assert_same(snapshot(first), held)
    with torch.no_grad(), tta.paused(first.model):
        assert torch.equal(paused_out, first.model(inputs("small_cnn", 4, 3)))
    tta.reset(first)
    assert int(first.updates) == 0 and all(int(layer.step) == 0 for layer in first.layers)
    assert all(torch.equal(a, b) for a, b in zip(outs, run(first, "small_cnn", range(3))))


@pytest.mark.parametrize("model_name, kind", [("mlp_bn1d", "BatchNorm1d"), ("cnn_bn3d", "BatchNorm3d")])
def test_a_model_without_image_batchnorm_is_refused_at_attach(model_name: str, kind: str) -> None:
    model = tta.adapt(build(model_name), "momentum_decay")
    with pytest.raises(
        ValueError, match=rf"dua augments image batches \(N, C, H, W\), but this model has only {kind} layers"
    ):
        tta.attach_method(model, "dua")
    assert not any(isinstance(m, tta.Method) for m in model.modules())


def test_an_input_that_is_not_an_image_batch_is_refused() -> None:
    dua = dua_learner()
    with pytest.raises(ValueError, match=r"dua augments image batches \(N, C, H, W\); got input of shape \(4, 3\)"):
        dua(torch.randn(4, 3))
    assert int(dua.updates) == 0
