"""Rate limits and quotas through the gateway, on the real redis-server."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2

from moteur.client import AsyncMoteurClient, MoteurClientError
from moteur.devstack.models import CHAT_MODEL
from moteur.runtime.ids import new_id
from moteur.v1 import gateway_pb2, gateway_pb2_grpc
from tests.waiting import metric


async def _limited_user(make_caller, tier: str = "standard", **limits: int):
    """A user of a fresh tenant whose own limits are set by the tenant's admin key."""
    tenant = f"t-{new_id().lower()}"
    admin = await make_caller(tenant, "", tier=tier, admin=True)
    if limits:
        await admin.client.set_limits("user:u1", **limits)
    return await make_caller(tenant, "u1", tier=tier)


async def _hi_tokens(make_caller) -> int:
    """What a first "hi" turn on the instant model costs a fresh user (the chat route's system prompt counts),
    so that quotas below are set in turns, not in numbers that change with the prompt."""
    probe = await _limited_user(make_caller)
    return (await probe.client.chat("hi", model_hint="instant", max_output_tokens=8)).usage.total_tokens


async def _refusal(call) -> MoteurClientError:
    with pytest.raises(MoteurClientError) as caught:
        await call
    assert caught.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
    return caught.value


async def _admitted_within(user, seconds: float, failure: str) -> None:
    """Polls with a turn until one is admitted (a slot freed)."""
    for _ in range(round(seconds / 0.1)):
        try:
            await user.client.chat("is a slot free?", model_hint="instant")
            return
        except MoteurClientError:
            await asyncio.sleep(0.1)
    pytest.fail(failure)


def _detail(error: MoteurClientError, kind: type) -> object:
    (detail,) = [d for d in error.details if isinstance(d, kind)]
    return detail


async def test_requests_over_the_per_minute_limit_get_quota_failure_and_a_computed_retry(make_caller) -> None:
    user = await _limited_user(make_caller, requests_per_minute=3)
    for _ in range(3):
        await user.client.chat("hi", model_hint="instant")

    error = await _refusal(user.client.chat("one too many", model_hint="instant"))
    failure = _detail(error, error_details_pb2.QuotaFailure)
    assert failure.violations[0].subject == f"tenant:{user.tenant}/user:u1"
    assert "requests_per_minute limit of 3" in failure.violations[0].description
    # GCRA: 3 per minute is one every 20 s; after a burst of 3 the next fits about 20 s later.
    assert 15 < error.retry_after_seconds <= 20


async def test_every_answer_carries_the_remaining_budget_in_trailing_metadata(stack, make_caller) -> None:
    user = await _limited_user(make_caller, requests_per_minute=5, tokens_per_minute=5000)
    async with grpc.aio.insecure_channel(stack.address("gateway")) as channel:
        gateway = gateway_pb2_grpc.GatewayStub(channel)
        remaining = []
        for _ in range(3):
            call = gateway.Chat(gateway_pb2.ChatRequest(message="hi", model_hint="instant"),
                                metadata=[("authorization", f"Bearer {user.key}")])
            await call
            trailing = dict(await call.trailing_metadata())
            remaining.append(int(trailing["x-ratelimit-remaining-requests"]))
            assert trailing["x-ratelimit-limit-requests"] == "5"
            assert trailing["x-ratelimit-limit-tokens"] == "5000"
    assert remaining == [4, 3, 2]


async def test_a_refusal_carries_the_budget_too(stack, make_caller) -> None:
    user = await _limited_user(make_caller, requests_per_minute=2, tokens_per_minute=5000)
    for _ in range(2):
        await user.client.chat("hi", model_hint="instant")
    async with grpc.aio.insecure_channel(stack.address("gateway")) as channel:
        call = gateway_pb2_grpc.GatewayStub(channel).Chat(
            gateway_pb2.ChatRequest(message="hi", model_hint="instant"),
            metadata=[("authorization", f"Bearer {user.key}")])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(refused.value.trailing_metadata())
    assert trailing["x-ratelimit-limit-requests"] == "2" and trailing["x-ratelimit-remaining-requests"] == "0"
    assert 25 < float(trailing["x-ratelimit-reset-requests"].removesuffix("s")) <= 60  # the bucket refills
    assert trailing["x-ratelimit-limit-tokens"] == "5000" and int(trailing["x-ratelimit-remaining-tokens"]) > 0


async def test_a_concurrency_refusal_says_when_the_running_call_should_end(make_caller) -> None:
    user = await _limited_user(make_caller, concurrent_requests=1)
    for _ in range(3):  # the tenant's typical call: the paced model's 0.8 s
        await user.client.chat("warm up", model_hint="paced")
    running = asyncio.create_task(user.client.chat("a paced call", model_hint="paced"))
    await asyncio.sleep(0.3)
    error = await _refusal(user.client.chat("meanwhile", model_hint="instant"))
    await running
    # about 0.8 s after it started, so ~0.5 s from now: computed, not a constant
    assert 0.2 < error.retry_after_seconds < 0.8, error.retry_after_seconds


async def test_leases_are_renewed_while_a_call_runs_and_a_crashed_gateway_frees_them(stack, make_caller) -> None:
    user = await _limited_user(make_caller, concurrent_requests=1)
    process, address = stack.extra_gateway("gateway-short-leases", MOTEUR_LEASE_SECONDS="0.4")
    await asyncio.to_thread(process.start)
    short_leases = AsyncMoteurClient(address, user.key)
    try:
        running = asyncio.create_task(short_leases.chat("a paced call", model_hint="paced"))
        await asyncio.sleep(0.6)  # past one lease: only its renewals hold the slot now
        await _refusal(user.client.chat("meanwhile", model_hint="instant"))
        await running

        crashed = asyncio.create_task(short_leases.chat("a call its gateway will not finish", model_hint="paced"))
        await asyncio.sleep(0.2)
        await _refusal(user.client.chat("meanwhile", model_hint="instant"))
        await asyncio.to_thread(process.kill)
        with pytest.raises(MoteurClientError):
            await crashed
        await _admitted_within(user, 3.0, "the crashed gateway's slot was never freed")  # its lease: 0.4 s
    finally:
        await short_leases.close()
        process.stop()


async def test_a_cost_per_day_quota_refuses_once_spent(make_caller) -> None:
    user = await _limited_user(make_caller, cost_micro_usd_per_day=1)
    await user.client.chat("hi", model_hint="priced")
    error = await _refusal(user.client.chat("again", model_hint="priced"))
    violation = _detail(error, error_details_pb2.QuotaFailure).violations[0]
    assert "cost_micro_usd_per_day limit of 1" in violation.description
    assert error.retry_after_seconds > 0


async def test_limits_are_exact_across_three_gateway_replicas(stack, make_caller) -> None:
    user = await _limited_user(make_caller, requests_per_minute=20)
    replicas = [stack.extra_gateway(f"gateway-replica-{i}") for i in range(2)]
    for process, _ in replicas:
        process.start()
    addresses = [stack.address("gateway"), *(address for _, address in replicas)]
    clients = [AsyncMoteurClient(address, user.key) for address in addresses]
    try:
        async def attempt(i: int) -> bool:
            try:
                await clients[i % 3].chat(f"request {i}", model_hint="instant")
                return True
            except MoteurClientError as error:
                assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
                return False

        outcomes = await asyncio.gather(*(attempt(i) for i in range(200)))  # 10x over the limit
    finally:
        for client in clients:
            await client.close()
        for process, _ in replicas:
            process.stop()
    assert sum(outcomes) == 20


async def test_token_reservations_are_settled_with_the_real_usage(stack, make_caller) -> None:
    user = await _limited_user(make_caller, tokens_per_minute=2000)
    first = await user.client.chat("hello", model_hint="instant", max_output_tokens=100)
    async with grpc.aio.insecure_channel(stack.address("gateway")) as channel:
        call = gateway_pb2_grpc.GatewayStub(channel).Chat(
            gateway_pb2.ChatRequest(message="hello", model_hint="instant", max_output_tokens=100),
            metadata=[("authorization", f"Bearer {user.key}")],
        )
        await call
        remaining = int(dict(await call.trailing_metadata())["x-ratelimit-remaining-tokens"])
    reservation = (len("hello") + 3) // 4 + 100
    used_by_first = first.usage.total_tokens
    assert used_by_first < reservation
    # Settled: the first turn cost its real usage, not its reservation (plus a little refill since).
    assert 2000 - used_by_first - reservation <= remaining <= 2000 - used_by_first - reservation + 10


async def test_a_concurrency_slot_is_released_when_the_caller_hangs_up(make_caller) -> None:
    user = await _limited_user(make_caller, concurrent_requests=1)
    events = user.client.chat_stream("Tell me a long story about the sea.", model_hint="paced")
    await anext(events)
    error = await _refusal(user.client.chat("meanwhile", model_hint="instant"))
    assert "concurrent_requests limit of 1" in _detail(error, error_details_pb2.QuotaFailure).violations[0].description
    await events.aclose()
    await _admitted_within(user, 5.0, "the slot of the cancelled call was never released")


async def test_a_failed_call_releases_its_slot(stack, make_caller) -> None:
    user = await _limited_user(make_caller, concurrent_requests=1)
    with stack.stopped("model", "model2"), pytest.raises(MoteurClientError) as error:
        await user.client.chat("the model is down")
    assert error.value.code is grpc.StatusCode.UNAVAILABLE
    await user.client.chat("the slot is free again", model_hint="instant")


async def test_quota_thresholds_fire_one_alert_each_then_the_quota_refuses(make_caller) -> None:
    user = await _limited_user(make_caller, tokens_per_day=2 * await _hi_tokens(make_caller))  # two turns
    await user.client.chat("hi", model_hint="instant", max_output_tokens=8)
    second = await user.client.chat("hi", model_hint="instant", max_output_tokens=8)
    assert second.usage.total_tokens > 0

    error = await _refusal(user.client.chat("hi", model_hint="instant", max_output_tokens=8))
    assert "tokens_per_day" in error.message
    assert 0 < error.retry_after_seconds <= 86400  # until the end of the UTC day
    alerts = (await user.client.list_alerts()).alerts
    assert sorted(a.threshold_percent for a in alerts) == [80, 100]
    assert {(a.scope, a.limit) for a in alerts} == {("user:u1", "tokens_per_day")}


async def test_redis_down_fails_open_or_closed_by_tier(stack, make_caller) -> None:
    standard = await _limited_user(make_caller, tier="standard")
    free = await _limited_user(make_caller, tier="free")
    with stack.stopped("redis"):
        await standard.client.chat("fail open", model_hint="instant")
        with pytest.raises(MoteurClientError) as error:
            await free.client.chat("fail closed", model_hint="instant")
    assert error.value.code is grpc.StatusCode.UNAVAILABLE
    assert "fails closed" in error.value.message
    await free.client.chat("redis is back", model_hint="instant")


async def test_after_a_redis_restart_no_call_fails_on_a_dead_pooled_connection(stack, make_caller) -> None:
    standard = await _limited_user(make_caller, tier="standard")
    free = await _limited_user(make_caller, tier="free")  # fails closed: a Redis error would be UNAVAILABLE
    # calls at once: the gateway's Redis pool holds several connections, all dead after the restart
    warm = await asyncio.gather(*(standard.client.chat(f"warm {i}", model_hint="instant") for i in range(8)))
    assert all(reply.model == "instant" for reply in warm)
    await asyncio.to_thread(stack.restart, "redis")
    fallbacks = {p: metric(stack, "gateway", "moteur_limiter_redis_unavailable_total", policy=p)
                 for p in ("fail_open", "fail_closed")}
    admitted = metric(stack, "gateway", "moteur_limiter_decisions_total", decision="admitted")
    for i in range(3):
        reply = await free.client.chat(f"after the restart {i}", model_hint="instant")
        assert reply.model == "instant" and reply.message.content
    # each was admitted by the restarted Redis, on a fresh connection: none met a dead one and fell back
    assert {p: metric(stack, "gateway", "moteur_limiter_redis_unavailable_total", policy=p)
            for p in ("fail_open", "fail_closed")} == fallbacks
    assert metric(stack, "gateway", "moteur_limiter_decisions_total", decision="admitted") >= admitted + 3


async def test_a_priority_above_the_tier_is_permission_denied(make_caller) -> None:
    free = await _limited_user(make_caller, tier="free")
    with pytest.raises(MoteurClientError) as error:
        await free.client.chat("urgent", model_hint="instant", priority="critical")
    assert error.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert "'critical'" in error.value.message


async def test_an_unknown_priority_is_invalid_argument(stack, make_caller) -> None:
    user = await _limited_user(make_caller)
    async with grpc.aio.insecure_channel(stack.address("gateway")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gateway_pb2_grpc.GatewayStub(channel).Chat(
                gateway_pb2.ChatRequest(message="hi", model_hint="instant", priority=42),
                metadata=[("authorization", f"Bearer {user.key}")])
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "priority" in refused.value.details()


async def test_limit_changes_are_checked_and_need_an_admin_key(make_caller, mallory) -> None:
    tenant = f"t-{new_id().lower()}"
    admin = await make_caller(tenant, "", admin=True)
    user = await make_caller(tenant, "u1")
    cases = [
        (user.client.set_limits("user:u1", requests_per_minute=10), grpc.StatusCode.PERMISSION_DENIED),
        (admin.client.set_limits("user:u1", requests_per_minute=-1), grpc.StatusCode.INVALID_ARGUMENT),
        (admin.client.set_limits("tenant", tokens_per_minute=10**12), grpc.StatusCode.INVALID_ARGUMENT),
        (admin.client.set_limits("galaxy:42", requests_per_minute=1), grpc.StatusCode.INVALID_ARGUMENT),
        (admin.client.set_limits(f"key:{new_id()}", requests_per_minute=1), grpc.StatusCode.NOT_FOUND),
    ]
    for call, code in cases:
        with pytest.raises(MoteurClientError) as error:
            await call
        assert error.value.code is code, error.value
    changed = await admin.client.set_limits("user:u1", requests_per_minute=7)
    assert (changed.scope, changed.requests_per_minute) == ("user:u1", 7)
    assert (await user.client.get_limits("user:u1")).requests_per_minute == 7
    # Another tenant's user key may not even name them (a user key reads its own limits only), and another
    # tenant's admin cannot see or touch them: scopes are always the caller's own tenant.
    with pytest.raises(MoteurClientError) as refused:
        await mallory.client.get_limits("user:u1")
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    other_admin = await make_caller(f"t-{new_id().lower()}", "", admin=True)
    assert (await other_admin.client.get_limits("user:u1")).requests_per_minute != 7
    assert (await other_admin.client.set_limits("user:u1", requests_per_minute=1)).requests_per_minute == 1
    assert (await user.client.get_limits("user:u1")).requests_per_minute == 7


async def test_usage_is_reported_per_model_and_a_user_key_sees_only_its_own(make_caller) -> None:
    tenant = f"t-{new_id().lower()}"
    service = await make_caller(tenant, "")
    ada, bob = await make_caller(tenant, "ada"), await make_caller(tenant, "bob")
    answers = [await ada.client.chat("hi", model_hint="instant") for _ in range(2)]
    answers.append(await bob.client.chat("hello"))  # the default local model

    by_model = await service.client.get_usage(group_by="model")
    assert {r.group: r.requests for r in by_model.rows} == {"instant": 2, CHAT_MODEL: 1}
    assert by_model.total.total_tokens == sum(a.usage.total_tokens for a in answers)
    by_user = await service.client.get_usage(group_by="user")
    assert {r.group: r.requests for r in by_user.rows} == {"ada": 2, "bob": 1}
    own = await ada.client.get_usage()
    assert [r.requests for r in own.rows] == [2]
    with pytest.raises(MoteurClientError) as error:
        await ada.client.get_usage(user_id="bob")
    assert error.value.code is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(MoteurClientError) as error:
        await service.client.get_usage(group_by="colour")
    assert error.value.code is grpc.StatusCode.INVALID_ARGUMENT


async def test_quota_alerts_are_posted_to_the_configured_webhook(stack, make_caller) -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[dict[str, object]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    process, address = stack.extra_gateway(
        "gateway-webhook", MOTEUR_ALERT_WEBHOOK_URL=f"http://127.0.0.1:{server.server_port}/alerts"
    )
    process.start()
    try:
        user = await _limited_user(make_caller, tokens_per_day=2 * await _hi_tokens(make_caller))
        async with AsyncMoteurClient(address, user.key) as client:
            for _ in range(2):
                await client.chat("hi", model_hint="instant", max_output_tokens=8)
        for _ in range(50):
            if len(received) == 2:
                break
            await asyncio.sleep(0.1)
    finally:
        process.stop()
        server.shutdown()
    assert sorted(r["threshold_percent"] for r in received) == [80, 100]
    assert {(r["tenant"], r["scope"], r["limit"]) for r in received} == {(user.tenant, "user:u1", "tokens_per_day")}


async def test_a_quota_that_refuses_before_it_is_crossed_still_raises_its_100_percent_alert(make_caller) -> None:
    quota = int(await _hi_tokens(make_caller) / 0.7) + 1
    user = await _limited_user(make_caller, tokens_per_day=quota)
    await user.client.chat("hi", model_hint="instant", max_output_tokens=8)  # about 70 %: under 80 %
    error = await _refusal(user.client.chat("hi", model_hint="instant", max_output_tokens=quota))  # would exceed
    assert "tokens_per_day" in error.message
    assert [a.threshold_percent for a in (await user.client.list_alerts()).alerts] == [100]


async def test_redis_stopped_and_started_under_load_every_turn_ends_clearly(stack, make_caller) -> None:
    callers = {"fail_open": await _limited_user(make_caller, tier="standard"),
               "fail_closed": await _limited_user(make_caller, tier="free")}
    outcomes: dict[str, list[str]] = {"fail_open": [], "fail_closed": []}
    stop = asyncio.Event()

    async def load(policy: str) -> None:
        while not stop.is_set():
            try:
                await callers[policy].client.chat("under load", model_hint="instant", timeout=10)
                outcomes[policy].append("OK")
            except MoteurClientError as error:
                outcomes[policy].append(error.code.name)
            await asyncio.sleep(0.05)  # the free tier allows 20 requests a minute: keep it under

    tasks = [asyncio.create_task(load("fail_open")), asyncio.create_task(load("fail_closed"))]
    await asyncio.sleep(0.5)
    await asyncio.get_running_loop().run_in_executor(None, stack.processes["redis"].stop)
    await asyncio.sleep(1.0)
    await asyncio.get_running_loop().run_in_executor(None, stack.processes["redis"].start)
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*tasks)

    assert set(outcomes["fail_open"]) == {"OK"}  # a local limiter admitted while Redis was away
    assert "UNAVAILABLE" in outcomes["fail_closed"]
    assert set(outcomes["fail_closed"]) <= {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}
    assert outcomes["fail_closed"][-1] in ("OK", "RESOURCE_EXHAUSTED")  # back to Redis once it returned
