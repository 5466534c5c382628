"""The render pool without gRPC: jobs run in worker processes under a CPU, memory and time budget, a worker
that passes one is replaced, tenants share the workers fairly, and a job whose caller has gone never runs."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from moteur.files.fairness import FairQueue, QueueFull
from moteur.files.pool import LimitExceeded, PoolLimits, RenderPool
from moteur.files.rendering import Oversize
from moteur.files.worker import Job
from moteur.runtime.context import deadline_var
from moteur.runtime.errors import InvalidArgument

# Not a unit test (`make test-unit`): real worker processes and their CPU, memory and wall budgets: about 17 s.
pytestmark = pytest.mark.slow

MIB = 1024 * 1024


# -- jobs (module level: a worker imports them by name) -------------------------------------------------
def add(a: int, b: int) -> int:
    return a + b


def pid() -> int:
    return os.getpid()


def spin() -> None:
    while True:
        pass


def count() -> int:
    return sum(range(10**13))  # one call into C that would take hours


def allocate(mib: int) -> int:
    return len(bytearray(mib * MIB))


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def touch(path: str) -> None:
    Path(path).touch()


def refuse() -> None:
    raise InvalidArgument("source", "line 3: no")


def oversize() -> Oversize:
    return Oversize(123)


def smuggle() -> object:
    return Path("/etc/passwd")  # any class but Oversize is refused on the way back


# -- the fair queue ----------------------------------------------------------------------------------
def _queue(slots: int = 2, per_tenant: int = 8, grace: float = 0.0) -> FairQueue[str]:
    return FairQueue(slots, per_tenant, stale=lambda item: item.startswith("stale"), grace_seconds=grace)


def test_tenants_take_turns() -> None:
    queue = _queue(slots=4)
    for item in ("a1", "a2", "a3"):
        queue.admit("a", item)
    queue.admit("b", "b1")
    taken = [queue.take(), queue.take()]
    assert taken == [("a", "a1"), ("b", "b1")]


def test_a_tenant_runs_at_most_its_share_while_another_waits() -> None:
    queue = _queue(slots=2)
    for item in ("a1", "a2", "a3"):
        queue.admit("a", item)
    queue.admit("b", "b1")
    assert queue.take() == ("a", "a1")
    assert queue.take() == ("b", "b1")
    assert queue.take() is None  # a has its share (1 of 2) running, b nothing left
    queue.done("b")
    assert queue.take() == ("a", "a2")  # b gone (no grace): a may use both workers


def test_alone_a_tenant_uses_every_worker() -> None:
    queue = _queue(slots=3)
    for item in ("a1", "a2", "a3", "a4"):
        queue.admit("a", item)
    assert [queue.take() for _ in range(4)] == [("a", "a1"), ("a", "a2"), ("a", "a3"), None]


def test_a_tenant_keeps_its_share_between_two_calls() -> None:
    queue = _queue(slots=2, grace=60)
    queue.admit("b", "b1")
    assert queue.take() == ("b", "b1")
    queue.done("b")  # b will send its next render in a moment
    for item in ("a1", "a2"):
        queue.admit("a", item)
    assert queue.take() == ("a", "a1")
    assert queue.take() is None


def test_a_tenant_waiting_behind_anothers_excess_is_starving() -> None:
    queue = _queue(slots=2)
    for item in ("a1", "a2", "a3"):
        queue.admit("a", item)
    queue.take(), queue.take()  # a alone: both workers
    assert not queue.starving()
    queue.admit("b", "b1")  # now a's share is 1 and it runs 2
    assert queue.starving()
    assert queue.take() == ("b", "b1")  # given one more worker, b gets it
    assert not queue.starving()


def test_stale_jobs_are_dropped_not_taken() -> None:
    dropped: list[str] = []
    queue = FairQueue(2, 8, stale=lambda item: item.startswith("stale"), on_drop=dropped.append)
    queue.admit("a", "stale-1")
    queue.admit("a", "a1")
    assert queue.take() == ("a", "a1")
    assert dropped == ["stale-1"] and queue.depth == 0


def test_a_full_tenant_queue_refuses_more_but_not_other_tenants() -> None:
    queue = _queue(per_tenant=2)
    queue.admit("a", "a1")
    queue.admit("a", "a2")
    with pytest.raises(QueueFull):
        queue.admit("a", "a3")
    queue.admit("b", "b1")


# -- the pool ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
async def pool() -> AsyncIterator[RenderPool]:
    started = RenderPool(PoolLimits(workers=2, memory_bytes=512 * MIB, wall_seconds=5.0, max_jobs_per_worker=50,
                                    fair_share_grace_seconds=0.0))
    await started.start()
    yield started
    started.close()


def _job(function: object, *args: object, cpu: float = 5.0) -> Job:
    return Job(function, args, cpu)


async def test_a_job_runs_in_another_process(pool: RenderPool) -> None:
    assert await pool.run("acme", _job(add, 2, 3)) == 5
    assert await pool.run("acme", _job(pid)) != os.getpid()


async def test_a_warm_worker_answers_in_milliseconds(pool: RenderPool) -> None:
    await pool.run("acme", _job(add, 1, 1))
    started = time.perf_counter()
    for _ in range(20):
        await pool.run("acme", _job(add, 1, 1))
    assert (time.perf_counter() - started) / 20 < 0.05


async def test_a_job_past_its_cpu_budget_is_ended_and_its_worker_replaced(pool: RenderPool) -> None:
    started = time.monotonic()
    with pytest.raises(LimitExceeded) as raised:
        await pool.run("acme", _job(spin, cpu=0.5))
    assert raised.value.limit == "cpu" and time.monotonic() - started < 3
    assert await pool.run("acme", _job(add, 1, 2)) == 3  # a fresh worker took its place


async def test_cpu_budget_ends_work_inside_c_code(pool: RenderPool) -> None:
    started = time.monotonic()
    with pytest.raises(LimitExceeded) as raised:
        await pool.run("acme", _job(count, cpu=0.5))
    assert raised.value.limit == "cpu" and time.monotonic() - started < 3


async def test_a_job_past_the_memory_limit_is_ended(pool: RenderPool) -> None:
    with pytest.raises(LimitExceeded) as raised:
        await pool.run("acme", _job(allocate, 2048))
    assert raised.value.limit == "memory"
    assert await pool.run("acme", _job(allocate, 64)) == 64 * MIB


async def test_a_job_past_its_wall_budget_is_ended(pool: RenderPool) -> None:
    with pytest.raises(LimitExceeded) as raised:
        await pool.run("acme", _job(sleep, 30))
    assert raised.value.limit == "wall"


async def test_a_job_ends_with_its_callers_deadline(pool: RenderPool) -> None:
    token = deadline_var.set(time.monotonic() + 0.5)
    try:
        started = time.monotonic()
        with pytest.raises(LimitExceeded) as raised:
            await pool.run("acme", _job(sleep, 30))
    finally:
        deadline_var.reset(token)
    assert raised.value.limit == "deadline" and time.monotonic() - started < 2


async def test_domain_errors_cross_the_process_boundary(pool: RenderPool) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await pool.run("acme", _job(refuse))
    assert raised.value.violations[0].field == "source" and "line 3" in raised.value.message
    assert await pool.run("acme", _job(oversize)) == Oversize(123)


async def test_a_worker_may_send_back_only_plain_data(pool: RenderPool) -> None:
    with pytest.raises(Exception, match="may not send"):
        await pool.run("acme", _job(smuggle))


async def test_a_cancelled_queued_job_never_runs(pool: RenderPool, tmp_path: Path) -> None:
    blockers = [asyncio.ensure_future(pool.run("acme", _job(sleep, 1.0))) for _ in range(2)]
    await asyncio.sleep(0.2)  # both workers busy
    marker = tmp_path / "ran"
    queued = asyncio.ensure_future(pool.run("acme", _job(touch, str(marker))))
    await asyncio.sleep(0.05)
    queued.cancel()
    await asyncio.gather(*blockers)
    await pool.run("acme", _job(add, 0, 0))
    assert not marker.exists()


async def test_an_expired_queued_job_never_runs(pool: RenderPool, tmp_path: Path) -> None:
    blockers = [asyncio.ensure_future(pool.run("acme", _job(sleep, 1.0))) for _ in range(2)]
    await asyncio.sleep(0.2)
    marker = tmp_path / "ran"
    token = deadline_var.set(time.monotonic() + 0.3)
    try:
        queued = asyncio.ensure_future(pool.run("acme", _job(touch, str(marker))))
    finally:
        deadline_var.reset(token)
    await asyncio.gather(*blockers)
    with pytest.raises(LimitExceeded) as raised:
        await queued
    assert raised.value.limit == "deadline" and not marker.exists()


async def test_a_tenant_flooding_the_pool_does_not_hold_every_worker(pool: RenderPool) -> None:
    flood = [asyncio.ensure_future(pool.run("mallory", _job(sleep, 0.6))) for _ in range(8)]
    await asyncio.sleep(0.1)  # mallory holds both workers, six more waiting
    started = time.monotonic()
    assert await pool.run("acme", _job(add, 1, 1)) == 2
    waited = time.monotonic() - started
    await asyncio.gather(*flood)
    assert waited < 0.5  # an extra worker at once: not after mallory's next job (0.5 s), nor its queue (2.4 s)
