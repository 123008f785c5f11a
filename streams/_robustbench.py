"""The one place that imports robustbench.

robustbench 1.1.1 does not import as installed: it does ``import pkg_resources`` (gone from setuptools
81, hence ``setuptools<81`` in pyproject.toml, and deprecated before that) and ``from autoattack import
...``, a module its dependency ships under the name ``pyautoattack``. :func:`import_robustbench` makes
both work without touching robustbench's files; every caller (streams, the benchmark's model loading)
imports robustbench through it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from types import ModuleType

__all__ = ["import_robustbench"]

_ALIASED_SUBMODULES = ("state",)
"""Submodules of ``autoattack`` that robustbench imports by name (``robustbench/eval.py``)."""


def _alias_autoattack() -> None:
    """Register ``pyautoattack`` (and its loaded submodules) under the name ``autoattack``."""
    if "autoattack" in sys.modules or importlib.util.find_spec("autoattack") is not None:
        return  # the original package is installed: use it
    try:
        package = importlib.import_module("pyautoattack")
        for name in _ALIASED_SUBMODULES:
            importlib.import_module(f"pyautoattack.{name}")
    except ImportError as error:
        raise ImportError(
            "robustbench needs the module 'autoattack', which the package 'pyautoattack' provides; "
            "install it with: pip install pyautoattack"
        ) from error
    sys.modules["autoattack"] = package
    for name, module in list(sys.modules.items()):
        if name.startswith("pyautoattack."):
            sys.modules["autoattack" + name[len("pyautoattack") :]] = module


def import_robustbench() -> ModuleType:
    """Import and return ``robustbench`` (with ``robustbench.data`` loaded), fixing its imports first."""
    if "robustbench.data" in sys.modules:
        return sys.modules["robustbench"]
    _alias_autoattack()
    with warnings.catch_warnings():
        # robustbench/loaders.py imports pkg_resources, which warns on import; not ours to fix.
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        # It imports timm, whose hrnet module uses torch.jit.interface (deprecated in recent torch), and
        # its model zoo imports timm's deprecated module paths (timm.models.layers etc.).
        warnings.filterwarnings("ignore", message="`torch.jit.interface` is deprecated", category=FutureWarning)
        warnings.filterwarnings(
            "ignore", message=r"Importing from timm\.models\.\w+ is deprecated", category=DeprecationWarning
        )
        try:
            module = importlib.import_module("robustbench")
            importlib.import_module("robustbench.data")
        except ModuleNotFoundError as error:
            if error.name == "pkg_resources":
                raise ImportError(
                    "robustbench imports pkg_resources, which setuptools 81 removed; "
                    "install setuptools<81 (pip install 'setuptools<81')"
                ) from error
            if error.name is not None and error.name.split(".")[0] == "robustbench":
                raise ImportError(
                    "CIFAR-10-C, CIFAR-100-C and ImageNet-C are read through the robustbench package, which is not "
                    "installed: pip install 'tta-norm[bench]'"
                ) from error
            raise
    return module
