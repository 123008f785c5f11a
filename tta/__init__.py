"""tta: test-time adaptation of normalization statistics for any model with BatchNorm.

``tta.adapt(model, "rbn")`` swaps every BatchNorm layer for a policy layer that re-estimates its
statistics online from the test stream; ``reset``, ``detach`` and ``paused`` undo or freeze that.
Specification: shared/spec/methods.md.
"""

__version__ = "0.2.0.dev0"

from tta import policies as _policies  # noqa: F401  (registers the policies)
from tta.api import adapt, detach, paused, policy_layers, reset
from tta.augment import AugmentedUpdate
from tta.policies.base import NormPolicy
from tta.registry import get_policy, policies, policy_options, register_policy

__all__ = [
    "__version__",
    "AugmentedUpdate",
    "NormPolicy",
    "adapt",
    "detach",
    "get_policy",
    "paused",
    "policies",
    "policy_layers",
    "policy_options",
    "register_policy",
    "reset",
]
