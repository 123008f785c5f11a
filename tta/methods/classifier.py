"""The classifier of an output-level method: the model's last ``nn.Linear`` and a capture of its input."""

from __future__ import annotations

from torch import nn

from tta.laplacian import FeatureCapture
from tta.surgery import last_linear

__all__ = ["capture_classifier_input"]


def capture_classifier_input(model: nn.Module, needs: str, *, hook: bool = True) -> tuple[nn.Linear, FeatureCapture]:
    """The model's last ``nn.Linear`` and a :class:`FeatureCapture` of its input (registered on it as a forward
    pre-hook unless ``hook`` is False). ``needs`` says what the method needs it for: a model without one is a
    ValueError "<needs> the model's last nn.Linear, and <model> has none"."""
    classifier = last_linear(model)
    if classifier is None:
        raise ValueError(f"{needs} the model's last nn.Linear, and {type(model).__name__} has none")
    capture = FeatureCapture()
    if hook:
        classifier.register_forward_pre_hook(capture)
    return classifier, capture
