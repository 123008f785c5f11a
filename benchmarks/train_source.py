"""Train the bundled Fashion-MNIST source model (CLI: ``tta-bench train-source``).

Recipe: the 60,000-image training split, random crop (zero padding ``PAD`` px) and horizontal flip,
SGD with Nesterov momentum under a one-cycle schedule, label smoothing 0.1. Every random draw comes
from ``seed`` (a ``torch.Generator`` for shuffling and augmentation, a forked RNG for weight init), so
the global RNG is left untouched. Evaluated once, at the end, on the embedded test split.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import tta_streams
from tta_bench.model_families import build_family, check_family
from tta_bench.source_model import WEIGHTS_PATH

__all__ = ["DEFAULT_EPOCHS", "augment", "default_out", "evaluate", "train_source"]

log = logging.getLogger(__name__)

#: Epochs of the shipped checkpoint's recipe.
DEFAULT_EPOCHS = 12
#: Zero padding of the random crop, in pixels.
PAD = 2


def augment(images: Tensor, generator: torch.Generator, pad: int = PAD) -> Tensor:
    """Random ``pad``-pixel-padded crop and horizontal flip of a uint8 ``N x C x H x W`` batch, vectorized."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.arange(w).expand(n, 1, w)
    cols = torch.where(flip.view(n, 1, 1), w - 1 - cols, cols) + dx
    rows = dy + torch.arange(h).view(1, h, 1)
    # Flat index of each output pixel inside its padded image, gathered for all channels at once.
    index = (rows * (w + 2 * pad) + cols).view(n, 1, h * w).expand(n, images.shape[1], h * w)
    return padded.flatten(2).gather(2, index).view_as(images)


@torch.inference_mode()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on uint8 ``images``."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device).float().div_(255)
        y = labels[start : start + batch_size].to(device)
        correct += int((model(x).argmax(1) == y).sum())
    return correct / len(images)


def train_source(
    out_path: str | os.PathLike[str] = WEIGHTS_PATH,
    *,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    batch_size: int = 128,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.1,
    device: torch.device | str | None = None,
    n_test: int | None = None,
    arch: str = "resnet",
) -> dict:
    """Train the bundled architecture (or another family) and write its checkpoint.

    Args:
        out_path: where the float32 state_dict goes (``torch.save``); metadata goes to the same path
            with suffix ``.json`` (accuracy, epochs, seed, torch version, training time).
        epochs: passes over the training split.
        seed: seeds weight init, shuffling and augmentation; the global RNG is not touched.
        root: directory of the raw training files (``tta_streams.fashion_mnist(split="train", root=root)``).
        batch_size, lr, weight_decay, label_smoothing: SGD (Nesterov, momentum 0.9) with a one-cycle
            schedule peaking at ``lr``.
        device: where to train (default CPU).
        n_test: evaluate on the first ``n_test`` embedded test images only (default: all 10,000).
        arch: the model family, a key of :data:`tta_bench.model_families.FAMILIES`: ``resnet`` (the bundled
            model's), ``vgg`` or ``preact``.

    Returns:
        ``{"test_accuracy", "train_seconds", "epochs", "seed", "n_test", "torch_version", "path"}``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_family(arch)  # refused before any data is read
    out_path = Path(out_path)
    device = torch.device(device) if device is not None else torch.device("cpu")
    train = tta_streams.fashion_mnist(split="train", root=root)
    test = tta_streams.fashion_mnist(split="test")
    test_images, test_labels = test.images[:n_test], test.labels[:n_test]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_family(arch)
    # Module.to takes memory_format beside a device; torch's overloads only list it alone
    model = model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    generator = torch.Generator().manual_seed(seed)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        momentum=0.9,
        nesterov=True,
    )
    steps_per_epoch = math.ceil(len(train.labels) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch)

    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train.labels), generator=generator)
        total_loss, correct = 0.0, 0
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            x = augment(train.images[idx], generator).to(device).float().div_(255)
            x = x.contiguous(memory_format=torch.channels_last)
            y = train.labels[idx].to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
        log.info(
            "epoch %d/%d: loss %.4f, train accuracy %.4f, %.0f s",
            epoch + 1,
            epochs,
            total_loss / len(order),
            correct / len(order),
            time.perf_counter() - start,
        )
    train_seconds = time.perf_counter() - start
    accuracy = evaluate(model, test_images, test_labels)
    log.info("clean test accuracy %.4f on %d images", accuracy, len(test_labels))

    result = {
        "test_accuracy": accuracy,
        "train_seconds": round(train_seconds, 1),
        "arch": arch,
        "epochs": epochs,
        "seed": seed,
        "n_test": len(test_labels),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "path": str(out_path),
    }
    state = {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out_path)
    out_path.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def default_out(arch: str = "resnet") -> Path:
    """Where training writes by default: ``fmnist_<arch>.pt`` in the tta cache (``$TTA_CACHE_DIR``), never
    the shipped weights inside the installed package (``WEIGHTS_PATH``, replaced only when named)."""
    from tta_streams.cache import default_cache_dir

    return default_cache_dir() / f"fmnist_{arch}.pt"


def main(argv: list[str] | None = None) -> None:
    """``python -m tta_bench.train_source``: the same as ``tta-bench train-source``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="checkpoint path (default: fmnist_resnet.pt in $TTA_CACHE_DIR)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default=None, help="directory of the raw Fashion-MNIST training files")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = train_source(
        args.out or default_out(),
        epochs=args.epochs,
        seed=args.seed,
        root=args.root,
        batch_size=args.batch_size,
        lr=args.lr,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
