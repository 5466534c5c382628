"""py-spy flame graphs of the mesh's processes while a benchmark loads them.

Set ``BENCH_FLAMES`` to a directory (``python -m bench report`` sets it to the report's) and a benchmark that
uses :func:`flame_graphs` writes one SVG per process there, ``<benchmark>-<process>.svg``. py-spy samples
without pausing the process (``--nonblocking``), so the load it measures is the load it draws.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

PY_SPY = Path(sys.executable).with_name("py-spy")


def flames_dir() -> Path | None:
    """Where flame graphs go, or None when they are not asked for (or py-spy is not installed)."""
    wanted = os.environ.get("BENCH_FLAMES", "")
    return Path(wanted) if wanted and PY_SPY.exists() else None


@contextlib.contextmanager
def flame_graphs(benchmark: str, pids: Mapping[str, int], seconds: float) -> Iterator[list[Path]]:
    """Record each process for ``seconds`` (the length of the load run inside the block); yields the SVG paths
    written once the block ends."""
    directory = flames_dir()
    written: list[Path] = []
    if directory is None:
        yield written
        return
    directory.mkdir(parents=True, exist_ok=True)
    recorders = {}
    for name, pid in pids.items():
        svg = directory / f"{benchmark}-{name}.svg"
        recorders[svg] = subprocess.Popen(
            [str(PY_SPY), "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "100",
             "--nonblocking", "--format", "flamegraph", "--output", str(svg)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    try:
        yield written
    finally:
        for svg, recorder in recorders.items():
            with contextlib.suppress(subprocess.TimeoutExpired):
                recorder.wait(timeout=seconds + 30)
            if svg.exists():
                written.append(svg)
