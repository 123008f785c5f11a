"""One method per module; importing them registers them: ``none`` first, then in the order of spec M13, then
``dua`` (spec M5's single-image protocol)."""

import sys

from tta.registry import ListingPackage
from tta.methods.base import GradientMethod, Method
from tta.methods import none, tent, rotta, dua, lame  # noqa: F401  (registers the methods)

LISTING = "list_methods"
sys.modules[__name__].__class__ = ListingPackage

__all__ = ["GradientMethod", "Method"]
