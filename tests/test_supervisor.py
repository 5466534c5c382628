"""Supervision of the local stack's processes (``make run``): a part that dies comes back, with back-off and
one line each; a part stopped on purpose stays down."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from moteur.devstack.processes import ManagedProcess, free_port, port_open
from moteur.devstack.supervisor import Backoff, Supervisor

# Not a unit test (`make test-unit`): real processes killed and brought back, with back-off: about 7 s.
pytestmark = pytest.mark.slow

QUICK = Backoff(initial=0.2, factor=2, maximum=0.8, reset_after=60)


def eventually(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def web(tmp_path: Path) -> Iterator[ManagedProcess]:
    """A small real server: Python's http.server on a free loopback port, ready when the port answers."""
    port = free_port()
    process = ManagedProcess("web", [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                             tmp_path / "web.log", ready=lambda: port_open(port))
    yield process
    process.stop()


@pytest.fixture
def supervised(web: ManagedProcess) -> Iterator[tuple[ManagedProcess, Supervisor, list[str]]]:
    lines: list[str] = []
    web.start()
    supervisor = Supervisor({"web": web}, QUICK, say=lines.append, poll_seconds=0.05)
    supervisor.start()
    yield web, supervisor, lines
    supervisor.stop()


def test_a_killed_process_comes_back_and_says_so(supervised: tuple[ManagedProcess, Supervisor, list[str]]) -> None:
    web, supervisor, lines = supervised
    first = web.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert eventually(lambda: web.running() and web.pid != first and web.ready())
    assert lines == ["moteur: web exited (code -9); restarting in 0.2 s (restart 1)"]
    assert supervisor.restarts("web") == 1


def test_the_line_is_printed_by_default(web: ManagedProcess, capsys: pytest.CaptureFixture[str]) -> None:
    web.start()
    supervisor = Supervisor({"web": web}, QUICK, poll_seconds=0.05)
    supervisor.start()
    try:
        web.kill()
        assert eventually(lambda: supervisor.restarts("web") == 1 and web.running() and web.ready())
    finally:
        supervisor.stop()
    assert "moteur: web exited (code -9); restarting in 0.2 s (restart 1)" in capsys.readouterr().out


def test_a_process_stopped_on_purpose_stays_down(supervised: tuple[ManagedProcess, Supervisor, list[str]]) -> None:
    web, supervisor, lines = supervised
    web.stop()
    time.sleep(3 * QUICK.initial + 0.2)
    assert not web.running() and lines == [] and supervisor.restarts("web") == 0


def test_a_deliberate_restart_does_not_fight_the_supervisor(
    supervised: tuple[ManagedProcess, Supervisor, list[str]],
) -> None:
    web, supervisor, lines = supervised
    web.stop()  # what LocalStack.restart() and stopped() do
    web.start()
    restarted = web.pid
    time.sleep(3 * QUICK.initial + 0.2)
    assert web.pid == restarted and web.running() and lines == [] and supervisor.restarts("web") == 0


def test_a_process_started_again_during_its_back_off_is_not_started_twice(
    supervised: tuple[ManagedProcess, Supervisor, list[str]],
) -> None:
    web, supervisor, lines = supervised
    web.kill()
    assert eventually(lambda: len(lines) == 1)  # the supervisor is waiting out its back-off
    web.start()  # the fault suite's own restart, before the supervisor's
    mine = web.pid
    time.sleep(QUICK.initial + 0.3)
    assert web.pid == mine and web.running() and supervisor.restarts("web") == 1


def crash_lines(tmp_path: Path, lives: float, backoff: Backoff, count: int) -> list[str]:
    """The first ``count`` lines a supervisor prints for a process that exits with status 3 after ``lives`` s."""
    program = f"import time; time.sleep({lives}); raise SystemExit(3)"
    crasher = ManagedProcess("crasher", [sys.executable, "-c", program], tmp_path / "crasher.log")
    lines: list[str] = []
    supervisor = Supervisor({"crasher": crasher}, backoff, say=lines.append, poll_seconds=0.02)
    crasher.start()
    supervisor.start()
    try:
        assert eventually(lambda: len(lines) >= count)
    finally:
        supervisor.stop()
        crasher.stop()
    return lines[:count]


def test_a_process_that_keeps_crashing_waits_longer_each_time(tmp_path: Path) -> None:
    lines = crash_lines(tmp_path, 0.1, QUICK, 4)
    delays = [line.split("restarting in ")[1].split(" s")[0] for line in lines]
    assert delays == ["0.2", "0.4", "0.8", "0.8"]  # doubling, up to the maximum
    assert all("exited (code 3)" in line for line in lines)
    assert lines[3].endswith("(restart 4)")


def test_the_back_off_resets_once_a_process_has_stayed_up(tmp_path: Path) -> None:
    patient = Backoff(initial=0.1, factor=2, maximum=0.8, reset_after=0.2)  # 0.3 s up counts as stable
    assert all("restarting in 0.1 s" in line for line in crash_lines(tmp_path, 0.3, patient, 3))


def test_backoff_doubles_from_one_second_to_thirty() -> None:
    assert [Backoff().delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
