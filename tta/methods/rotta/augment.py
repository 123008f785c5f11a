"""RoTTA's strong augmentation of the memory batch, drawn from an explicit generator. See
:doc:`/methods/rotta`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import Tensor

# The official ranges (BIT-DA/RoTTA core/utils/custom_transforms.py, get_tta_transforms, soft=False).
BRIGHTNESS, CONTRAST, SATURATION, HUE, GAMMA = (0.6, 1.4), (0.7, 1.3), (0.5, 1.5), (-0.06, 0.06), (0.7, 1.3)
DEGREES, TRANSLATE, SCALE = (-15.0, 15.0), 1 / 16, (0.9, 1.1)
BLUR_KERNEL, BLUR_SIGMA = 5, (0.001, 0.5)
FLIP_PROBABILITY = 0.5
NOISE_STD = 0.005


def vision_functional() -> ModuleType:
    """torchvision's functional transforms, which the strong augmentation needs; ImportError naming it."""
    try:
        return importlib.import_module("torchvision.transforms.v2.functional")
    except ImportError as exc:
        raise ImportError(
            "RoTTA's strong augmentation needs the torchvision package, which is not installed: "
            "pip install torchvision (or 'tta-norm[streams]'), or pass augment='noise'"
        ) from exc


@dataclass(frozen=True)
class StrongAugmentParams:
    """One draw of the augmentation's parameters, shared by the whole batch as in the official code."""

    colour_order: tuple[int, ...]  # a permutation of 0..4: brightness, contrast, saturation, hue, gamma
    colour_factors: tuple[float, ...]
    angle: float
    translate: tuple[int, int]
    scale: float
    blur_sigma: float
    flip: bool


def _uniform(bounds: tuple[float, float], generator: torch.Generator) -> float:
    return float(torch.empty(()).uniform_(bounds[0], bounds[1], generator=generator))


def make_params(x: Tensor, generator: torch.Generator) -> StrongAugmentParams:
    """Draw the parameters for the image batch ``x`` (N, C, H, W) from ``generator`` (a CPU generator)."""
    order = tuple(torch.randperm(5, generator=generator).tolist())
    factors = tuple(_uniform(bounds, generator) for bounds in (BRIGHTNESS, CONTRAST, SATURATION, HUE, GAMMA))
    angle = _uniform(DEGREES, generator)
    padded_h, padded_w = (size + 2 * (x.shape[-2] // 2) for size in x.shape[-2:])
    tx = round(_uniform((-TRANSLATE * padded_w, TRANSLATE * padded_w), generator))
    ty = round(_uniform((-TRANSLATE * padded_h, TRANSLATE * padded_h), generator))
    scale = _uniform(SCALE, generator)
    sigma = _uniform(BLUR_SIGMA, generator)
    flip = bool(torch.rand((), generator=generator) < FLIP_PROBABILITY)
    return StrongAugmentParams(order, factors, angle, (tx, ty), scale, sigma, flip)


def colour_jitter(x: Tensor, params: StrongAugmentParams) -> Tensor:
    """Brightness, contrast, saturation, hue and gamma in the drawn order; saturation and hue need three
    channels and leave a grayscale image as it is."""
    TF = vision_functional()
    for index in params.colour_order:
        factor = params.colour_factors[index]
        if index == 0:
            x = TF.adjust_brightness(x, factor)
        elif index == 1:
            x = TF.adjust_contrast(x, factor)
        elif index == 2 and x.shape[-3] == 3:
            x = TF.adjust_saturation(x, factor)
        elif index == 3 and x.shape[-3] == 3:
            x = TF.adjust_hue(x, factor)
        elif index == 4:
            x = TF.adjust_gamma(x.clamp(1e-8, 1.0), factor)  # the official clamp keeps gamma's gradient finite
    return x


def apply_params(x: Tensor, params: StrongAugmentParams, noise: Tensor) -> Tensor:
    """The official pipeline on an image batch in [0, 1]: clip, colour jitter, edge padding by half the
    height, random affine (bilinear, zero fill), Gaussian blur (kernel 5), centre crop, flip, noise, clip."""
    TF = vision_functional()
    h, w = x.shape[-2:]
    x = colour_jitter(x.clamp(0.0, 1.0), params)
    x = TF.pad(x, [h // 2], padding_mode="edge")
    x = TF.affine(
        x,
        angle=params.angle,
        translate=list(params.translate),
        scale=params.scale,
        shear=[0.0, 0.0],
        interpolation=TF.InterpolationMode.BILINEAR,
    )
    x = TF.gaussian_blur(x, [BLUR_KERNEL, BLUR_KERNEL], [params.blur_sigma, params.blur_sigma])
    x = TF.center_crop(x, [h, w])
    if params.flip:
        x = x.flip(-1)
    return (x + noise).clamp(0.0, 1.0)


def strong_augment(x: Tensor, generator: torch.Generator, noise_std: float = NOISE_STD) -> Tensor:
    """RoTTA's strong augmentation of a batch, every random number from ``generator`` (CPU).

    Image batches (N, C, H, W) with C = 1 or 3, values in [0, 1]: the official pipeline
    (:func:`apply_params`), one parameter draw for the whole batch as the official transform applied to
    the stacked memory does, and per-pixel Gaussian noise (std ``noise_std``). Any other input (features
    of a BatchNorm1d model, volumes, other channel counts): the Gaussian noise only, with no clipping,
    since the image operations have no meaning there.
    """
    noise = (torch.randn(x.shape, generator=generator, dtype=torch.float32) * noise_std).to(x.device, x.dtype)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        return x + noise
    return apply_params(x, make_params(x, generator), noise)
