"""``python -m benchmarks``: the same as ``tta-bench``."""

import sys

from benchmarks.cli import main

sys.exit(main())
