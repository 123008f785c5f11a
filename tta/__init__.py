"""tta: test-time adaptation of normalization statistics for any model with BatchNorm.

``tta.adapt(model, "rbn")`` swaps every BatchNorm layer for a policy layer that re-estimates its
statistics online from the test stream; ``tta.attach_method(model, "tent")`` stacks a method on it (a
learner); ``reset``, ``detach`` and ``paused`` undo or freeze either; ``CorrelationMeter`` tells from
the predictions how label-correlated a stream is. Specification: shared/spec/methods.md.
"""

__version__ = "0.2.0.dev0"

from tta import policies as _policies  # noqa: F401  (registers the policies)
from tta.api import adapt, attach_method, detach, paused, policy_layers, reset
from tta.correlation import CorrelationMeter
from tta.methods.base import Method
from tta.policies.base import NormPolicy
from tta.registry import (
    get_method,
    get_policy,
    method_options,
    methods,
    policies,
    policy_options,
    register_method,
    register_policy,
)

__all__ = [
    "__version__",
    "CorrelationMeter",
    "Method",
    "NormPolicy",
    "adapt",
    "attach_method",
    "detach",
    "get_method",
    "get_policy",
    "method_options",
    "methods",
    "paused",
    "policies",
    "policy_layers",
    "policy_options",
    "register_method",
    "register_policy",
    "reset",
]
