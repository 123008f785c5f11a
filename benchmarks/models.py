"""Model loading for the benchmark: one spec string -> an eval-mode model taking [0, 1] images.

Specs:
- ``bundled``: the shipped Fashion-MNIST ResNet (:mod:`tta_bench.source_model`).
- ``robustbench:<name>``: a RobustBench model-zoo entry of the ``corruptions`` threat model, through
  ``robustbench.utils.load_model``; its preprocessing is already inside the model.
- ``torchvision:<name>``: ``torchvision.models.get_model(name, weights="DEFAULT")``.
- ``timm:<name>``: ``timm.create_model(name, pretrained=True)``.
- a path to a state dict (``torch.save(model.state_dict(), path)``), read with ``weights_only=True`` (no
  code runs) into the architecture ``arch`` names: ``bundled``, ``torchvision:<name>``, ``timm:<name>``
  (both behind ImageNet normalization, built without pretrained weights) or ``package.module:callable``.
- a path to a whole pickled ``nn.Module`` (``torch.save(model, path)``) only with ``trust_pickle=True``:
  unpickling can run arbitrary code, so only for files you trust. Without it such a file is refused
  before any of its code runs. TorchScript and ``torch.export`` archives are refused: they load without
  Python pickle, but hold no ``nn.BatchNorm`` modules that the policies could replace.
- ``package.module:callable``: calls ``callable(**model_args)``, which must return an ``nn.Module``.

``model_args`` (literal keyword arguments, e.g. ``num_classes=10``) go to the callable or to the ``arch``
builder; they are refused where nothing would take them.

Nothing is downloaded implicitly: when the weights are not in the local cache, one
:class:`MissingWeightsError` names the missing file, where it was looked for, and how to get it.
Every model must contain BatchNorm layers (what the tta policies adapt); otherwise ``ValueError``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

import tta_streams
from tta.surgery import is_batchnorm
from tta_bench.source_model import Standardize, load_bundled_model

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MissingWeightsError",
    "build_architecture",
    "canonical_dataset",
    "count_batchnorm",
    "default_model_dir",
    "load_model",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# RobustBench ImageNet entries whose weights come from torchvision, not from model_dir.
_ROBUSTBENCH_TORCHVISION = {"Standard_R50": ("resnet50", "IMAGENET1K_V1")}

CALLABLE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights are not in the local cache, and nothing is downloaded implicitly."""


def count_batchnorm(model: nn.Module) -> int:
    """Number of BatchNorm layers (1d/2d/3d, SyncBatchNorm and subclasses) in ``model``."""
    return sum(1 for module in model.modules() if is_batchnorm(module))


def default_model_dir() -> Path:
    """Where RobustBench checkpoints are looked for: ``$TTA_CACHE_DIR/models`` (else ``~/.cache/tta/models``)."""
    from tta_streams.cache import default_cache_dir

    return default_cache_dir() / "models"


def canonical_dataset(dataset: str) -> str:
    """``"fmnist-c"``, ``"CIFAR-10-C"``, ``"imagenet"`` ... -> the clean dataset its models are trained on
    (``DatasetInfo.base``: ``fmnist``, ``cifar10``, ``cifar100``, ``imagenet``), see :func:`tta_streams.get_dataset`."""
    return tta_streams.get_dataset(dataset).base


def load_model(
    spec: str,
    *,
    dataset: str,
    device: torch.device | str | None = None,
    model_dir: str | os.PathLike[str] | None = None,
    arch: str | None = None,
    model_args: Mapping[str, object] | None = None,
    trust_pickle: bool = False,
) -> nn.Module:
    """Load the model named by ``spec`` for ``dataset``, in eval mode on ``device`` (spec forms: module doc).

    Every returned model takes images as floats in [0, 1]: the bundled and RobustBench models normalize
    inside; torchvision and timm models are wrapped as ``nn.Sequential(normalize, model)`` with their
    ImageNet mean/std. ``model_dir`` is RobustBench's checkpoint folder (default :func:`default_model_dir`).
    ``arch``, ``model_args`` and ``trust_pickle``: see the module docstring.
    Raises :class:`MissingWeightsError` when weights are not cached, ``ValueError`` for an unknown spec or
    dataset, a file that cannot be loaded safely, or a model without BatchNorm.
    """
    dataset = canonical_dataset(dataset)
    model_args = dict(model_args or {})
    kind, _, name = spec.partition(":")
    is_file = Path(spec).expanduser().is_file()
    looks_like_path = spec.endswith((".pt", ".pth", ".ckpt")) or os.sep in spec
    if looks_like_path and Path(spec).expanduser().is_dir():
        raise ValueError(f"{Path(spec).expanduser()} is a folder, not a model file; name the checkpoint file in it")
    if arch is not None and not is_file:
        raise ValueError(
            f"--arch {arch!r} names the architecture of a state-dict file, but --model {spec!r} is not a file"
        )
    is_callable = not is_file and kind not in ("robustbench", "torchvision", "timm") and CALLABLE_SPEC.match(spec)
    if model_args and not is_callable and arch is None:
        raise ValueError(
            f"model arguments {model_args} apply to a 'package.module:callable' model or to --arch; "
            f"--model {spec!r} takes none"
        )
    if spec == "bundled":
        if dataset != "fmnist":
            raise ValueError(f"the bundled model is a Fashion-MNIST classifier; dataset is {dataset!r}")
        model = load_bundled_model()
    elif kind == "robustbench" and name:
        with weights_only_loads(spec):
            model = _load_robustbench(name, dataset, Path(model_dir) if model_dir else default_model_dir())
    elif kind == "torchvision" and name:
        _require_imagenet(spec, dataset)
        with weights_only_loads(spec):
            model = _load_torchvision(name)
    elif kind == "timm" and name:
        _require_imagenet(spec, dataset)
        with weights_only_loads(spec):
            model = _load_timm(name)
    elif is_file:
        model = _load_path(Path(spec).expanduser(), dataset, arch, model_args, trust_pickle)
    elif CALLABLE_SPEC.match(spec):
        model = _load_callable(spec, model_args)
    elif looks_like_path:
        raise FileNotFoundError(f"model checkpoint {spec!r} does not exist")
    else:
        raise ValueError(
            f"unknown model spec {spec!r}; use 'bundled', 'robustbench:<name>', 'torchvision:<name>', "
            "'timm:<name>', a path to a state dict (with --arch), or 'package.module:callable'"
        )
    if count_batchnorm(model) == 0:
        raise ValueError(
            f"model {spec!r} ({type(model).__name__}) has no BatchNorm layer; the tta policies adapt "
            "BatchNorm statistics, so they cannot adapt this model"
        )
    return model.to(device).eval()


def _require_imagenet(spec: str, dataset: str) -> None:
    if dataset != "imagenet":
        raise ValueError(f"{spec!r} is an ImageNet-1k classifier; it cannot be evaluated on {dataset!r}")


def _normalized(model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> nn.Module:
    """``model`` behind a fixed standardization, so that it takes [0, 1] images."""
    return nn.Sequential(OrderedDict(normalize=Standardize(list(mean), list(std)), model=model))


def _hub_checkpoint(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` caches ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _missing(what: str, path: Path, how: str) -> MissingWeightsError:
    return MissingWeightsError(f"{what}: weights file {path} not found (folder {path.parent}); {how}")


def _load_torchvision(name: str) -> nn.Module:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError) as error:
        raise ValueError(f"torchvision has no model {name!r} with pretrained weights: {error}") from error
    path = _hub_checkpoint(weights.url)
    if not path.is_file():
        raise _missing(
            f"torchvision:{name} ({weights})",
            path,
            f"download {weights.url} into that folder (or set TORCH_HOME to a cache that has it)",
        )
    model = torchvision.models.get_model(name, weights="DEFAULT")
    preset = weights.transforms()
    mean, std = getattr(preset, "mean", IMAGENET_MEAN), getattr(preset, "std", IMAGENET_STD)
    return _normalized(model, tuple(mean), tuple(std))


def _timm_cached_file(name: str) -> str:
    """Local path of the pretrained weights timm would fetch for ``name``; MissingWeightsError if none."""
    import huggingface_hub
    import huggingface_hub.constants
    import timm

    if not timm.is_model(name):
        raise ValueError(f"timm has no model {name!r}")
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ValueError(f"timm model {name!r} has no pretrained weights")
    if cfg.file:
        return cfg.file
    looked = []
    if cfg.hf_hub_id:
        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in filenames:
            found = huggingface_hub.try_to_load_from_cache(repo_id, filename, revision=revision or None)
            if isinstance(found, str):
                return found
        looked.append(
            f"Hugging Face repo {repo_id} ({' or '.join(filenames)}) in the hub cache "
            f"{huggingface_hub.constants.HF_HUB_CACHE}"
        )
    if cfg.url:
        path = _hub_checkpoint(cfg.url)
        if path.is_file():
            return str(path)
        looked.append(str(path))
    raise MissingWeightsError(
        f"timm:{name}: pretrained weights not cached: looked for {'; and for '.join(looked)}. Run "
        f"timm.create_model({name!r}, pretrained=True) where there is internet and copy that cache here"
    )


def _load_timm(name: str) -> nn.Module:
    import timm

    path = _timm_cached_file(name)
    # Point timm at the cached file so it reads it directly instead of asking the hub for updates.
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path})
    cfg = model.pretrained_cfg
    return _normalized(model, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))


def _load_robustbench(name: str, dataset: str, model_dir: Path) -> nn.Module:
    from tta_streams._robustbench import import_robustbench

    if dataset not in ("cifar10", "cifar100", "imagenet"):
        raise ValueError(f"RobustBench has no {dataset!r} models; use cifar10, cifar100 or imagenet")
    robustbench = import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel.corruptions]
    if name not in zoo:
        raise ValueError(f"RobustBench has no {dataset} corruptions model {name!r}; available: {', '.join(zoo)}")
    for path in _robustbench_files(name, dataset, zoo[name], model_dir):
        if not path.is_file():
            raise _missing(
                f"robustbench:{name} ({dataset}, corruptions)",
                path,
                "run robustbench.utils.load_model once where there is internet with the same model_dir "
                f"(threat_model='corruptions') and copy {model_dir} here, or pass model_dir",
            )
    return robustbench.utils.load_model(name, model_dir=str(model_dir), dataset=dataset, threat_model="corruptions")


def _robustbench_files(name: str, dataset: str, entry: dict, model_dir: Path) -> list[Path]:
    """The files ``robustbench.utils.load_model`` reads (and would otherwise download) for ``name``."""
    import timm

    timm_name = f"{name.lower().replace('-', '_')}_{dataset}_corruptions"
    if timm.is_model(timm_name):
        return [Path(_timm_cached_file(timm_name))]
    if dataset == "imagenet" and name in _ROBUSTBENCH_TORCHVISION:
        import torchvision

        arch, tag = _ROBUSTBENCH_TORCHVISION[name]
        return [_hub_checkpoint(torchvision.models.get_model_weights(arch)[tag].url)]
    base = model_dir / dataset / "corruptions" / f"{name}.pt"
    if isinstance(entry.get("gdrive_id"), list):
        return [Path(f"{base}_m{i}.pt") for i in range(len(entry["gdrive_id"]))]
    if not entry.get("gdrive_id"):
        raise ValueError(f"RobustBench model {name!r} has no downloadable checkpoint")
    return [base]


@contextlib.contextmanager
def weights_only_loads(spec: str) -> Iterator[None]:
    """Inside, every ``torch.load`` reads tensors only, whatever its caller asks: no pickled code runs.

    The library loaders of cached weights call ``torch.load`` themselves, and torchvision's asks for a
    full unpickle (``weights_only=False``), so a crafted file in a shared ``TORCH_HOME`` would run code.
    PyTorch's own switch ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` forces weights-only loading for the duration
    (process-wide, restored on exit). A refused file is a ValueError naming ``spec``.
    """
    switches = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    saved = {name: os.environ.pop(name, None) for name in switches}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{spec}: a cached weights file is not plain tensors, so it was not loaded "
            f"({_refusal_reason(error)}); replace it with the published file"
        ) from None
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


TRUST_PICKLE_HINT = (
    "if it is a whole model saved with torch.save(model, path) and you trust the file, pass --trust-pickle "
    "(unpickling can run arbitrary code); safer: save model.state_dict() and pass it with --arch"
)


def _archive_kind(path: Path) -> str | None:
    """``"TorchScript"`` or ``"torch.export"`` for those zip archives, else None (read without loading)."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "TorchScript"
    if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
        return "torch.export"
    return None


def _load_path(
    path: Path, dataset: str, arch: str | None, model_args: dict[str, object], trust_pickle: bool
) -> nn.Module:
    """A state dict (``weights_only=True``) into ``arch``; a whole pickled module only if ``trust_pickle``."""
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty: it holds no model (an interrupted save or copy?)")
    archive = _archive_kind(path)
    if archive is not None:
        raise ValueError(
            f"{path} is a {archive} archive: its modules are compiled, with no nn.BatchNorm layer the "
            "policies could replace; save model.state_dict() instead and pass it with --arch"
        )
    if trust_pickle:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError) as error:
            raise ValueError(
                f"{path} is not a plain state dict, so it was not loaded ({_refusal_reason(error)}); "
                f"{TRUST_PICKLE_HINT}"
            ) from None
    if isinstance(obj, nn.Module):
        if arch is not None:
            raise ValueError(f"{path} holds a whole {type(obj).__name__}, not a state dict; drop --arch")
        return obj
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, neither a state dict nor an nn.Module")
    if arch is None:
        raise ValueError(
            f"{path} holds a state dict (weights without the architecture): name the architecture with "
            "--arch bundled, torchvision:<name>, timm:<name> or package.module:callable"
        )
    model, target = build_architecture(arch, dataset, model_args)
    try:
        target.load_state_dict(obj)
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit --arch {arch!r}: {error}") from None
    return model


def _refusal_reason(error: BaseException) -> str:
    """The line of torch's weights-only refusal that names what the file holds (``Unsupported global ...``)."""
    match = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if match:
        return f"it refers to {match.group(1)}, which weights-only loading does not allow"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"weights-only loading refused it: {lines[-1] if lines else type(error).__name__}"


def build_architecture(
    arch: str, dataset: str, model_args: Mapping[str, object] | None = None
) -> tuple[nn.Module, nn.Module]:
    """An untrained model of architecture ``arch`` taking [0, 1] images, and the module a state dict of
    that architecture loads into (the bare network, inside the normalization wrapper if any)."""
    model_args = dict(model_args or {})
    kind, _, name = arch.partition(":")
    if arch == "bundled":
        from tta_bench.source_model import FashionResNet

        try:
            model = FashionResNet(**model_args)  # type: ignore[arg-type]
        except TypeError as error:
            raise ValueError(f"--arch bundled: {error}") from None
        return model, model
    if kind == "torchvision" and name:
        import torchvision

        try:
            net = torchvision.models.get_model(name, weights=None, **model_args)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"--arch {arch!r}: {error}") from None
        return _normalized(net, IMAGENET_MEAN, IMAGENET_STD), net
    if kind == "timm" and name:
        import timm

        if not timm.is_model(name):
            raise ValueError(f"timm has no model {name!r}")
        try:
            net = timm.create_model(name, pretrained=False, **model_args)
        except TypeError as error:
            raise ValueError(f"--arch {arch!r}: {error}") from None
        cfg = net.pretrained_cfg
        return _normalized(net, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))), net
    if CALLABLE_SPEC.match(arch):
        loaded = _load_callable(arch, model_args)
        return loaded, loaded
    raise ValueError(
        f"unknown --arch {arch!r}; use bundled, torchvision:<name>, timm:<name> or package.module:callable"
    )


def _load_callable(spec: str, model_args: Mapping[str, object] | None = None) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        target = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"model spec {spec!r}: cannot import module {module_name!r}: {error}") from error
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"model spec {spec!r}: {module_name} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"model spec {spec!r}: {attr} is not callable")
    try:
        model = target(**dict(model_args or {}))
    except TypeError as error:
        raise ValueError(f"model spec {spec!r} with arguments {dict(model_args or {})}: {error}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"model spec {spec!r} returned a {type(model).__name__}, not an nn.Module")
    return model
