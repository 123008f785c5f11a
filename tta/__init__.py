"""tta: test-time adaptation of normalization statistics for any model with BatchNorm.

``tta.adapt(model, "rbn")`` swaps every BatchNorm layer for a policy layer that re-estimates its
statistics online from the test stream; ``tta.attach_method(model, "tent")`` stacks a method on it (a
learner); ``reset``, ``detach`` and ``paused`` undo or freeze either; ``CorrelationMeter`` tells from
the predictions how label-correlated a stream is. ``tta.list_policies()`` and ``tta.list_methods()`` name
what is registered; ``tta.policies`` and ``tta.methods`` are the packages that hold one module each.

See :doc:`/concepts` for how the pieces fit, :doc:`/policies/index` and :doc:`/methods/index` for each
policy and method.
"""

__version__ = "0.2.0.dev0"

from tta import methods, policies
from tta.api import adapt, attach_method, detach, paused, policy_layers, reset
from tta.correlation import CorrelationMeter
from tta.methods.base import Method
from tta.policies.base import NormPolicy
from tta.registry import (
    check_method_options,
    check_policy_options,
    get_method,
    get_policy,
    list_methods,
    list_policies,
    method_options,
    policy_options,
    register_method,
    register_policy,
)
from tta.window import SlidingWindow

__all__ = [
    "CorrelationMeter",
    "Method",
    "NormPolicy",
    "SlidingWindow",
    "__version__",
    "adapt",
    "attach_method",
    "check_method_options",
    "check_policy_options",
    "detach",
    "get_method",
    "get_policy",
    "list_methods",
    "list_policies",
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
