"""One policy per module; importing them registers them in the order of the spec (M1-M7, M10-M12)."""

from tta.policies import source, tbn, adabn, alpha_bn, momentum_decay, rbn, unmix_tns, adab2n, balanced, iabn, rebalance  # noqa: F401
from tta.policies.base import NormPolicy

__all__ = ["NormPolicy"]
