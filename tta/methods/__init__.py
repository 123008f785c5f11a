"""One method per module; importing them registers them: ``none`` first, then in the order of spec M13, then
``dua`` (spec M5's single-image protocol)."""

from tta.methods.base import GradientMethod, Method
from tta.methods import none, tent, rotta, dua, lame  # noqa: F401  (registers the methods)

__all__ = ["GradientMethod", "Method"]
