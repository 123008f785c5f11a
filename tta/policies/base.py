"""The policy layer every normalization policy derives from: the rules all policies share are in
:doc:`/reference/notation`."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, Protocol, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from tta.collectives import reduce_moments, sum_across_processes
from tta.options import declared_options
from tta.stats import batch_moments, computed_once, float_buffers, normalize, on_host, restore_dtypes


class ModelHook:
    """Base of the hooks a policy registers on the model itself in ``register_model_hooks`` (a forward hook that
    learns the model's predictions): :func:`tta.detach` removes every one, wherever it sits."""


def check_logits(policy: str, output: object, num_classes: int) -> None:
    """Refuse a model output that is not ``(batch, num_classes)`` logits, naming what it was (a policy that
    learns from the model's predicted classes calls it before its state changes)."""
    if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[1] != num_classes:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(
            f"{policy} learns from the model's predicted classes and needs (batch, {num_classes}) logits from "
            f"the model; it returned {shape}"
        )


StateInit = Callable[[Any], Tensor]
"""How a state buffer is rebuilt: a function of the layer giving the initial tensor (:meth:`NormPolicy.add_state`)."""


def source_mean(layer: NormPolicy) -> Tensor:
    """A copy of the layer's source mean (:data:`StateInit`)."""
    return layer.source_mean.clone()


def source_var(layer: NormPolicy) -> Tensor:
    """A copy of the layer's source variance (:data:`StateInit`)."""
    return layer.source_var.clone()


def _filled(shape: tuple[int, ...], value: float, dtype: torch.dtype | None, layer: NormPolicy) -> Tensor:
    return torch.full(
        shape, value, dtype=layer.stats_dtype if dtype is None else dtype, device=layer.source_mean.device
    )


def filled(shape: tuple[int, ...], value: float, dtype: torch.dtype | None = None) -> StateInit:
    """A :data:`StateInit` of ``shape`` filled with ``value``, of ``dtype`` (None: the statistics dtype)."""
    return functools.partial(_filled, shape, value, dtype)


class NormPolicy(nn.Module):
    """Replaces one BatchNorm layer and decides which statistics normalize each input.

    The notation and the rules every policy follows are in :doc:`/reference/notation`.

    Built from the original layer: ``weight``/``bias`` are the same Parameter objects, ``eps`` and the
    layer's BN ``momentum`` are kept, and its running statistics become the ``source_mean`` and
    ``source_var`` buffers, which nothing overwrites. Adaptation state lives in registered buffers.

    Train and eval mode behave the same: whether a layer adapts is the explicit ``paused`` flag, never
    the module's mode, so a deployed model in ``eval()`` adapts, and ``train()`` (say, for a gradient
    method stacked on top) changes nothing here. A non-finite batch (NaN or Inf) propagates to the
    output but leaves the state untouched, so the next clean batch is served as if it never came.

    Statistics are kept and computed in float32, or in float64 for a layer whose running
    statistics were float64 at attach, so a double model loses no precision (AdaBN's pool is always
    float64). Casting the model (``.half()``, ``.double()``, ``.to(dtype)``) casts the affine
    parameters and moves everything, but the statistics buffers keep their dtype. The original layer, kept
    outside the module tree for :func:`tta.detach`, follows every cast and move, so the restored layer
    has the dtypes it would have had without adaptation.

    ``stats_grad`` (default False) is the switch a gradient method sets (:doc:`/methods/tent`): when True, the
    gradient flows through the current batch's (or instance's) share of the statistics that normalize
    it, as in train-mode BatchNorm (``tbn``, official Tent) and in the official layers the other policies
    come from (RoTTA's ``RobustBN``: the batch term of its momentum mix; UnMix-TNS and NOTE's IABN: the
    instance statistics, with UnMix-TNS's assignments detached). State carried over from earlier batches
    is a constant to the gradient, and the state buffers themselves never join a graph. ``source`` has
    no batch statistics, so nothing changes there.

    One stream served by several processes: when the original layer was a ``SyncBatchNorm``
    and a process group is initialized, the batch statistics a policy uses (:meth:`batch_moments`) are
    those of every process's batch together, so N processes with B/N samples each adapt and predict as
    one process with B. SyncBatchNorm itself combines them only in train mode (in eval it uses its
    running statistics); a policy uses batch statistics in either mode, so it combines them in either.
    As with SyncBatchNorm, every process of the group must call the model in step (the same number of
    calls, none of them paused on one process only), each with at least one sample. The policies that learn
    from the model's predictions (``balanced``, ``rebalance``) combine their class counts and sums too.

    Adaptation state is declared once, in the constructor, with :meth:`add_state` (the buffer and how to
    rebuild it, as torchmetrics' ``Metric.add_state``): :meth:`reset` rebuilds every declared state, and
    ``state_dict`` holds them. The constructor's keyword options (:func:`tta.options.declared_options`) are
    kept as attributes of the same name, which ``repr`` shows.

    ``torch.export.export(model, ...)`` records the adapting forward with the state as the program's
    buffers, and those are the live model's tensors, not copies: each call of the exported module updates
    the model's state too. For a program with a state of its own, export a copy:
    ``torch.export.export(copy.deepcopy(model), ...)``.
    """

    policy_name: ClassVar[str]  # set by tta.registry.register_policy
    stats_grad: bool = False
    uses_predictions: ClassVar[bool] = False  # True for a policy that learns from the model's predicted classes
    combines_across_processes: ClassVar[bool] = False  # True for a policy whose state or statistics pool processes
    stateful: ClassVar[bool] = False  # True for a policy that holds adapted statistics (set from adapted_stats)
    sync_batchnorm: bool = False  # the original layer was a SyncBatchNorm (set at attach)
    source_mean: Tensor
    source_var: Tensor
    weight: Tensor | None
    bias: Tensor | None
    paused: bool
    original: _BatchNorm

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.stateful = cls.adapted_stats is not NormPolicy.adapted_stats

    def __init__(self, bn: _BatchNorm, *, layer_index: int = 0, post_norm: nn.Module | None = None) -> None:
        """``layer_index`` is the layer's position in the model (for per-layer random draws);
        ``post_norm`` is what a BatchNorm subclass applies after normalizing (timm's activation)."""
        super().__init__()
        self.num_features = bn.num_features
        self.eps = bn.eps
        self.bn_momentum = 0.1 if bn.momentum is None else bn.momentum
        self.layer_index = layer_index
        # Affine parameters: the same Parameter objects; a parametrized one (torch.nn.utils.parametrize)
        # is evaluated through the original layer at every forward, and its parametrization module
        # joins this layer so its parameters stay in the model (same state_dict keys).
        if parametrize.is_parametrized(bn):
            self.parametrizations = bn.parametrizations
        for name in ("weight", "bias"):
            if not parametrize.is_parametrized(bn, name):
                setattr(self, name, getattr(bn, name))
        # Tensors: tta.surgery refuses a layer without running statistics before building a policy.
        running_mean, running_var = cast(Tensor, bn.running_mean), cast(Tensor, bn.running_var)
        stats_dtype = torch.promote_types(running_mean.dtype, torch.float32)  # float32, or float64
        self.register_buffer("source_mean", running_mean.detach().to(stats_dtype, copy=True))
        self.register_buffer("source_var", running_var.detach().to(stats_dtype, copy=True))
        self.post_norm = post_norm
        self.paused = False
        self.sync_batchnorm = isinstance(bn, nn.SyncBatchNorm)
        self.state_inits: dict[str, StateInit] = {}
        self.train(bn.training)
        # The original layer is kept outside the module tree: detach() puts it back, and it adds
        # nothing to state_dict().
        self.__dict__["original"] = bn

    def add_state(self, name: str, init: StateInit) -> None:
        """Declare the state buffer ``name``: registered with ``init(self)``, rebuilt from it by :meth:`reset`."""
        self.state_inits[name] = init
        self.register_buffer(name, init(self))

    @property
    def stats_dtype(self) -> torch.dtype:
        """The dtype the statistics are kept and computed in (class doc)."""
        return self.source_mean.dtype

    def grad_through_stats(self, x: Tensor) -> bool:
        """Whether this forward's batch statistics keep their gradient (``stats_grad``, class doc)."""
        return self.stats_grad and x.requires_grad and torch.is_grad_enabled()

    @property
    def process_group(self) -> dist.ProcessGroup | None:
        """The original SyncBatchNorm's ``process_group`` (None: the default group); read where
        ``sync_batchnorm``."""
        return cast(nn.SyncBatchNorm, self.original).process_group

    def syncing(self) -> bool:
        """True when batch statistics are combined across processes now (class doc): the original layer was
        a SyncBatchNorm, a default process group is initialized, and the layer's ``process_group`` (the
        default one if None) has more than one process, as SyncBatchNorm's own test."""
        return (
            self.sync_batchnorm
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size(self.process_group) > 1
        )

    def summed(self, values: Tensor) -> Tensor:
        """``values`` summed over the processes where the layer combines them (:meth:`syncing`), else as given."""
        if self.sync_batchnorm and self.syncing():
            return sum_across_processes(values, self.process_group)
        return values

    def batch_moments(self, x: Tensor, grad: bool = False) -> tuple[Tensor, Tensor, int]:
        """Per-channel mean, biased variance and count of ``x`` in the statistics dtype, in the autograd graph
        with ``grad`` (:func:`tta.stats.batch_moments`), of every process's batch together when
        :meth:`syncing` (one all-reduce, differentiable with ``grad``: :func:`tta.collectives.reduce_moments`)."""
        mean, var, n = batch_moments(x, self.stats_dtype, grad=grad)
        if self.sync_batchnorm and self.syncing():
            return reduce_moments(mean, var, n, self.process_group)
        return mean, var, n

    @property
    def adapting(self) -> bool:
        """True when this forward may update the state (the layer is not paused)."""
        return not self.paused

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_tracing():
            raise RuntimeError(
                "tta: torch.jit.trace cannot record an adapted model: tracing runs adapting forwards that "
                "update the live state, and freezes data-dependent decisions (the NaN guard) into the "
                "trace. Use torch.compile, or bake the statistics into plain BatchNorm layers with "
                "tta.detach(model, keep_adapted=True) and trace that."
            )
        self.check_input(x)
        device = x.device.type
        if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
            # Statistics in float32 even under autocast; normalize() returns x's dtype.
            with torch.autocast(device, enabled=False):
                out = self.normalize(x)
        else:  # entering a disabled autocast context costs as much as a small kernel
            out = self.normalize(x)
        return out if self.post_norm is None else self.post_norm(out)

    @classmethod
    def check_model(cls, model: nn.Module, **options: object) -> None:
        """Refuse a model this policy cannot serve, before ``tta.adapt`` swaps any layer; none here."""

    @classmethod
    def retired_option(cls, option: str, value: object) -> str | None:
        """The error message for an option this policy no longer takes (what replaced it), else None."""
        return None

    @classmethod
    def model_options(cls, model: nn.Module, options: dict[str, object]) -> dict[str, object]:
        """The options completed from the model before any layer is built (a number of classes read from
        its classifier); unchanged here."""
        return options

    @classmethod
    def register_model_hooks(cls, model: nn.Module, **options: object) -> None:
        """Register the policy's :class:`ModelHook` on the adapted model (``balanced``: the forward that
        learns its predictions), after the layers are swapped; none here."""

    def normalize(self, x: Tensor) -> Tensor:
        """Normalize ``x`` with the policy's statistics, updating its state if adapting."""
        raise NotImplementedError

    def reset(self) -> None:
        """Return every state buffer to its value right after attach, exactly (each declared state rebuilt)."""
        with torch.no_grad():
            for name, init in self.state_inits.items():
                getattr(self, name).copy_(init(self))

    def adapted_stats(self) -> tuple[Tensor, Tensor] | None:
        """Per-channel mean and variance the state holds now; None for stateless policies."""
        return None

    def affine_parameters(self) -> list[nn.Parameter]:
        """The Parameters that train ``weight`` and ``bias`` (a parametrized one's ``original``); none if
        the layer has no affine transform."""
        found: list[nn.Parameter] = []
        for name in ("weight", "bias"):
            if parametrize.is_parametrized(self.original, name):
                # parametrize sets a ModuleDict of ParametrizationLists, each holding the Parameter as original
                parametrizations = cast(nn.ModuleDict, self.original.parametrizations)
                found.append(cast(nn.Parameter, parametrizations[name].original))
            elif getattr(self, name) is not None:
                found.append(getattr(self, name))
        return found

    def affine(self) -> tuple[Tensor | None, Tensor | None]:
        """``(weight, bias)`` as the original layer would use them now (parametrizations evaluated)."""
        if "parametrizations" in self._modules:
            return self.original.weight, self.original.bias
        return self.weight, self.bias

    def normalize_with(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """``x`` normalized with per-channel ``mean`` and ``var`` and this layer's affine parameters (computed
        once per channel under ``torch.compile``: :func:`tta.stats.computed_once`)."""
        return normalize(x, *computed_once(mean, var), *self.affine(), self.eps)

    def normalize_with_source(self, x: Tensor) -> Tensor:
        """The original layer's eval-mode output (before ``post_norm``), bit for bit (:doc:`/policies/source`)."""
        return normalize(x, self.source_mean, self.source_var, *self.affine(), self.eps)

    def check_input(self, x: Tensor) -> None:
        """Reject what the original layer could not normalize, with a message naming the problem."""
        if not torch.is_floating_point(x):
            raise TypeError(f"{self.describe()}: expected a floating-point input, got {x.dtype}")
        try:
            self.original._check_input_dim(x)
        except ValueError as error:
            raise ValueError(f"{self.describe()}: {error}") from None
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{self.describe()}: expected {self.num_features} channels, got input of shape {tuple(x.shape)}"
            )
        if x.shape[0] == 0 or x.numel() == 0:
            raise ValueError(f"{self.describe()}: empty batch of shape {tuple(x.shape)}")

    def commit(self, ok: Tensor, **values: Tensor | int) -> None:
        """Write each new value, detached, into the buffer of that name where ``ok`` (a 0-dim bool, as
        :func:`tta.stats.all_finite` gives) holds. A value may be a Python number where ``ok`` is read on
        the host (:func:`tta.stats.on_host`; a count read there too).

        On an accelerator ``torch.where`` keeps the check on the device (no host sync); on the CPU,
        where reading ``ok`` costs nothing, a plain branch saves one kernel per buffer. Under
        ``torch.compile`` the branch-free path is used everywhere (a branch on data breaks the graph).
        """
        if on_host(ok):
            if ok:
                tensors = {name: value for name, value in values.items() if isinstance(value, Tensor)}
                if tensors:
                    with torch.no_grad():  # one call for all tensors (a loop in C++): microseconds saved on each
                        torch._foreach_copy_([getattr(self, n) for n in tensors], list(tensors.values()))
                for name, value in values.items():
                    if not isinstance(value, Tensor):
                        getattr(self, name).fill_(value)
            return
        for name, value in values.items():
            buffer = getattr(self, name)
            value = cast(Tensor, value)  # a Python number only where ok is read on the host (above)
            buffer.copy_(torch.where(ok, value.detach().to(buffer.dtype), buffer))

    def restore_original(self, keep_adapted: bool = False) -> _BatchNorm:
        """The original layer with the source statistics in its buffers, or with the adapted ones.

        ``keep_adapted``: the statistics the state holds now (:meth:`adapted_stats`) become the layer's
        running statistics, for deployment as a plain BatchNorm model. Stateless policies have none to
        keep (:func:`tta.detach` refuses them).
        """
        stats = self.adapted_stats() if keep_adapted else (self.source_mean, self.source_var)
        if stats is None:
            raise TypeError(f"{self.describe()}: a stateless policy has no adapted statistics to keep")
        mean, var = stats
        bn = self.original
        with torch.no_grad():
            cast(Tensor, bn.running_mean).copy_(mean)  # a policy's layer has running statistics (__init__)
            cast(Tensor, bn.running_var).copy_(var)
        bn.train(self.training)
        return bn

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> NormPolicy:
        """Module casts and moves: statistics keep their dtype; the original layer follows (class doc)."""
        before = float_buffers(self)
        super()._apply(fn, recurse)
        restore_dtypes(self, before)
        self.original._apply(fn, recurse)
        return self

    def describe(self) -> str:
        return f"{type(self).__name__}(layer {self.layer_index}, {self.num_features} channels)"

    def extra_repr(self) -> str:
        options = "".join(f", {name}={getattr(self, name)!r}" for name in declared_options(type(self).__init__))
        return f"{self.num_features}, eps={self.eps}{options}"


class Pausable(Protocol):
    paused: bool


@contextlib.contextmanager
def pausing(modules: Iterable[Pausable]) -> Iterator[None]:
    """Inside, every module's ``paused`` flag (policy layers, methods) is True; each gets its own value back
    on exit, also after an exception. :func:`tta.paused` and the methods that predict without updating
    (RoTTA's teacher, DUA's prediction) share it."""
    modules = list(modules)
    before = [m.paused for m in modules]
    for m in modules:
        m.paused = True
    try:
        yield
    finally:
        for m, was_paused in zip(modules, before):
            m.paused = was_paused
