"""The benchmark scripts are not a package: put ``benchmarks/`` on the path once
for the tests of their pure functions."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
