"""One policy per module; importing them registers them in the order of the spec (M1-M7, M10-M12)."""

import sys

from tta.registry import ListingPackage
from tta.policies import source, tbn, adabn, alpha_bn, momentum_decay, rbn, unmix_tns, adab2n, balanced, iabn, rebalance  # noqa: F401
from tta.policies.base import NormPolicy

LISTING = "list_policies"
sys.modules[__name__].__class__ = ListingPackage

__all__ = ["NormPolicy"]
