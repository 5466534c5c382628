"""The admission queue's invariants, on the event loop without a network."""

from __future__ import annotations

import asyncio

import pytest

from moteur.gateway.queue import AdmissionQueue
from moteur.runtime.errors import DeadlineExceeded, ResourceExhausted, Unavailable

CRITICAL, HIGH, NORMAL, LOW, BATCH = range(5)


async def _queued(queue: AdmissionQueue, tenant: str, level: int, order: list[str], label: str) -> asyncio.Task:
    async def wait() -> None:
        await queue.acquire(tenant, level)
        order.append(label)

    task = asyncio.create_task(wait())
    await asyncio.sleep(0)  # let it enqueue
    return task


async def test_slots_are_taken_at_once_up_to_capacity_then_turns_wait() -> None:
    queue = AdmissionQueue(capacity=2, max_queued=10, max_queued_per_tenant=10)
    first, second = await queue.acquire("a", NORMAL), await queue.acquire("a", NORMAL)
    assert first.wait_seconds == second.wait_seconds == 0 and queue.in_flight == 2
    order: list[str] = []
    task = await _queued(queue, "a", NORMAL, order, "third")
    assert queue.queued == 1 and order == []
    queue.release()
    await task
    assert order == ["third"] and queue.in_flight == 2


async def test_higher_levels_are_dispatched_first() -> None:
    queue = AdmissionQueue(capacity=1, max_queued=10, max_queued_per_tenant=10)
    await queue.acquire("a", NORMAL)
    order: list[str] = []
    tasks = [await _queued(queue, "a", level, order, name)
             for level, name in ((BATCH, "batch"), (NORMAL, "normal"), (HIGH, "high"), (CRITICAL, "critical"))]
    for _ in tasks:
        queue.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["critical", "high", "normal", "batch"]


async def test_tenants_take_turns_within_a_level() -> None:
    queue = AdmissionQueue(capacity=1, max_queued=100, max_queued_per_tenant=100)
    await queue.acquire("noisy", NORMAL)
    order: list[str] = []
    tasks = [await _queued(queue, "noisy", NORMAL, order, f"noisy{i}") for i in range(5)]
    tasks.append(await _queued(queue, "quiet", NORMAL, order, "quiet0"))
    for _ in tasks:
        queue.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order.index("quiet0") <= 1  # served right after the noisy tenant's first, not after all five


async def test_a_full_queue_sheds_the_lowest_level_for_a_higher_one_and_refuses_the_rest() -> None:
    queue = AdmissionQueue(capacity=1, max_queued=2, max_queued_per_tenant=10)
    await queue.acquire("a", NORMAL)
    order: list[str] = []
    batch = await _queued(queue, "a", BATCH, order, "batch")
    normal = await _queued(queue, "b", NORMAL, order, "normal")
    critical = await _queued(queue, "c", CRITICAL, order, "critical")  # evicts the batch turn
    with pytest.raises(ResourceExhausted, match="higher-priority") as evicted:
        await batch
    assert evicted.value.retry_after_seconds > 0
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await queue.acquire("d", LOW)  # nothing below LOW waits: refused
    queue.release()
    await critical
    queue.release()
    await normal
    assert order == ["critical", "normal"]


async def test_one_tenant_cannot_fill_the_queue() -> None:
    queue = AdmissionQueue(capacity=1, max_queued=10, max_queued_per_tenant=2)
    await queue.acquire("noisy", NORMAL)
    tasks = [await _queued(queue, "noisy", NORMAL, [], str(i)) for i in range(2)]
    with pytest.raises(ResourceExhausted, match="already has 2 turns waiting"):
        await queue.acquire("noisy", NORMAL)
    quiet = await _queued(queue, "quiet", NORMAL, [], "quiet")
    assert queue.queued == 3
    for task in (*tasks, quiet):
        task.cancel()


async def test_a_share_of_capacity_is_kept_for_critical_turns() -> None:
    queue = AdmissionQueue(capacity=3, max_queued=10, max_queued_per_tenant=10, critical_reserve=1)
    await queue.acquire("a", NORMAL)
    await queue.acquire("a", NORMAL)
    waiting = await _queued(queue, "a", NORMAL, [], "third normal")
    assert queue.queued == 1  # the last slot is not for it
    slot = await queue.acquire("b", CRITICAL)
    assert slot.wait_seconds == 0 and queue.in_flight == 3
    waiting.cancel()


async def test_a_turn_whose_deadline_passes_in_the_queue_leaves_it() -> None:
    queue = AdmissionQueue(capacity=1, max_queued=10, max_queued_per_tenant=10)
    await queue.acquire("a", NORMAL)
    with pytest.raises(DeadlineExceeded, match="in the queue"):
        await queue.acquire("a", NORMAL, timeout=0.05)
    assert queue.queued == 0


async def test_a_cancelled_caller_leaves_the_queue_at_once() -> None:
    queue = AdmissionQueue(capacity=1, max_queued=10, max_queued_per_tenant=10)
    await queue.acquire("a", NORMAL)
    order: list[str] = []
    leaving = await _queued(queue, "a", NORMAL, order, "leaving")
    staying = await _queued(queue, "b", NORMAL, order, "staying")
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert queue.queued == 1
    queue.release()
    await staying
    assert order == ["staying"] and queue.in_flight == 1


async def test_draining_hands_back_every_waiting_turn_and_refuses_new_ones() -> None:
    queue = AdmissionQueue(capacity=1, max_queued=10, max_queued_per_tenant=10)
    await queue.acquire("a", NORMAL)
    waiting = await _queued(queue, "a", NORMAL, [], "waiting")
    assert queue.drain() == 1
    with pytest.raises(Unavailable, match="shutting down"):
        await waiting
    with pytest.raises(Unavailable):
        await queue.acquire("b", CRITICAL)


async def test_check_room_refuses_up_front_what_acquire_would_shed() -> None:
    queue = AdmissionQueue(capacity=1, max_queued=1, max_queued_per_tenant=1)
    queue.check_room("a", NORMAL)  # a free slot
    await queue.acquire("a", NORMAL)
    queue.check_room("a", NORMAL)  # room to wait
    waiting = await _queued(queue, "a", NORMAL, [], "waiting")
    with pytest.raises(ResourceExhausted, match="already has 1 turns waiting"):
        queue.check_room("a", NORMAL)
    with pytest.raises(ResourceExhausted, match="queue is full"):
        queue.check_room("b", NORMAL)
    queue.check_room("b", CRITICAL)  # it would evict the waiting normal turn
    waiting.cancel()


async def test_a_tenant_of_weight_two_gets_two_turns_per_round() -> None:
    queue = AdmissionQueue(capacity=1, max_queued=100, max_queued_per_tenant=100)
    await queue.acquire("x", NORMAL)
    order: list[str] = []
    tasks = []
    for _ in range(4):
        for tenant, weight in (("heavy", 2), ("light", 1)):
            async def wait(tenant: str = tenant, weight: int = weight) -> None:
                await queue.acquire(tenant, NORMAL, weight=weight)
                order.append(tenant)
            tasks.append(asyncio.create_task(wait()))
            await asyncio.sleep(0)
    for _ in tasks:
        queue.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order[:6] == ["heavy", "heavy", "light", "heavy", "heavy", "light"]


# The policies in detail: the exact round-robin between tenants, which turn a full queue sheds, the per-tenant
# cap as turns leave, the queue's own maximum wait, and a resize.
async def _serve_all(queue: AdmissionQueue, tasks: list[asyncio.Task]) -> None:
    """Release one slot per waiting turn, one at a time, each turn holding its slot until the next release."""
    for _ in tasks:
        queue.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)


async def test_tenants_are_served_round_robin_in_the_order_they_arrived() -> None:
    queue = AdmissionQueue(capacity=1, max_queued=100, max_queued_per_tenant=100)
    await queue.acquire("busy", NORMAL)
    order: list[str] = []
    tasks = [await _queued(queue, tenant, NORMAL, order, f"{tenant}{i}")
             for tenant, count in (("a", 3), ("b", 2), ("c", 1)) for i in range(count)]
    await _serve_all(queue, tasks)
    assert order == ["a0", "b0", "c0", "a1", "b1", "a2"]  # one turn each per round, each tenant FIFO


async def test_priority_is_strict_across_tenants_and_fair_within_a_level() -> None:
    queue = AdmissionQueue(capacity=1, max_queued=100, max_queued_per_tenant=100)
    await queue.acquire("busy", NORMAL)
    order: list[str] = []
    tasks = [await _queued(queue, "a", LOW, order, "a-low"), await _queued(queue, "a", HIGH, order, "a-high1"),
             await _queued(queue, "a", HIGH, order, "a-high2"), await _queued(queue, "b", HIGH, order, "b-high"),
             await _queued(queue, "b", LOW, order, "b-low")]
    await _serve_all(queue, tasks)
    assert order == ["a-high1", "b-high", "a-high2", "a-low", "b-low"]


async def test_a_full_queue_evicts_the_newest_turn_of_the_lowest_level_only() -> None:
    queue = AdmissionQueue(capacity=1, max_queued=3, max_queued_per_tenant=10)
    await queue.acquire("busy", NORMAL)
    order: list[str] = []
    old_batch = await _queued(queue, "a", BATCH, order, "old batch")
    await asyncio.sleep(0.002)  # newer by the clock, not only by arrival
    new_batch = await _queued(queue, "b", BATCH, order, "new batch")
    low = await _queued(queue, "c", LOW, order, "low")
    high = await _queued(queue, "d", HIGH, order, "high")  # the queue is full: the newest batch turn goes
    with pytest.raises(ResourceExhausted, match="higher-priority turn took your place"):
        await new_batch
    assert queue.queued == 3 and not old_batch.done() and not low.done()
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await queue.acquire("e", BATCH)  # nothing below batch to evict: refused, and nothing else shed
    assert queue.queued == 3
    await _serve_all(queue, [high, low, old_batch])
    assert order == ["high", "low", "old batch"]


async def test_the_per_tenant_cap_counts_waiting_turns_only() -> None:
    queue = AdmissionQueue(capacity=1, max_queued=10, max_queued_per_tenant=1)
    await queue.acquire("a", NORMAL)
    order: list[str] = []
    first = await _queued(queue, "a", NORMAL, order, "first")
    with pytest.raises(ResourceExhausted, match="tenant 'a' already has 1 turns waiting") as refused:
        await queue.acquire("a", HIGH)  # a higher level does not lift the cap, nor evict the tenant's own turn
    assert refused.value.retry_after_seconds > 0 and not first.done()
    queue.release()
    await first  # dispatched: no longer waiting, so the tenant may queue again
    second = await _queued(queue, "a", NORMAL, order, "second")
    assert queue.queued == 1
    queue.release()
    await second
    assert order == ["first", "second"]


async def test_a_turn_waits_no_longer_than_the_queues_maximum_then_is_refused_with_a_retry() -> None:
    queue = AdmissionQueue(capacity=1, max_queued=10, max_queued_per_tenant=10, max_wait_seconds=0.05)
    await queue.acquire("a", NORMAL)
    with pytest.raises(ResourceExhausted, match=r"no model was free within 0\.05 s") as refused:
        await queue.acquire("b", NORMAL, timeout=10)  # the caller's deadline is later: the queue's own limit
    assert refused.value.retry_after_seconds > 0 and queue.queued == 0
    with pytest.raises(DeadlineExceeded):  # the caller's deadline comes first: it is the caller's
        await queue.acquire("b", NORMAL, timeout=0.01)
    assert queue.queued == 0 and queue.in_flight == 1


async def test_a_larger_capacity_dispatches_waiting_turns_at_once() -> None:
    queue = AdmissionQueue(capacity=1, max_queued=10, max_queued_per_tenant=10)
    await queue.acquire("a", NORMAL)
    order: list[str] = []
    tasks = [await _queued(queue, "a", NORMAL, order, str(i)) for i in range(3)]
    queue.resize(3, 0)
    assert queue.in_flight == 3 and queue.queued == 1  # two dispatched by the resize itself
    await asyncio.gather(*tasks[:2])
    assert order == ["0", "1"] and not tasks[2].done()
    queue.release()
    await asyncio.gather(*tasks)
    assert order == ["0", "1", "2"]


async def test_a_slot_handed_to_a_caller_that_just_left_is_never_lost() -> None:
    queue = AdmissionQueue(capacity=1, max_queued=10, max_queued_per_tenant=10)
    await queue.acquire("a", NORMAL)
    order: list[str] = []
    leaving = await _queued(queue, "a", NORMAL, order, "leaving")
    staying = await _queued(queue, "b", NORMAL, order, "staying")
    queue.release()  # the slot is handed to the first waiter ...
    leaving.cancel()  # ... which is cancelled before it runs again
    await asyncio.gather(leaving, return_exceptions=True)
    # Either the cancellation won and the slot was passed on at once, or the caller kept it (asyncio.wait_for
    # may let a result that was ready win over the cancellation) and gives it back when its turn ends.
    if order == ["leaving"]:
        assert queue.in_flight == 1 and not staying.done()
        queue.release()
    await asyncio.wait_for(staying, 1)
    assert order[-1] == "staying" and queue.in_flight == 1 and queue.queued == 0
