"""`python -m bench` (or `make bench`) runs every benchmark; `python -m bench admission` runs one;
`python -m bench report [DIR]` runs them all and writes a Markdown report with plots (bench/report.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from bench import report
from bench.suite import BENCHMARKS

if __name__ == "__main__":
    if sys.argv[1:2] == ["report"]:
        report.main(Path(sys.argv[2]) if len(sys.argv) > 2 else report.DEFAULT_DIR)
    else:
        for name in sys.argv[1:] or BENCHMARKS:
            BENCHMARKS[name]()
