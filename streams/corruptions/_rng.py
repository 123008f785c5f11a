"""Per-image, counter-based random numbers for the corruptions: deterministic per image (see
:doc:`/reference/stream_algorithms`).

Every random value is a pure function of (seed, corruption, severity, image index, draw tag, element
position): ``hash32(key[image] ^ hash32(position ^ hash32(tag)))`` with ``key[image] =
hash32(base ^ hash32(index))`` and ``base`` mixing seed, corruption name and severity. ``hash32`` is
Chris Wellons' "lowbias32" integer hash, evaluated on int32 tensors with wrap-around multiplication.

Why counter-based: all images of a batch draw in one vectorized pass on the images' own device (no
Python loop over images, no generator objects), and image ``index`` gets the same numbers whatever batch
it lands in, whatever the batch size and whatever the device, since nothing depends on draw order.
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Iterator

import torch
from torch import Tensor

_M1 = 0x7FEB352D
_M2 = 0x846CA68B - (1 << 32)  # the same 32-bit pattern as a signed int32
_MASK32 = 0xFFFFFFFF


def hash32_int(x: int) -> int:
    """lowbias32 on a Python int (mod 2**32); the scalar twin of :func:`hash32`."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    x ^= x >> 16
    return x


def hash32(x: Tensor) -> Tensor:
    """lowbias32 on an int32 tensor: logical shifts are masked arithmetic shifts, products wrap."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * _M1
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * _M2
    return x ^ ((x >> 16) & 0xFFFF)


def _to_int32(v: int) -> int:
    v &= _MASK32
    return v - (1 << 32) if v >= (1 << 31) else v


def _tag_int(tag: str) -> int:
    return zlib.crc32(tag.encode("utf-8"))


class ImageRNG:
    """Random draws for a batch of images, each image keyed by (seed, corruption, severity, index)."""

    def __init__(self, seed: int, corruption: str, severity: int, indices: Tensor) -> None:
        base = hash32_int(seed & _MASK32) ^ hash32_int((seed >> 32) & _MASK32 ^ 0x9E3779B9)
        base = hash32_int(base ^ _tag_int(corruption))
        base = hash32_int(base ^ (severity * 0x27D4EB2F & _MASK32))
        idx = indices.to(torch.int32)
        self.keys = hash32(hash32(idx) ^ _to_int32(base))
        self.device = indices.device
        self.n = int(indices.numel())

    def chunks(self, size: int) -> Iterator[ImageRNG]:
        """The same images' draws in consecutive groups of ``size`` images (for cache-sized work)."""
        for start in range(0, self.n, size):
            part = copy.copy(self)
            part.keys = self.keys[start : start + size]
            part.n = int(part.keys.numel())
            yield part

    def bits(self, tag: str, shape: tuple[int, ...]) -> Tensor:
        """Uniform 24-bit integers, int32 tensor of shape (n, *shape)."""
        m = math.prod(shape)
        pos = torch.arange(m, dtype=torch.int32, device=self.device)
        hc = hash32(pos ^ _to_int32(hash32_int(_tag_int(tag))))
        h = hash32(self.keys[:, None] ^ hc[None, :])
        return ((h >> 8) & 0xFFFFFF).reshape(self.n, *shape)

    def uniform(self, tag: str, shape: tuple[int, ...], low: float = 0.0, high: float = 1.0) -> Tensor:
        """Uniform floats in the open interval (low, high), float32, shape (n, *shape)."""
        u = (self.bits(tag, shape).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
        return u if (low, high) == (0.0, 1.0) else low + (high - low) * u

    def normal(self, tag: str, shape: tuple[int, ...], loc: float = 0.0, scale: float = 1.0) -> Tensor:
        """Normal floats by Box-Muller from two uniform draws."""
        u1 = self.uniform(tag + "/r", shape)
        u2 = self.uniform(tag + "/a", shape)
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
        return z if (loc, scale) == (0.0, 1.0) else loc + scale * z

    def integers(self, tag: str, shape: tuple[int, ...], low: int, high: int) -> Tensor:
        """Uniform integers in [low, high) (numpy's randint convention), int64."""
        if high <= low:
            raise ValueError(f"empty integer range [{low}, {high})")
        b = self.bits(tag, shape).to(torch.int64)
        return low + (b * (high - low)) // (1 << 24)
