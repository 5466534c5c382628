"""Three gateway replicas on one Redis and one MongoDB: limits are exact across them, a noisy tenant on
every replica cannot starve a quiet one, and a session (and its idempotency keys) carries over from one
replica to another."""

from __future__ import annotations

import asyncio
import itertools
import time

import grpc
import pytest
from reliability_kit import Keys

from moteur.client import AsyncMoteurClient, MoteurClientError
from moteur.devstack.stack import LocalStack, StackOptions
from moteur.runtime.api_keys import hash_key
from tests.waiting import metric_sum

pytestmark = pytest.mark.timeout(180)

REPLICAS = 3
# One model shared by the replicas: 3 calls at a time in all, 0.4 s each; each replica dispatches one.
SLOW = {"name": "slow", "provider": "instant", "simulated_latency_ms": 400, "max_concurrency": 3}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory):
    """A stack without model servers whose gateway is one of three replicas; yields it and the addresses."""
    options = StackOptions(data_dir=tmp_path_factory.mktemp("replicas"), model_server=False, fact_extractor="rules",
                           service_env={"MOTEUR_QUEUE_REPLICAS": str(REPLICAS)}, extra_models=[SLOW])
    with LocalStack(options) as stack:
        addresses = [stack.address("gateway")]
        for i in range(2, REPLICAS + 1):
            process, address = stack.extra_service("gateway", f"gateway-{i}")
            process.start()
            addresses.append(address)
        yield stack, addresses


@pytest.fixture(scope="module")
async def keys(replicas, own_keys):
    made: Keys = await own_keys(replicas[0])
    yield made
    await made.close()


async def _on_every_replica(keys: Keys, addresses: list[str], tenant: str, user: str, tier: str = "standard",
                            admin: bool = False) -> tuple[str, list[AsyncMoteurClient]]:
    key, first = await keys.client(tenant, user, tier, admin=admin, address=addresses[0])
    return key, [first, *(keys.on(a, key) for a in addresses[1:])]


async def _code(call) -> grpc.StatusCode:
    try:
        await call
    except MoteurClientError as error:
        return error.code
    return grpc.StatusCode.OK


async def test_a_requests_per_minute_limit_admits_exactly_that_many_across_replicas(replicas, keys) -> None:
    _, addresses = replicas
    limit = 9
    key, clients = await _on_every_replica(keys, addresses, "rep-limits", "lena", admin=True)
    record = await keys.store.find(hash_key(key))
    assert record is not None
    await clients[0].set_limits(f"key:{record.key_id}", requests_per_minute=limit)
    started = time.monotonic()
    codes: list[grpc.StatusCode] = []
    for first in range(0, 3 * limit, 6):  # six at a time: under the user's 8 concurrent turns of the tier
        codes += await asyncio.gather(*(_code(clients[i % REPLICAS].chat(f"n{i}", model_hint="instant",
                                                                          use_memory=False))
                                        for i in range(first, min(first + 6, 3 * limit))))
    refill = int((time.monotonic() - started) * limit / 60)
    admitted = codes.count(grpc.StatusCode.OK)
    assert limit <= admitted <= limit + refill, f"{admitted} admitted across {REPLICAS} replicas for {limit}/min"
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes


async def test_a_noisy_tenant_on_every_replica_cannot_starve_a_quiet_one(replicas, keys) -> None:
    _, addresses = replicas
    _, noisy = await _on_every_replica(keys, addresses, "rep-noisy", "nico", tier="service")
    _, quiet = await _on_every_replica(keys, addresses, "rep-quiet", "quinn")
    stop = asyncio.Event()

    async def flood(client: AsyncMoteurClient) -> int:
        sent = 0
        while not stop.is_set():
            await _code(client.chat("more!", model_hint="slow", use_memory=False, timeout=30))
            sent += 1
        return sent

    floods = [asyncio.create_task(flood(noisy[i % REPLICAS])) for i in range(6 * REPLICAS)]
    try:
        await asyncio.sleep(1.0)  # the queues fill with the noisy tenant's turns
        waits = []
        for i in range(2 * REPLICAS):
            started = time.monotonic()
            reply = await quiet[i % REPLICAS].chat("my turn?", model_hint="slow", use_memory=False, timeout=10)
            waits.append(time.monotonic() - started)
            assert reply.message.content, "the quiet tenant got an empty answer"
    finally:
        stop.set()
        sent = sum(await asyncio.gather(*floods))
    # Starved, a quiet turn would wait behind all six 0.4 s turns the noisy tenant keeps queued per replica
    # and more; measured on a busy 2-core machine the quiet tenant's turns took 1.6 to 2.1 s.
    assert max(waits) < 3.0, f"the quiet tenant waited {[round(w, 2) for w in waits]} s while {sent} noisy turns ran"


async def test_a_session_and_its_idempotency_keys_carry_over_between_replicas(replicas, keys) -> None:
    _, addresses = replicas
    _, clients = await _on_every_replica(keys, addresses, "rep-sessions", "sam")
    first = await clients[0].chat("My name is Sam.", model_hint="instant")
    second = await clients[1].chat("What is my name?", session_id=first.session_id, model_hint="instant",
                                   idempotency_key="sam-2")
    again = await clients[2].chat("What is my name?", session_id=first.session_id, model_hint="instant",
                                  idempotency_key="sam-2")
    assert again.idempotent_replay and again.message.id == second.message.id, "the key was not honoured elsewhere"
    history = await clients[2].get_session(first.session_id)
    assert [m.content for m in history.messages][::2] == ["My name is Sam.", "What is my name?"]
    assert history.session.message_count == 4, "a replayed turn was written twice"


async def test_turns_moving_between_replicas_each_see_the_whole_conversation(replicas, keys) -> None:
    """A replica keeps the window of the session it wrote last (moteur.gateway.windows): it must never serve
    it once another replica wrote. The instant model's input tokens count the prompt, so each turn's must
    exceed the last one's: a window missing the turn before would not."""
    stack, addresses = replicas
    _, clients = await _on_every_replica(keys, addresses, "rep-windows", "wes")
    hits = metric_sum(stack.ports["gateway-metrics"], "moteur_session_window_lookups_total", outcome="hit")
    first = await clients[0].chat("Turn 0 of a conversation that moves.", model_hint="instant")
    inputs = [first.usage.input_tokens]
    for n, replica in enumerate([1, 1, 0, 0, 0, 2, 0, 1, 1], start=1):
        reply = await clients[replica].chat(f"Turn {n} of a conversation that moves.", session_id=first.session_id,
                                            model_hint="instant")
        inputs.append(reply.usage.input_tokens)
    assert all(later > earlier for earlier, later in itertools.pairwise(inputs)), inputs
    history = await clients[2].get_session(first.session_id)
    assert history.session.message_count == 20
    # The first replica answered turns 4 and 5 from the window it kept after turn 3; not 3 (1 wrote), nor 7 (2 did).
    assert metric_sum(stack.ports["gateway-metrics"], "moteur_session_window_lookups_total", outcome="hit") == hits + 2
