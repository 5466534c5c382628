"""Restarting the parts of the local stack that die, as a kubelet restarts a crashed container.

Invariant: a process that exits while meant to run (``ManagedProcess.crashed``) is started again after a
back-off — 1 s, doubling to 30 s, back to 1 s once it has stayed up 60 s — with one line printed per
restart; a process stopped on purpose (``stop()``, ``LocalStack.stopped()``, ``LocalStack.restart()``) is
left alone, and a process started again by someone else during the back-off is not started twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from moteur.devstack.processes import ManagedProcess


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before restart number ``n + 1`` of a process that keeps crashing."""

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 30.0
    reset_after: float = 60.0  # up at least this long before it crashed: the next wait is ``initial`` again

    def delay(self, crashes_in_a_row: int) -> float:
        return min(self.initial * self.factor ** crashes_in_a_row, self.maximum)


@dataclass(slots=True)
class _Record:
    restarts: int = 0  # since supervision began: the number printed
    in_a_row: int = 0  # crashes without a long enough run between them: the back-off's exponent
    restarting: bool = False  # a restart is waiting out its back-off or starting the process


class Supervisor:
    """Watches ``processes`` (a live mapping: parts added later are watched too) from one thread and restarts
    the ones that crash, each in a thread of its own so that a slow start delays no other restart."""

    def __init__(self, processes: Mapping[str, ManagedProcess], backoff: Backoff | None = None, *,
                 say: Callable[[str], None] | None = None, poll_seconds: float = 0.2) -> None:
        self._processes = processes
        self.backoff = backoff or Backoff()
        self._say = say or (lambda line: print(line, flush=True))
        self._poll_seconds = poll_seconds
        self._records: dict[str, _Record] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._watch, name="moteur-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """No restart begins after this returns; a back-off under way is abandoned."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def restarts(self, name: str) -> int:
        record = self._records.get(name)
        return record.restarts if record else 0

    def _watch(self) -> None:
        while not self._stopping.wait(self._poll_seconds):
            for name, process in list(self._processes.items()):
                record = self._records.setdefault(name, _Record())
                if record.restarting or not process.crashed():
                    continue
                record.restarting = True
                threading.Thread(target=self._restart, args=(name, process, record), name=f"moteur-restart-{name}",
                                 daemon=True).start()

    def _restart(self, name: str, process: ManagedProcess, record: _Record) -> None:
        try:
            if time.monotonic() - process.started_at >= self.backoff.reset_after:
                record.in_a_row = 0
            delay = self.backoff.delay(record.in_a_row)
            record.in_a_row += 1
            record.restarts += 1
            self._say(f"moteur: {name} exited (code {process.exit_code}); restarting in {delay:.1f} s "
                      f"(restart {record.restarts})")
            if self._stopping.wait(delay):
                return
            try:
                process.revive()
            except (RuntimeError, TimeoutError) as exc:  # it died again while starting, or never became ready
                if not self._stopping.is_set():
                    self._say(f"moteur: {name} did not come back: {str(exc).splitlines()[0]}")
        finally:
            record.restarting = False
