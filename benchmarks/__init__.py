"""tta_bench: the benchmark of tta (the ``tta-bench`` command, the bundled model, grids, results and reports).

It needs the ``bench`` extra: ``pip install 'tta-norm[bench]'``; importing it without that extra raises one
ImportError naming the missing packages.
"""

from __future__ import annotations

import importlib.util

# the packages of the bench extra that the benchmark imports (robustbench is checked where it is read)
_BENCH_PACKAGES = ("torchvision", "tqdm", "matplotlib", "tabulate", "filelock", "jsonschema")


def _missing_packages() -> list[str]:
    return [name for name in _BENCH_PACKAGES if importlib.util.find_spec(name) is None]


if _missing := _missing_packages():
    raise ImportError(f"tta_bench needs the bench extra; missing {', '.join(_missing)}: pip install 'tta-norm[bench]'")
