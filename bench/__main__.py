"""Run every benchmark: `python -m bench` (or `make bench`); `python -m bench admission` runs one."""

from __future__ import annotations

import sys

from bench import admission, chat_path, overload

BENCHMARKS = {"chat_path": chat_path.main, "admission": admission.main, "overload": overload.main}

if __name__ == "__main__":
    for name in sys.argv[1:] or BENCHMARKS:
        BENCHMARKS[name]()
