"""RoTTA's strong augmentation (official ``core/utils/custom_transforms.py``): shapes, range, determinism
by the generator's seed, grayscale, non-image inputs, each operation against its formula."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tta.methods.rotta.augment import StrongAugmentParams, apply_params, make_params, strong_augment


def images(n: int, channels: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def draw(x: torch.Tensor, seed: int) -> torch.Tensor:
    return strong_augment(x, torch.Generator().manual_seed(seed))


# Parameters that change nothing (blur sigma 1e-3: a kernel of weight 1 at its centre).
IDENTITY = StrongAugmentParams((0, 1, 2, 3, 4), (1.0, 1.0, 1.0, 0.0, 1.0), 0.0, (0, 0), 1.0, 1e-3, False)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("n", [1, 5])
def test_shape_dtype_and_range_are_kept(n: int, channels: int) -> None:
    x = images(n, channels)
    out = draw(x, 0)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out, x)


def test_the_same_seed_gives_the_same_batch_and_another_seed_another() -> None:
    x = images(4, 3)
    assert torch.equal(draw(x, 3), draw(x, 3))
    assert not torch.allclose(draw(x, 3), draw(x, 4), atol=1e-2)


def test_the_global_random_state_is_untouched() -> None:
    state = torch.get_rng_state()
    draw(images(4, 3), 0)
    draw(torch.randn(4, 7, generator=torch.Generator().manual_seed(0)), 0)
    assert torch.equal(torch.get_rng_state(), state)


def test_one_draw_of_parameters_serves_the_whole_batch() -> None:
    """As the official transform applied to the stacked memory: the same image twice in one batch gets
    the same geometry and colours (up to the per-pixel noise)."""
    x = images(1, 3).repeat(2, 1, 1, 1)
    out = draw(x, 5)
    assert (out[0] - out[1]).abs().max() < 0.05


def test_identity_parameters_give_the_clipped_input_plus_noise() -> None:
    x = images(3, 3) * 1.2 - 0.1
    noise = torch.full_like(x, 0.01)
    torch.testing.assert_close(apply_params(x, IDENTITY, noise), (x.clamp(0, 1) + 0.01).clamp(0, 1), atol=1e-5, rtol=0)


def test_each_colour_operation_follows_its_formula() -> None:
    x, zero = images(2, 1), torch.zeros(2, 1, 16, 16)
    brightness = dataclasses.replace(IDENTITY, colour_factors=(1.3, 1.0, 1.0, 0.0, 1.0))
    torch.testing.assert_close(apply_params(x, brightness, zero), (1.3 * x).clamp(0, 1), atol=1e-5, rtol=0)
    contrast = dataclasses.replace(IDENTITY, colour_factors=(1.0, 0.7, 1.0, 0.0, 1.0))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # per image: contrast blends towards the image's mean
    torch.testing.assert_close(apply_params(x, contrast, zero), 0.7 * x + 0.3 * mean, atol=1e-5, rtol=0)
    gamma = dataclasses.replace(IDENTITY, colour_factors=(1.0, 1.0, 1.0, 0.0, 0.8))
    torch.testing.assert_close(apply_params(x, gamma, zero), x.clamp_min(1e-8) ** 0.8, atol=1e-5, rtol=0)


def test_saturation_and_hue_leave_a_grayscale_image_alone_and_change_a_colour_one() -> None:
    colour = dataclasses.replace(IDENTITY, colour_factors=(1.0, 1.0, 1.5, 0.05, 1.0))
    gray, zero = images(2, 1), torch.zeros(2, 1, 16, 16)
    torch.testing.assert_close(apply_params(gray, colour, zero), gray, atol=1e-5, rtol=0)
    rgb = images(2, 3)
    assert (apply_params(rgb, colour, torch.zeros_like(rgb)) - rgb).abs().max() > 0.05


def test_flip_and_translation_move_pixels_as_drawn() -> None:
    x, zero = images(2, 1), torch.zeros(2, 1, 16, 16)
    flipped = dataclasses.replace(IDENTITY, flip=True)
    torch.testing.assert_close(apply_params(x, flipped, zero), x.flip(-1), atol=1e-5, rtol=0)
    shifted = dataclasses.replace(IDENTITY, translate=(2, 0))  # 2 pixels right, edge padding fills in
    out = apply_params(x, shifted, zero)
    torch.testing.assert_close(out[..., 2:], x[..., :-2], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[..., :2], x[..., :1].expand(-1, -1, -1, 2), atol=1e-5, rtol=0)


def test_the_drawn_parameters_lie_in_the_official_ranges() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        p = make_params(images(1, 3, size=32), generator)
        assert sorted(p.colour_order) == [0, 1, 2, 3, 4]
        b, c, s, h, g = p.colour_factors
        assert 0.6 <= b <= 1.4 and 0.7 <= c <= 1.3 and 0.5 <= s <= 1.5 and -0.06 <= h <= 0.06 and 0.7 <= g <= 1.3
        assert -15 <= p.angle <= 15 and 0.9 <= p.scale <= 1.1 and 0.001 <= p.blur_sigma <= 0.5
        assert all(abs(t) <= 4 for t in p.translate)  # 1/16 of the padded size, 64 px for 32 px images


@pytest.mark.parametrize("shape", [(5, 7), (4, 2, 8, 8), (3, 3, 4, 6, 6)])
def test_other_inputs_get_gaussian_noise_only_and_no_clipping(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3
    noise = draw(x, 0) - x
    assert noise.abs().max() < 0.05 and 0.003 < noise.std() < 0.007  # std 0.005
    assert torch.equal(draw(x, 0), draw(x, 0))
