"""A pool of warm render worker processes, shared fairly across tenants, each job under a time and memory budget.

What :class:`RenderPool` promises:

- jobs run in worker processes (:mod:`moteur.files.worker`), never in the service process; workers are
  forked from a fork server (the "forkserver" start method: the service's gRPC threads are never forked)
  that imported and warmed the renderers once, so a worker is ready in milliseconds and renders at full speed;
- each job runs under its CPU budget and the worker's memory limit (enforced inside the worker), and a
  wall-clock budget: what is left of the caller's deadline, at most ``wall_seconds``. A worker that passes
  a budget is ended and replaced; the caller gets :class:`LimitExceeded` naming the limit;
- workers are handed out by a :class:`~moteur.files.fairness.FairQueue`: round robin across tenants, each
  at most its share of workers while others wait, at most ``per_tenant_queue`` jobs waiting per tenant;
- a tenant with nothing running never waits behind a tenant holding more than its share: an extra worker
  (at most ``burst_workers`` of them, each retired after one job) serves it at once;
- a job whose caller has gone (deadline passed, call cancelled) is dropped before it runs; one whose caller
  goes while it runs is ended with its worker, which is replaced;
- a reply is unpickled with only plain data and :class:`~moteur.files.rendering.Oversize` allowed: a worker
  that a template broke out of cannot make the service run code.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import multiprocessing
import pickle
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

from moteur.files import fairness
from moteur.files import worker as worker_main
from moteur.files.metrics import (
    FILES_JOBS_DROPPED,
    FILES_QUEUE_DEPTH,
    FILES_QUEUE_WAIT,
    FILES_WORKERS,
    FILES_WORKERS_BUSY,
    FILES_WORKERS_KILLED,
)
from moteur.files.worker import Job, Reply
from moteur.runtime.context import request_id_var, time_remaining

log = structlog.get_logger("moteur.files.pool")

# Imported (and warmed) once by the fork server; every worker starts from there.
PRELOAD = ["moteur.files.warm"]
# A worker ended by one of these most likely failed to allocate under its memory limit (a C library aborts,
# or the kernel's OOM killer sent SIGKILL).
_MEMORY_SIGNALS = frozenset({signal.SIGKILL, signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGTRAP})
_ALLOWED_CLASSES = {("moteur.files.rendering", "Oversize")}


@dataclass(frozen=True)
class PoolLimits:
    workers: int = 2
    memory_bytes: int = 1024**3
    wall_seconds: float = 60.0
    per_tenant_queue: int = 16
    burst_workers: int = 1  # extra workers, one job each, for a tenant that waits behind another's excess
    max_jobs_per_worker: int = 200  # then the worker is replaced: a slow leak in a C library stays bounded
    fair_share_grace_seconds: float = 2.0
    start_seconds: float = 60.0


class LimitExceeded(Exception):
    """A job was ended by a limit: cpu, memory, wall (``wall_seconds``), deadline (the caller's), crash."""

    def __init__(self, limit: str, job: Job, wall_seconds: float) -> None:
        super().__init__(f"{job.kind} job ended by its {limit} limit")
        self.limit = limit
        self.job = job
        self.wall_seconds = wall_seconds


class QueueFull(Exception):
    """The tenant already has as many jobs waiting as it may."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} jobs waiting")
        self.limit = limit


class _Ended(Exception):
    def __init__(self, limit: str) -> None:
        super().__init__(limit)
        self.limit = limit


@dataclass(eq=False)
class _Pending:
    tenant: str
    job: Job
    future: asyncio.Future[Any]
    expires: float | None  # time.monotonic() of the caller's deadline
    enqueued: float
    request_id: str

    def stale(self) -> bool:
        return self.future.done() or (self.expires is not None and time.monotonic() >= self.expires)


class _Worker:
    """One worker process and the service's end of its pipe."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.jobs = 0

    @classmethod
    async def start(cls, context: ForkServerContext, limits: PoolLimits) -> _Worker:
        ours, theirs = context.Pipe()
        process = context.Process(target=worker_main.serve, name="moteur-render", daemon=True,
                                  args=(theirs, limits.memory_bytes, limits.max_jobs_per_worker))
        await asyncio.to_thread(process.start)
        theirs.close()
        worker = cls(process, ours)
        try:
            await _readable([ours.fileno(), process.sentinel], limits.start_seconds)
            ready = _loads(ours.recv_bytes()) if ours.poll() else None
        except (TimeoutError, EOFError, OSError):
            ready = None
        if not (isinstance(ready, tuple) and ready[0] == worker_main.READY):
            worker.kill()
            raise RuntimeError(f"render worker did not start (exit code {process.exitcode})")
        return worker

    async def call(self, job: Job, seconds: float) -> Reply:
        """Run ``job``; _Ended when the worker ends without a reply or passes ``seconds``. Cancelling it
        ends the worker."""
        self.jobs += 1
        try:
            await asyncio.to_thread(self.conn.send, job)
            await _readable([self.conn.fileno(), self.process.sentinel], max(0.0, seconds))
            if self.conn.poll():
                reply: Reply = _loads(await asyncio.to_thread(self.conn.recv_bytes))
                return reply
        except TimeoutError:
            self.kill()
            raise _Ended("wall") from None
        except asyncio.CancelledError:
            self.kill()
            raise
        except (EOFError, OSError):
            pass  # it ended half-way through its reply
        await asyncio.to_thread(self.process.join, 5)
        raise _Ended(_limit_of(self.process.exitcode))

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        with contextlib.suppress(Exception):
            self.conn.close()
        with contextlib.suppress(Exception):
            self.process.join(1)


class RenderPool:
    def __init__(self, limits: PoolLimits) -> None:
        self.limits = limits
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD)
        self._queue: fairness.FairQueue[_Pending] = fairness.FairQueue(
            limits.workers, limits.per_tenant_queue, stale=_Pending.stale, on_drop=_dropped,
            grace_seconds=limits.fair_share_grace_seconds)
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._size = 0  # workers alive or starting: ``workers``, plus extra ones while a tenant is starving
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        """Start every worker (the first start also starts the fork server: a few seconds)."""
        started = await asyncio.gather(*(_Worker.start(self._context, self.limits)
                                         for _ in range(self.limits.workers)), return_exceptions=True)
        workers = [w for w in started if isinstance(w, _Worker)]
        if len(workers) < len(started):
            for worker in workers:
                worker.kill()
            raise next(e for e in started if isinstance(e, BaseException))
        self._idle.extend(workers)
        self._size = len(workers)
        FILES_WORKERS.set(len(self._idle))
        log.info("files.render_pool_started", workers=len(workers), memory_bytes=self.limits.memory_bytes)

    @property
    def queue_depth(self) -> int:
        return self._queue.depth

    async def run(self, tenant: str, job: Job) -> Any:
        """The job's result, run in a worker when ``tenant``'s turn comes; raises what the job raised,
        :class:`LimitExceeded` or :class:`QueueFull`."""
        remaining = time_remaining()
        now = time.monotonic()
        pending = _Pending(tenant, job, asyncio.get_running_loop().create_future(),
                           None if remaining is None else now + remaining, now, request_id_var.get())
        if pending.stale():
            raise LimitExceeded("deadline", job, 0.0)
        try:
            self._queue.admit(tenant, pending)
        except fairness.QueueFull:
            FILES_JOBS_DROPPED.labels("full").inc()
            raise QueueFull(self.limits.per_tenant_queue) from None
        FILES_QUEUE_DEPTH.set(self._queue.depth)
        self._dispatch()
        return await pending.future

    def close(self) -> None:
        """End every worker now; jobs waiting or running are cancelled."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for worker in [*self._idle, *self._busy]:
            worker.kill()
        self._idle.clear()
        FILES_WORKERS.set(0)

    # -- dispatching ---------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while self._idle and not self._closed:
            taken = self._queue.take()
            if taken is None:
                break
            worker = self._idle.pop()
            self._busy.add(worker)
            self._spawn(self._execute(worker, taken[1]))
        if not self._idle and not self._closed and self._size < self.limits.workers + self.limits.burst_workers \
                and self._queue.starving():
            self._size += 1
            self._spawn(self._add_worker())
        FILES_QUEUE_DEPTH.set(self._queue.depth)
        FILES_WORKERS_BUSY.set(len(self._busy))

    async def _execute(self, worker: _Worker, pending: _Pending) -> None:
        job = pending.job
        FILES_QUEUE_WAIT.labels(job.kind).observe(time.monotonic() - pending.enqueued)
        wall, by_deadline = self.limits.wall_seconds, False
        if pending.expires is not None and pending.expires - time.monotonic() < wall:
            wall, by_deadline = pending.expires - time.monotonic(), True
        call = asyncio.ensure_future(worker.call(job, wall))
        pending.future.add_done_callback(lambda future: call.cancel() if future.cancelled() else None)
        reusable = False
        try:
            await asyncio.wait({call})
            if call.cancelled():
                self._killed(pending, worker, "cancelled")
            elif isinstance(error := call.exception(), _Ended):
                limit = "deadline" if error.limit == "wall" and by_deadline else error.limit
                self._killed(pending, worker, limit)
                _settle(pending, exception=LimitExceeded(limit, job, wall))
            elif error is not None:
                _settle(pending, exception=error)
            else:
                status, value = call.result()
                if status == "limit":
                    self._killed(pending, worker, str(value))
                    _settle(pending, exception=LimitExceeded(str(value), job, wall))
                else:
                    reusable = worker.jobs < self.limits.max_jobs_per_worker
                    _settle(pending, **({"result": value} if status == "ok" else
                                        {"exception": worker_main.restore(value)}))
        finally:
            self._busy.discard(worker)
            self._queue.done(pending.tenant)
            if reusable and not self._closed and self._size <= self.limits.workers:
                self._idle.append(worker)
            else:
                worker.kill()
                FILES_WORKERS.dec()
                self._size -= 1
                if not self._closed and self._size < self.limits.workers:
                    self._size += 1
                    self._spawn(self._add_worker())
            self._dispatch()

    def _killed(self, pending: _Pending, worker: _Worker, limit: str) -> None:
        FILES_WORKERS_KILLED.labels(limit).inc()
        log.warning("files.worker_killed", tenant=pending.tenant, limit=limit, kind=pending.job.kind,
                    request_id=pending.request_id, pid=worker.process.pid,
                    seconds=round(time.monotonic() - pending.enqueued, 3))

    async def _add_worker(self) -> None:
        """Start one worker (counted in ``_size`` by the caller), retrying until it starts or the pool closes."""
        delay = 0.1
        while not self._closed:
            try:
                worker = await _Worker.start(self._context, self.limits)
            except Exception:
                log.warning("files.worker_start_failed", exc_info=True, retry_seconds=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self._closed:  # closed while it started (mypy keeps the loop's narrowing across the await)
                worker.kill()  # type: ignore[unreachable]  # see the line above
                self._size -= 1
                return
            self._idle.append(worker)
            FILES_WORKERS.inc()
            self._dispatch()
            return

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _settle(pending: _Pending, *, result: Any = None, exception: BaseException | None = None) -> None:
    if pending.future.done():
        return
    if exception is not None:
        pending.future.set_exception(exception)
    else:
        pending.future.set_result(result)


def _dropped(pending: _Pending) -> None:
    FILES_JOBS_DROPPED.labels("stale").inc()
    if not pending.future.done():
        pending.future.set_exception(LimitExceeded("deadline", pending.job, 0.0))


def _limit_of(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        signum = -exitcode
        if signum in worker_main.CPU_SIGNALS:
            return "cpu"
        if signum in _MEMORY_SIGNALS:
            return "memory"
    return "crash"


async def _readable(fds: list[int], timeout: float) -> None:
    """Wait until one of ``fds`` is readable (data, end of file, a process ended); TimeoutError after
    ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    for fd in fds:
        loop.add_reader(fd, wake)
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        for fd in fds:
            loop.remove_reader(fd)


class _PlainData(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_CLASSES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a render worker may not send {module}.{name}")


def _loads(data: bytes) -> Any:
    return _PlainData(io.BytesIO(data)).load()
