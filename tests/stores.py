"""A lone SecantusDB or redis-server for tests that need a real store but not the whole mesh (they stay unit
tests)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from moteur.devstack.processes import free_port, port_open


@dataclass(frozen=True)
class LoneStore:
    uri: str
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def _lone(name: str, command: list[str], port: int, startup_seconds: float) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` started, once ``port`` accepts connections; killed on exit."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + startup_seconds
        while not port_open(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start (exit code {process.poll()})")
            time.sleep(0.05)
        yield process
    finally:
        process.kill()
        process.wait()


@contextlib.contextmanager
def lone_secantusdb(storage: Path, startup_seconds: float = 30.0) -> Iterator[LoneStore]:
    """SecantusDB on a free loopback port, storing under ``storage``; killed on exit."""
    port = free_port()
    secantusd = str(Path(sys.executable).with_name("secantusd-py"))
    command = [secantusd, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(storage), "--log-level",
               "WARNING"]
    with _lone("SecantusDB", command, port, startup_seconds) as process:
        yield LoneStore(f"mongodb://127.0.0.1:{port}", process)


@contextlib.contextmanager
def lone_redis(startup_seconds: float = 10.0) -> Iterator[str]:
    """redis-server on a free loopback port, without persistence; yields its URL, killed on exit."""
    port = free_port()
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    command = [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    with _lone("redis-server", command, port, startup_seconds):
        yield f"redis://127.0.0.1:{port}/0"
