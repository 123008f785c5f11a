"""One policy per module; importing them registers them in the order of :doc:`/policies/index`."""

import sys

from tta.policies.base import NormPolicy
from tta.registry import ListingPackage

# the import order is the registration order: tta.list_policies()
# isort: off
from tta.policies import source, tbn, adabn, alpha_bn, momentum_decay, rbn, unmix_tns  # noqa: F401
from tta.policies import adab2n, balanced, iabn, rebalance  # noqa: F401
from tta.policies import bdn  # noqa: F401
# isort: on

LISTING = "list_policies"
sys.modules[__name__].__class__ = ListingPackage

__all__ = ["NormPolicy"]
