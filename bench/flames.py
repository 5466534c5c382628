"""py-spy flame graphs of the processes a benchmark loads, while it loads them.

Set ``BENCH_FLAMES`` to a directory (``python -m bench report`` sets it to the report's) and a benchmark that
uses :func:`flame_graphs` writes one SVG per process there, ``<benchmark>-<process>.svg``; unset, nothing is
started. py-spy samples without pausing the process (``--nonblocking``), so the load it measures is the load
it draws; it can record the benchmark's own process too (``os.getpid()``), for the benchmarks that run the
code under test in-process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moteur.devstack.stack import LocalStack

PY_SPY = Path(sys.executable).with_name("py-spy")
THIS_PROCESS = "bench"  # the name of the benchmark's own process in its SVGs' names


def flames_dir() -> Path | None:
    """Where flame graphs go, or None when they are not asked for (or py-spy is not installed)."""
    wanted = os.environ.get("BENCH_FLAMES", "")
    return Path(wanted) if wanted and PY_SPY.exists() else None


def stack_pids(stack: LocalStack, *names: str) -> dict[str, int]:
    """The pids of a local stack's processes by name, leaving out those not running."""
    processes = {name: stack.processes.get(name) for name in names}
    return {name: p.pid for name, p in processes.items() if p is not None and p.running() and p.pid is not None}


@contextlib.contextmanager
def flame_graphs(benchmark: str, pids: Mapping[str, int], seconds: float | None = None, *,
                 subprocesses: bool = False) -> Iterator[list[Path]]:
    """Record each process for ``seconds`` (the length of the load run inside the block) or, without it, until
    the block ends; yields the SVG paths written once it has. ``subprocesses`` records each process's children
    in its graph too (the files service's render workers)."""
    directory = flames_dir()
    written: list[Path] = []
    if directory is None:
        yield written
        return
    directory.mkdir(parents=True, exist_ok=True)
    timed = ["--duration", str(max(1, int(seconds)))] if seconds is not None else []
    recorders = {}
    for name, pid in pids.items():
        svg = directory / f"{benchmark}-{name}.svg"
        svg.unlink(missing_ok=True)  # an SVG of an earlier run must not pass for this one's
        recorders[svg] = subprocess.Popen(
            [str(PY_SPY), "record", "--pid", str(pid), *timed, "--rate", "100", "--nonblocking",
             *(["--subprocesses"] if subprocesses else []), "--format", "flamegraph", "--output", str(svg)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    try:
        yield written
    finally:
        for svg, recorder in recorders.items():
            if seconds is None:
                recorder.send_signal(signal.SIGINT)  # py-spy writes what it has sampled and exits
            try:
                recorder.wait(timeout=(seconds or 0) + 30)
            except subprocess.TimeoutExpired:
                recorder.kill()  # no graph rather than a recorder left behind
                recorder.wait()
            if svg.exists():
                written.append(svg)
