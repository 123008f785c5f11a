"""The methods stacked on a policy, one module each; importing them registers them, in the order
:func:`tta.list_methods` gives: ``none``, ``tent``, ``rotta``, ``dua``, ``lame``, ``prior_refine``, ``t3a``,
``roid_prior``, ``cofa``.

See :doc:`/methods/index` for what each does and :doc:`/concepts` for how a method stacks on a policy.
"""

import sys

from tta.methods.base import GradientMethod, Method
from tta.registry import ListingPackage

# the import order is the registration order: tta.list_methods()
# isort: off
from tta.methods import none, tent, rotta, dua, lame, prior_refine  # noqa: F401
from tta.methods import t3a  # noqa: F401
from tta.methods import roid_prior  # noqa: F401
from tta.methods import cofa  # noqa: F401
# isort: on

LISTING = "list_methods"
sys.modules[__name__].__class__ = ListingPackage

__all__ = ["GradientMethod", "Method"]
