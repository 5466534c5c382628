"""Child processes of the local stack: started in their own process group, stopped gently, then firmly.

A process remembers whether it is meant to run: ``start()`` says yes, ``stop()`` says no, and a process that
exits while meant to run has crashed (``kill()`` is a crash) — what a supervisor restarts (see supervisor.py).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port free now and below the kernel's ephemeral range: a port the kernel picks for port 0
    is also one it may give an outgoing connection before the server meant for it starts (a bind race
    that took a model server down), and the same port is never handed out twice by this process."""
    low = int(_EPHEMERAL.read_text().split()[0]) if _EPHEMERAL.exists() else 32768
    for _ in range(200):
        port = random.randrange(10_000, max(low, 10_001))
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # no luck below the range: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


@dataclass
class ManagedProcess:
    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    ready: Callable[[], bool] = lambda: True
    ready_timeout: float = 60.0
    _process: subprocess.Popen[bytes] | None = None
    _wanted: bool = field(default=False, init=False)  # started and not stopped since: an exit now is a crash
    started_at: float = field(default=0.0, init=False)  # time.monotonic() of the last spawn
    # Serialises spawning and stopping, so that a supervisor's restart and a caller's start() or stop()
    # never leave two processes, or one that was meant to be stopped.
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False, compare=False)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def exit_code(self) -> int | None:
        """The last process's exit status (negative: killed by that signal); None while it runs."""
        return self._process.poll() if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def crashed(self) -> bool:
        """Exited although nobody stopped it: started, not stopped since, and no longer running."""
        return self._wanted and self._process is not None and self._process.poll() is not None

    def start(self) -> None:
        """Start the process (a running one is left as it is) and wait until it is ready."""
        with self._lock:
            self._wanted = True
            if not self.running():
                self._spawn()
        self.wait_ready()

    def revive(self) -> bool:
        """Start again a process that crashed and wait until it is ready; False, doing nothing, when it was
        stopped on purpose or started again by someone else meanwhile."""
        with self._lock:
            if not self.crashed():
                return False
            self._spawn()
        self.wait_ready()
        return True

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            list(self.argv), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
            start_new_session=True,  # its own group: Ctrl-C on `make run` reaches us, and we stop it in order
        )
        self.started_at = time.monotonic()
        log.close()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"{self.name} exited during start-up; see {self.log_path}:\n{self.tail()}")
            if self.ready():
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {self.ready_timeout:g} s; see {self.log_path}:\n{self.tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (services drain in-flight calls), then SIGKILL if it takes longer than ``timeout``. A
        stopped process stays down: a supervisor does not restart it."""
        with self._lock:
            self._wanted = False
            if not self.running():
                return
            assert self._process is not None
            self._signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._process.wait()

    def kill(self) -> None:
        """kill -9: what a crash looks like (a supervisor restarts it; ``stop()`` keeps it down)."""
        if self.running():
            assert self._process is not None
            self._signal(signal.SIGKILL)
            self._process.wait()

    def _signal(self, signum: int) -> None:
        assert self._process is not None
        try:
            os.killpg(self._process.pid, signum)
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""
