"""Inside a render worker process: limits set once, then jobs one at a time until the parent closes the pipe.

What a worker promises its parent:

- a job never uses more CPU than its budget: ``ITIMER_PROF`` (CPU time of the whole process, to the
  millisecond) ends the process with SIGPROF when the budget is spent, even inside C code (a huge integer
  power, a long Pango layout); ``RLIMIT_CPU`` set a second later ends it with SIGXCPU should the timer be
  missed. The parent reads the signal in the exit code and names the CPU budget.
- the process never maps more memory than its limit (``RLIMIT_AS``): an allocation past it is a
  ``MemoryError``, answered as ``("limit", "memory")``, and the worker exits so that a fragmented heap is
  not reused. A C library that cannot allocate may abort instead; the parent names the memory limit then too.
- every reply is ``("ok", value)``, ``("error", portable error)`` or ``("limit", "memory")``; domain errors
  travel as plain tuples (:func:`portable`), since the runtime's exceptions do not pickle.

Nothing here logs user text: the parent logs what happened, with the tenant and request id it knows.
"""

from __future__ import annotations

import math
import os
import resource
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import grpc

from moteur.runtime.errors import InvalidArgument, MoteurError, QuotaViolation, RemoteError, ResourceExhausted

READY = "ready"
# Signals by which a worker ends when it passes its CPU budget.
CPU_SIGNALS = frozenset({signal.SIGPROF, signal.SIGXCPU})

Reply = tuple[str, Any]


@dataclass(frozen=True)
class Job:
    """One unit of work for a worker: ``function(*args)``, a module-level function the worker can import."""

    function: Callable[..., Any]
    args: tuple[Any, ...]
    cpu_seconds: float
    kind: str = "render"  # a metric and log label: render, check


def serve(conn: Connection, memory_bytes: int, max_jobs: int) -> None:
    """The worker's main loop: limit the process, say ready, run up to ``max_jobs`` jobs, then exit."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a worker ended by SIGXCPU must not write a core file
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    conn.send((READY, os.getpid()))
    for _ in range(max_jobs):
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the parent is gone or closed the pipe: nothing more to do
            return
        reply = run(job)
        conn.send(reply)
        if reply[0] == "limit":
            return


def run(job: Job) -> Reply:
    """Run one job under its CPU budget; the reply says how it ended."""
    _arm_cpu(job.cpu_seconds)
    try:
        return "ok", job.function(*job.args)
    except MemoryError:
        return "limit", "memory"
    except MoteurError as exc:
        return "error", portable(exc)
    except Exception as exc:  # a bug, not the caller's doing: the parent raises it as INTERNAL
        return "error", ("internal", f"{type(exc).__name__}: {exc}")
    finally:
        _disarm_cpu()


def portable(error: MoteurError) -> tuple[Any, ...]:
    """A domain error as plain data that pickles; :func:`restore` builds it again."""
    if isinstance(error, InvalidArgument):
        return "invalid_argument", [(v.field, v.description) for v in error.violations]
    if isinstance(error, ResourceExhausted):
        return "resource_exhausted", error.message, [(v.subject, v.description) for v in error.violations]
    return "other", error.code.name, error.message


def restore(data: tuple[Any, ...]) -> Exception:
    """The exception a worker's ``("error", data)`` reply stands for."""
    kind = data[0]
    if kind == "invalid_argument":
        (field, description), *more = data[1]
        error = InvalidArgument(field, description)
        error.violations.extend(InvalidArgument(f, d).violations[0] for f, d in more)
        return error
    if kind == "resource_exhausted":
        return ResourceExhausted(data[1], violations=[QuotaViolation(s, d) for s, d in data[2]])
    if kind == "other":
        return RemoteError(grpc.StatusCode[data[1]], data[2])
    return RuntimeError(f"render worker failed: {data[1]}")


def _arm_cpu(seconds: float) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(used + seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    signal.setitimer(signal.ITIMER_PROF, seconds)


def _disarm_cpu() -> None:
    signal.setitimer(signal.ITIMER_PROF, 0)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
