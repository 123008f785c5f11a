"""One method per module; importing them registers them: ``none`` first, then in the order of spec M13, then
``dua`` (spec M5's single-image protocol)."""

import sys

from tta.methods.base import GradientMethod, Method
from tta.registry import ListingPackage

# the import order is the registration order: tta.list_methods()
# isort: off
from tta.methods import none, tent, rotta, dua, lame  # noqa: F401
# isort: on

LISTING = "list_methods"
sys.modules[__name__].__class__ = ListingPackage

__all__ = ["GradientMethod", "Method"]
