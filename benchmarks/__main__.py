"""``python -m benchmarks``: the same as ``tta-bench``."""

import sys

from tta_bench.cli import main

sys.exit(main())
