"""A window over the most recent frames: any adapted model or learner on a stream of single images."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

from tta.methods.base import Method
from tta.policies.base import NormPolicy, pausing

__all__ = ["SlidingWindow"]


class SlidingWindow(nn.Module):
    """Predict frame by frame with a model that needs batches: each frame joins a window of recent frames.

    Single-sample test-time adaptation as in Döbler et al.'s benchmark (mariodoebler/test-time-adaptation,
    ``classification/methods/base.py``, ``TEST.WINDOW_LENGTH``): every incoming frame joins a window of the
    last ``length`` frames, the wrapped model runs on the whole window, and the frame's own row of the
    output is its prediction. The window adapts (an updating forward: the policies' statistics, a
    method's step) once every ``length`` frames, when every frame in it is new since the last update;
    the forwards in between normalize with the current state and update nothing (as under
    :func:`tta.paused`). Until it is full the window holds the frames seen so far.

    It costs one forward of up to ``length`` images per frame. :func:`tta.reset` on the window empties it
    and resets the model; :func:`tta.paused` on it predicts without any update.

    Args:
        model: an adapted model (:func:`tta.adapt`) or a learner (:func:`tta.attach_method`).
        length: frames in the window, an integer of at least 2 (default 64).

    Example:
        >>> import torch, tta
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten())
        >>> window = tta.SlidingWindow(tta.adapt(net, "rbn"), length=8)
        >>> window(torch.rand(1, 3, 8, 8)).shape  # one frame in, its prediction out
        torch.Size([1, 144])

    See :doc:`/concepts` (frame by frame).
    """

    model: nn.Module
    length: int
    frames: Tensor | None
    new_frames: int
    paused: bool

    def __init__(self, model: nn.Module, length: int = 64) -> None:
        if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 2:
            raise ValueError(f"length must be an integer of at least 2, got {length!r}")
        if not any(isinstance(m, NormPolicy) for m in model.modules()):
            raise ValueError(f"{type(model).__name__} is not adapted: call tta.adapt(model, policy) first")
        super().__init__()
        self.model = model
        self.length = int(length)
        self.frames = None
        self.new_frames = 0  # frames that joined since the last updating forward
        self.paused = False

    def clear(self) -> None:
        """Empty the window (:func:`tta.reset` calls it and resets the model)."""
        self.frames, self.new_frames = None, 0

    def forward(self, x: Tensor) -> Tensor:
        """The prediction of each frame of ``x`` (N x ...), the frames taken one after another, in order."""
        if x.dim() < 1 or len(x) == 0:
            raise ValueError(f"expected a batch of frames (N x ...) with N >= 1, got shape {tuple(x.shape)}")
        if self.frames is not None and (x.shape[1:] != self.frames.shape[1:] or x.device != self.frames.device):
            raise ValueError(
                f"a frame of shape {tuple(x.shape[1:])} on {x.device} cannot join a window of frames of shape "
                f"{tuple(self.frames.shape[1:])} on {self.frames.device}; tta.reset(window) empties it"
            )
        return torch.cat([self._frame(x[i : i + 1]) for i in range(len(x))])

    def _frame(self, frame: Tensor) -> Tensor:
        window = frame if self.frames is None else torch.cat([self.frames, frame])[-self.length :]
        self.frames = window
        adapting = not self.paused and self.new_frames + 1 >= self.length
        self.new_frames = 0 if adapting else self.new_frames + 1
        if adapting:
            output = self.model(window)
        else:
            inner = [m for m in self.model.modules() if isinstance(m, (NormPolicy, Method))]
            with pausing(inner):
                output = self.model(window)
        return output[-1:]
