"""Imports of the optional packages the ``streams`` extra installs, each failing with one error naming it."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]

# the distribution that installs a module, where the names differ
_DISTRIBUTIONS = {"corrupt_tta": "corrupt-tta", "PIL": "pillow"}


def require(module: str, purpose: str, extra: str = "streams") -> ModuleType:
    """Import ``module``; an ImportError naming ``purpose`` and the extra to install when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise ImportError(
            f"{purpose} needs the {_DISTRIBUTIONS.get(top, top)} package, which is not installed: "
            f"pip install 'tta-norm[{extra}]'"
        ) from exc
