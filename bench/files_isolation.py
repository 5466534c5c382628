"""Files isolation: one tenant's pathological templates against another tenant's renders.

1. What a render worker costs: the same render in-process and through a warm render pool (no gRPC).
2. Over gRPC to the files service of a local stack (default settings: two workers, 2 s template CPU budget,
   1 GiB per worker): tenant B renders a PDF report one after another, alone, then while tenant A's admin
   uploads pathological templates (loops, a huge power, a memory hog, a recursive macro) from four loops at
   once. Prints B's p50/p99 both times and the ratio of the p99s (target: at most 2x), what A got back, and
   the peak resident memory of the files service process (RSS) and of its process tree (PSS of the service,
   the fork server and the workers) against the memory the workers may map. With ``BENCH_FLAMES``, a py-spy
   flame graph of the files service, its fork server and its workers (one graph) while under attack.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc

from bench.flames import flame_graphs
from bench.stats import Figures
from moteur.devstack.stack import LocalStack, StackOptions
from moteur.files.formats import BY_NAME
from moteur.files.pool import PoolLimits, RenderPool
from moteur.files.rendering import RenderInput, produce, render_file
from moteur.files.settings import FilesSettings
from moteur.files.templates import BUILT_INS, TemplateRenderer
from moteur.files.worker import Job
from moteur.runtime.identity import Identity
from moteur.v1 import common_pb2, files_pb2, files_pb2_grpc

RENDERS = 40
ATTACK_LOOPS = 4
DEADLINE_SECONDS = 10.0
ATTACKER = Identity("tenant-a", "admin", "standard", admin=True)
VICTIM = Identity("tenant-b", "bob", "standard")
REPORT = ("# Rapport mensuel\n\nL'été à Besançon : ça œuvre « bien », déjà.\n\n"
          + "".join(f"## Section {n}\n\n" + "Un paragraphe accentué : é à ç œ. " * 20 + "\n\n" for n in range(1, 4))
          + "| Mois | Ventes |\n|---|---|\n" + "".join(f"| {m:02d} | {m * 1234} |\n" for m in range(1, 13)))
PATHOLOGICAL = [
    "{% for a in range(100000) %}{% for b in range(6000) %}{% endfor %}{% endfor %}",
    "{{ (2**64**64**64**64**64) > 1 }}",
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
]


def _median_ms(function, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def worker_cost() -> None:
    """The same render in-process and through a warm pool: what the process hop adds."""
    pool = RenderPool(PoolLimits(workers=1))
    await pool.start()
    renderer = TemplateRenderer()
    print("files isolation: one render in-process vs in a warm render worker (median of 20)")
    try:
        for name in ("markdown", "pdf"):
            fmt = BY_NAME[name]
            request = RenderInput(fmt, text=REPORT)
            args = (fmt, BUILT_INS["report"], request, "", None, 50 * 2**20)
            local = _median_ms(lambda args=args: produce(*args[:5], renderer, args[5]), 20)
            pooled = []
            for _ in range(20):
                started = time.perf_counter()
                await pool.run("bench", Job(render_file, args, 20.0))
                pooled.append(time.perf_counter() - started)
            remote = statistics.median(pooled) * 1000
            print(f"  {name:<8} in-process {local:8.2f} ms   worker {remote:8.2f} ms   ({remote - local:+.2f} ms)")
    finally:
        pool.close()


class _PeakRss:
    """Samples the resident memory of a process (RSS) and of its whole tree every 50 ms (PSS: pages the fork
    server and its workers share are counted once, as the container's memory limit counts them)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.service = self.tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.service = max(self.service, _rss(self.pid))
            self.tree = max(self.tree, sum(_rss(p, "smaps_rollup", "Pss:") for p in _tree(self.pid)))


def _rss(pid: int, file: str = "status", field: str = "VmRSS:") -> int:
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return pids


async def _renders(files: files_pb2_grpc.FilesStub, metadata: list[tuple[str, str]]) -> tuple[list[float], int]:
    latencies, failed = [], 0
    for _ in range(RENDERS):
        started = time.perf_counter()
        try:
            await files.Render(files_pb2.RenderRequest(format=common_pb2.FILE_FORMAT_PDF, markdown=REPORT),
                               metadata=metadata, timeout=DEADLINE_SECONDS)
        except grpc.aio.AioRpcError:
            failed += 1
        latencies.append(time.perf_counter() - started)
    return latencies, failed


async def _attack(files: files_pb2_grpc.FilesStub, metadata: list[tuple[str, str]], source: str,
                  stop: asyncio.Event, outcomes: Counter[str], slowest: list[float]) -> None:
    request = files_pb2.PutTemplateRequest(name="attack", formats=[common_pb2.FILE_FORMAT_MARKDOWN], source=source)
    while not stop.is_set():
        started = time.perf_counter()
        try:
            await files.PutTemplate(request, metadata=metadata, timeout=30)
            outcomes["OK"] += 1
        except grpc.aio.AioRpcError as error:
            outcomes[error.code().name] += 1
        slowest[0] = max(slowest[0], time.perf_counter() - started)


async def isolation(stack: LocalStack) -> None:
    victim, attacker = stack.mesh_metadata(VICTIM), stack.mesh_metadata(ATTACKER)
    pid = stack.processes["files"].pid
    assert pid is not None
    async with grpc.aio.insecure_channel(stack.address("files")) as channel:
        files = files_pb2_grpc.FilesStub(channel)
        await _renders(files, victim)  # warm up: the first PDF of each worker
        with _PeakRss(pid) as alone_rss:
            started = time.perf_counter()
            alone, alone_failed = await _renders(files, victim)
            alone_seconds = time.perf_counter() - started
        stop, outcomes, slowest = asyncio.Event(), Counter[str](), [0.0]
        # Renders run in the workers, so they are recorded too (children of the service's fork server).
        with _PeakRss(pid) as attacked_rss, flame_graphs("files_isolation", {"files": pid}, subprocesses=True):
            attackers = [asyncio.ensure_future(_attack(files, attacker, PATHOLOGICAL[i % len(PATHOLOGICAL)], stop,
                                                       outcomes, slowest)) for i in range(ATTACK_LOOPS)]
            await asyncio.sleep(1.0)  # the attack is under way before B starts
            started = time.perf_counter()
            attacked, attacked_failed = await _renders(files, victim)
            attacked_seconds = time.perf_counter() - started
            stop.set()
            await asyncio.gather(*attackers)
    quiet = Figures.of("B alone", 1, alone, alone_seconds)
    loud = Figures.of("B under attack", 1, attacked, attacked_seconds)
    settings = FilesSettings()
    workers = settings.files_render_concurrency + settings.files_burst_workers
    budget = workers * settings.files_worker_memory_bytes
    mib = 2**20
    print(f"files isolation: tenant B renders a PDF report {RENDERS} times in a row ({DEADLINE_SECONDS:g} s deadline)")
    for figures, failed in ((quiet, alone_failed), (loud, attacked_failed)):
        print(f"  {figures.name:<15} p50 {figures.p50_ms:8.1f} ms   p99 {figures.p99_ms:8.1f} ms   failed {failed}")
    print(f"  B's p99 under attack / alone: {loud.p99_ms / quiet.p99_ms:.2f}x (target <= 2x)")
    print(f"  tenant A, {ATTACK_LOOPS} PutTemplate loops: {dict(outcomes)}; slowest answer {slowest[0]:.2f} s")
    print(f"  files service process peak RSS: alone {alone_rss.service / mib:.0f} MiB, under attack "
          f"{attacked_rss.service / mib:.0f} MiB")
    print(f"  service + fork server + workers peak PSS: alone {alone_rss.tree / mib:.0f} MiB, under attack "
          f"{attacked_rss.tree / mib:.0f} MiB; the workers may map at most {budget / mib:.0f} MiB "
          f"({workers} workers with burst x MOTEUR_FILES_WORKER_MEMORY_BYTES)")


def main() -> None:
    asyncio.run(worker_cost())
    with tempfile.TemporaryDirectory(prefix="moteur-bench-") as data_dir:
        options = StackOptions(data_dir=Path(data_dir), model_server=False, service_env={"MOTEUR_LOG_LEVEL": "WARNING"})
        with LocalStack(options) as stack:
            asyncio.run(isolation(stack))


if __name__ == "__main__":
    main()
