"""Every benchmark in one run, written up: ``python -m bench report [DIR]`` runs the suite and writes
DIR/REPORT.md (default bench/report/) with each benchmark's printed figures and plots (matplotlib) of
latency against concurrency and of the queue's behaviour under overload, and links each benchmark's py-spy
flame graphs (bench/flames.py). Figures of one run on one machine: compare the ratios inside the report, not
absolute numbers across machines."""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import matplotlib

matplotlib.use("Agg")  # files only: no display on a build machine
import matplotlib.pyplot as plt

from bench.flames import flames_dir
from bench.overload import Outcome
from bench.stats import Figures
from bench.suite import BENCHMARKS

DEFAULT_DIR = Path(__file__).with_name("report")


class _Tee(io.TextIOBase):
    """Prints as usual and keeps a copy for the report."""

    def __init__(self, *streams: io.TextIOBase) -> None:
        self._streams = streams

    def write(self, text: str) -> int:
        for stream in self._streams:
            stream.write(text)
        return len(text)


class Run(NamedTuple):
    printed: str
    result: Any
    seconds: float
    flames: list[Path]  # the SVGs the benchmark wrote in this run


def _run(name: str, bench: Callable[[], Any]) -> Run:
    printed = io.StringIO()
    began, started = time.time(), time.perf_counter()
    with contextlib.redirect_stdout(_Tee(sys.stdout, printed)):
        print(f"== {name}")
        result = bench()
    seconds = time.perf_counter() - started
    directory = flames_dir()
    # By name and time: a file left in the directory by an earlier run, or by another benchmark, is not this one's.
    flames = sorted(svg for svg in directory.glob(f"{name}-*.svg") if svg.stat().st_mtime >= began) if directory else []
    return Run(printed.getvalue(), result, seconds, flames)


def _latency_plot(series: dict[str, list[Figures]], title: str, path: Path) -> None:
    figure, (p50, p99) = plt.subplots(1, 2, figsize=(10, 4))
    for label, points in series.items():
        concurrency = [f.concurrency for f in points]
        p50.plot(concurrency, [f.p50_ms for f in points], marker="o", label=label)
        p99.plot(concurrency, [f.p99_ms for f in points], marker="o", label=label)
    for axis, what in ((p50, "p50"), (p99, "p99")):
        axis.set(xscale="log", yscale="log", xlabel="concurrent callers", ylabel=f"{what} latency (ms)",
                 title=f"{title}: {what}")
        axis.set_xticks([f.concurrency for f in next(iter(series.values()))],
                        labels=[str(f.concurrency) for f in next(iter(series.values()))])
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _overload_plot(phases: dict[str, list[Outcome]], path: Path) -> None:
    figure, (cdf, outcomes) = plt.subplots(1, 2, figsize=(11, 4))
    for phase, results in phases.items():
        for flow in sorted({o.flow for o in results}):
            served = sorted(o.seconds * 1000 for o in results if o.flow == flow and o.code is grpc.StatusCode.OK)
            if served:
                share = [(i + 1) / len(served) for i in range(len(served))]
                cdf.plot(served, share, label=f"{flow}, {phase.split(' ')[0]}")
    cdf.set(xscale="log", xlabel="latency of answered turns (ms)", ylabel="share of turns",
            title="answered turns per tenant, unloaded vs loaded")
    cdf.grid(True, alpha=0.3)
    cdf.legend(fontsize=7)
    loaded = list(phases.values())[-1]
    counts = Counter((o.flow, o.code.name) for o in loaded)
    flows = sorted({flow for flow, _ in counts})
    codes = sorted({code for _, code in counts})
    bottom = [0] * len(flows)
    for code in codes:
        heights = [counts[(flow, code)] for flow in flows]
        outcomes.bar(flows, heights, bottom=bottom, label=code)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    outcomes.set(ylabel="turns", title="outcomes under 10x overload, per tenant")
    outcomes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(out_dir: Path = DEFAULT_DIR) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BENCH_FLAMES", str(out_dir))  # benchmarks that profile write their flame graphs here
    runs = {name: _run(name, bench) for name, bench in BENCHMARKS.items()}
    plots = []
    latency = {**(runs["chat_path"].result or {}), **(runs["router"].result or {})}
    if latency:
        _latency_plot(latency, "latency vs concurrency", out_dir / "latency.png")
        plots.append(("Latency against concurrency: the gateway's Chat path against a bare grpc.aio echo, and "
                      "the router against calling the endpoint directly.", "latency.png"))
    if runs["overload"].result:
        _overload_plot(runs["overload"].result, out_dir / "overload.png")
        plots.append(("The queue under 10x overload: answered turns per tenant (quiet and critical keep their "
                      "latency), and how the noisy tenant's excess is shed.", "overload.png"))
    lines = [
        "# moteur benchmark report", "",
        f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} cores, Python {platform.python_version()}); `BENCH_SECONDS` = "
        f"{os.environ.get('BENCH_SECONDS', 'default')}. One run on one machine: the ratios inside it are what "
        "matter.", "",
    ]
    for caption, image in plots:
        lines += [caption, "", f"![{image}]({image})", ""]
    for name, run in runs.items():
        lines += [f"## {name} ({run.seconds:.0f} s)", "", "```", run.printed.rstrip(), "```", ""]
        if run.flames:  # the slice recorded is described where the benchmark calls flame_graphs
            links = ", ".join(f"[{svg.stem.removeprefix(f'{name}-')}]({os.path.relpath(svg, out_dir)})"
                              for svg in run.flames)
            lines += [f"CPU flame graphs (py-spy) of the processes under its main load: {links}", ""]
    report = out_dir / "REPORT.md"
    report.write_text("\n".join(lines))
    print(f"report: {report}")
    return report


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR)
