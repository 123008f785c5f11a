"""Shared statistics maths for all policies (:doc:`/reference/notation`): float32 moments, pooled merges,
normalization."""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

# Devices whose ATen build has the fused BatchNorm statistics kernel used by batch_moments.
_FUSED_STATS_DEVICES = frozenset({"cpu", "cuda"})


# Values per slice of the deviations in _row_moments: 1 MB of float32 stays in cache (several times faster
# than whole-tensor deviations on large feature maps, such as those of 224 px images).
_ROW_CHUNK = 1 << 18

# Rows shorter than this are reduced by a matrix-vector product: ATen's row reductions pay a fixed cost
# per row, more than the whole work for rows of 1-64 values (resnet18's 4x4 to 8x8 maps at 32 px);
# from 1,024 values the sliced reductions win.
_SHORT_ROW = 1024


def batch_moments(x: Tensor, dtype: torch.dtype = torch.float32, grad: bool = False) -> tuple[Tensor, Tensor, int]:
    """Per-channel mean and biased variance over ``(B, *S)`` in ``dtype``, and the count ``n``.

    Uses the statistics kernel of BatchNorm's own training pass (``torch.batch_norm_update_stats``), several
    times faster on CPU than ``torch.var_mean`` over the non-contiguous dims, and just as exact for
    contiguous inputs (channels-last: relative error about 1e-5 in float32). With ``grad`` the moments
    stay in the autograd graph of ``x`` (``torch.var_mean``; the fused kernel has no backward). Under
    ``torch.compile``, ``torch.var_mean``, which the compiler fuses: that kernel has no meta
    implementation, so a graph with dynamic shapes cannot hold it.
    """
    n = elements_per_channel(x)
    if grad:
        var, mean = torch.var_mean(x.to(dtype), dim=[0, *range(2, x.dim())], correction=0)
        return mean, var, n
    x = _detached(x, dtype)
    if n >= 2 and x.device.type in _FUSED_STATS_DEVICES and not torch.compiler.is_compiling():
        mean, var = torch.batch_norm_update_stats(x, None, None, 1.0)
        return mean, var, n
    var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=0)
    return mean, var, n


def on_host(t: Tensor) -> bool:
    """True where reading a value of ``t`` in Python is free: on the CPU outside ``torch.compile``
    (elsewhere it would be a host sync or a graph break)."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def host_int(t: Tensor) -> Tensor | int:
    """A 0-dim integer ``t`` (a counter) as a Python int where reading it is free (:func:`on_host`), else ``t``
    itself: arithmetic on the number then costs no kernel, and on an accelerator nothing waits for the device."""
    return int(t) if on_host(t) else t


def at_least(value: Tensor | int, low: int) -> Tensor | int:
    """``max(value, low)``: a Python number stays one (read on the host where that is free), a tensor is
    clamped on its device."""
    value = host_int(value) if isinstance(value, Tensor) else value
    return value.clamp(min=low) if isinstance(value, Tensor) else max(value, low)


def _detached(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x.detach().to(dtype)``, without the two no-op calls when ``x`` needs neither (inference)."""
    if x.requires_grad:
        x = x.detach()
    return x if x.dtype == dtype else x.to(dtype)


def instance_moments(x: Tensor, dtype: torch.dtype = torch.float32, grad: bool = False) -> tuple[Tensor, Tensor]:
    """Per-instance, per-channel mean and biased variance over the spatial dims ``S``, ``(B, C)``, in ``dtype``.

    Two passes (mean, then mean squared deviation): as exact as ``torch.var_mean`` and several times
    faster on CPU (:func:`_row_moments`). A channels-last input (2-D or 3-D) is reduced in its own
    layout, as ``(B, prod(S), C)``; any other layout (a slice, an expanded batch) as contiguous
    ``(B, C, prod(S))`` rows, copied first where it is not. With ``grad`` the moments stay in the
    autograd graph of ``x`` (``torch.var_mean``).
    """
    if grad:
        if x.dim() == 2:  # no spatial dims (an empty dim list would reduce every dim)
            return x.to(dtype), torch.zeros_like(x, dtype=dtype)
        var, mean = torch.var_mean(x.to(dtype), dim=list(range(2, x.dim())), correction=0)
        return mean, var
    x = _detached(x, dtype)
    b, c = x.shape[:2]
    if not x.is_contiguous() and x.movedim(1, -1).is_contiguous():
        rows = x.movedim(1, -1).reshape(b, -1, c)  # a view
        mean = rows.mean(dim=1, keepdim=True)
        return mean.view(b, c), (rows - mean).square().mean(dim=1)
    return _row_moments(x.reshape(b, c, -1).contiguous())


def _row_moments(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of each row of a contiguous ``(B, C, L)`` tensor, each ``(B, C)``.

    Two passes of contiguous row reductions: sums, then dot products of the deviations. The
    deviations are formed in slices of about ``_ROW_CHUNK`` values that stay in cache (a loop over
    memory slices, not over samples: one slice holds many rows, a small batch is one slice). Off the
    host (:func:`on_host`) the whole tensor is one slice and there is no loop: a loop over a range that
    depends on the batch size makes ``torch.compile`` specialize the batch size, refusing a dynamic one.
    Rows shorter than ``_SHORT_ROW`` on the host: both passes as products with the vector ``1/L``
    (one matrix-vector product each); a row of one value has variance 0.
    """
    b, c, length = rows.shape
    if length < _SHORT_ROW and on_host(rows):
        if length == 1:
            return rows.view(b, c).clone(), rows.new_zeros(b, c)
        weights = rows.new_full((length,), 1.0 / length)
        mean = rows @ weights
        return mean, (rows - mean[..., None]).square_() @ weights
    mean = rows.sum(dim=2).div_(length)
    if not on_host(rows):  # no loop: its range would pin a dynamic batch size to a constant under compile
        deviation = rows - mean[..., None]
        return mean, torch.linalg.vecdot(deviation, deviation).div_(length)
    flat_rows, flat_mean = rows.view(b * c, length), mean.view(b * c, 1)
    squares = torch.empty(b * c, dtype=rows.dtype, device=rows.device)
    step = max(1, _ROW_CHUNK // length)
    for start in range(0, b * c, step):
        deviation = flat_rows[start : start + step] - flat_mean[start : start + step]
        torch.linalg.vecdot(deviation, deviation, out=squares[start : start + step])
    return mean, squares.view(b, c).div_(length)


# all_finite's results on the host: two shared 0-dim tensors, read with bool() (never written to).
_FINITE, _NOT_FINITE = torch.tensor(True), torch.tensor(False)


def all_finite(*tensors: Tensor) -> Tensor:
    """Whether every value of every tensor is finite (no NaN, no Inf), as a 0-dim bool tensor.

    On the CPU outside ``torch.compile`` (:func:`on_host`) the check is read on the host, where that costs
    nothing and saves isfinite's kernel, and the result is one of two shared constant tensors; callers read it
    with ``bool()`` there (:func:`select`, :meth:`tta.policies.base.NormPolicy.commit`). Elsewhere the
    tensor stays on the device (no host sync).

    Checked on the sum of all values, which is NaN or Inf exactly when some value is (Inf + -Inf gives
    NaN): tensors of one shape are added first, so two of them take two small kernels. The one
    difference: finite values whose sum overflows float32 (beyond 3e38) also count as non-finite, so
    such a batch leaves the state as is.
    """
    if all(t.shape == tensors[0].shape for t in tensors[1:]):
        total = functools.reduce(torch.add, tensors).sum()
    else:
        total = functools.reduce(torch.add, [t.sum() for t in tensors])
    if on_host(total):
        return _FINITE if math.isfinite(total.item()) else _NOT_FINITE
    return torch.isfinite(total)


def select(ok: Tensor | bool, new: Tensor, old: Tensor) -> Tensor:
    """``new`` where ``ok`` (a Python bool, or a 0-dim bool tensor) holds, else ``old``: a branch where ``ok`` is
    a bool or read on the host (:func:`on_host`), ``torch.where`` (differentiable, no host sync) elsewhere."""
    if isinstance(ok, bool) or on_host(ok):
        return new if ok else old
    return torch.where(ok, new, old)


def elements_per_channel(x: Tensor) -> int:
    """``n = B * prod(S)``: how many values one channel's batch statistics pool (:doc:`/reference/notation`)."""
    return x.numel() // x.shape[1]


def unbiased(var: Tensor, n: int) -> Tensor:
    """Unbiased variance ``var * n / (n - 1)`` from the biased one; needs ``n >= 2``."""
    return var * (n / (n - 1))


def merge_moments(
    count: Tensor | int, mean: Tensor, m2: Tensor, batch_count: int, batch_mean: Tensor, batch_var: Tensor
) -> tuple[Tensor | int, Tensor, Tensor]:
    """Exact pooled update of (count, mean, sum of squared deviations) with one batch (Chan et al. 1979).

    ``m2`` gains the batch's own squared deviations plus the between-batch term
    ``delta^2 * count * batch_count / total``, so the result equals the moments of the concatenation
    (:doc:`/policies/adabn`). Computed in ``mean``'s dtype. ``count`` may be a Python int read on the host
    (:func:`on_host`): the scalar factors are then Python floats (float64, the same values), which saves
    five small kernels; the additions then round once (fused multiply-add) where ``addcmul`` may round
    twice, a difference in the last bit of float64.
    """
    delta = torch.sub(batch_mean, mean)  # in mean's dtype (promoted)
    m2 = m2.add(batch_var, alpha=batch_count)
    if isinstance(count, int):
        total = count + batch_count
        weight = batch_count / total
        return total, mean.add(delta, alpha=weight), m2.add(delta.square_(), alpha=count * weight)
    total_t = count + batch_count
    weight_t = batch_count / total_t.to(mean.dtype)  # 0-dim
    return total_t, torch.addcmul(mean, delta, weight_t), torch.addcmul(m2, delta.square(), count * weight_t)


def normalize(x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """``weight * (x - mean) / sqrt(var + eps) + bias`` with per-channel statistics; keeps ``x``'s dtype.

    Float32 statistics normalize low-precision inputs directly (the kernel accumulates in float32);
    they are cast only where the affine parameters are of another dtype too (a ``model.bfloat16()``).
    When autograd records, the statistics are snapshots: autograd saves them for the backward, and a
    policy's state buffer may be updated in place by a later forward before that backward runs.
    Statistics that carry a gradient themselves (a policy's ``stats_grad``) go through
    :func:`normalize_per_instance`'s differentiable scale and shift (the kernel has no backward for them).
    """
    if mean.requires_grad or var.requires_grad:
        return normalize_per_instance(x, mean.expand(x.shape[0], -1), var.expand(x.shape[0], -1), weight, bias, eps)
    if weight is not None and weight.dtype != mean.dtype:
        mean, var = mean.to(weight.dtype), var.to(weight.dtype)
    elif torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        mean, var = mean.clone(), var.clone()
    # F.batch_norm's own kernel, called without its Python wrapper (a few microseconds per layer).
    return torch.batch_norm(x, weight, bias, mean, var, False, 0.0, eps, torch.backends.cudnn.enabled)


def computed_once(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean, var)`` as they are, except under ``torch.compile``: there, per-channel statistics that a
    policy computes in the graph (its state update) pass through an operation the compiler cannot see into,
    so they are computed once per channel instead of being recomputed at every element the normalization
    reads them (inductor inlines cheap-looking per-channel work into the per-element loop: ``momentum_decay``'s
    float64 power and ``adabn``'s pooled update would otherwise run once per element).
    Not under ``torch.export`` (an exported program should not need ``tta`` to load) nor when the
    statistics carry a gradient."""
    if not torch.compiler.is_compiling() or torch.compiler.is_exporting() or mean.requires_grad or var.requires_grad:
        return mean, var
    return _computed_once(mean, var)


@torch.library.custom_op("tta::computed_once", mutates_args=())
def _computed_once(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """Copies of ``mean`` and ``var`` (:func:`computed_once`)."""
    return mean.clone(), var.clone()


@_computed_once.register_fake
def _(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(mean), torch.empty_like(var)


def normalize_per_instance(
    x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """As :func:`normalize` with statistics of shape ``(B, C)``: one mean and variance per instance."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    view = (*scale.shape, *([1] * (x.dim() - 2)))
    out = torch.addcmul(shift.view(view), x.to(scale.dtype), scale.view(view))
    return out.to(x.dtype)


def float_buffers(module: torch.nn.Module) -> dict[str, Tensor]:
    """The module's own floating-point buffers by name, to keep their dtypes over a cast
    (:func:`restore_dtypes`)."""
    return {name: buf for name, buf in module._buffers.items() if buf is not None and buf.is_floating_point()}


def restore_dtypes(module: torch.nn.Module, before: dict[str, Tensor]) -> None:
    """After ``module._apply`` (``.double()``, ``.half()``, ``.to(device)``): each buffer of ``before`` (from
    :func:`float_buffers`) back in its own dtype, on the device the cast moved it to. Statistics are kept in
    their statistics dtype whatever the model's dtype."""
    for name, buf in before.items():
        moved = module._buffers[name]
        if moved is not None and moved.dtype != buf.dtype:
            module._buffers[name] = buf.to(moved.device)
