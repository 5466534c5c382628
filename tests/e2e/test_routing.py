"""Routing through the real mesh: the registry over gRPC, routes between the two real local models, the
gateway's dispatch pools sized by the registry, and the registry reloaded on change without a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import pytest
import yaml

from moteur.client import MoteurClientError
from moteur.devstack.models import CHAT_MODEL, SECOND_MODEL
from moteur.devstack.processes import free_port
from moteur.devstack.stack import LocalStack
from moteur.runtime.identity import Identity
from moteur.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, router_pb2, router_pb2_grpc
from tests.waiting import eventually, logged


async def _list_models(stack: LocalStack) -> router_pb2.ListModelsResponse:
    async with grpc.aio.insecure_channel(stack.address("router")) as channel:
        return await router_pb2_grpc.RouterStub(channel).ListModels(
            router_pb2.ListModelsRequest(), metadata=stack.mesh_metadata(Identity("acme", "alice", "standard")),
            timeout=5,
        )


async def test_list_models_shows_the_registry_with_live_state_routes_and_capacity(stack) -> None:
    listed = await _list_models(stack)
    models = {m.name: m for m in listed.models}
    assert {CHAT_MODEL, SECOND_MODEL, "instant", "paced"} <= set(models)
    assert models[CHAT_MODEL].health == router_pb2.MODEL_HEALTH_HEALTHY
    assert models[CHAT_MODEL].max_concurrency == 2 and models[CHAT_MODEL].context_window == 2048
    assert [r.name for r in listed.routes] == ["extract", "summarize", "code", "chat"]
    assert listed.routes[1].request_types == [common_pb2.REQUEST_TYPE_SUMMARIZE]
    assert listed.dispatch_capacity["summarize"] == 4 and listed.dispatch_capacity["model:paced-single"] == 1
    assert listed.default_model == CHAT_MODEL and len(listed.revision) == 12


async def test_the_gateway_lists_only_the_models_a_tier_may_name_and_refuses_the_others(alice) -> None:
    listed = await alice.client.list_models()
    assert CHAT_MODEL in {m.name for m in listed.models} and "enterprise-only" not in {m.name for m in listed.models}
    assert not listed.dispatch_capacity  # internal
    with pytest.raises(MoteurClientError) as refused:
        await alice.client.chat("hi", model_hint="enterprise-only")
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert "tier 'standard' may not choose model 'enterprise-only'" in refused.value.message


async def test_request_types_route_between_the_two_real_models(alice) -> None:
    text = "The lighthouse keeper climbed the stairs every night to light the lamp for the ships."
    summary = await alice.client.chat(f"Summarize: {text}", request_type="summarize", max_output_tokens=48)
    assert summary.message.model == CHAT_MODEL and summary.message.content.strip()
    assert summary.route.entries["route"] == "summarize"
    assert summary.route.entries["route_decision"] == "request_type"

    chat = await alice.client.chat("Say hello.", request_type="chat", max_output_tokens=16)
    assert chat.message.model == CHAT_MODEL and chat.route.entries["route"] == "chat"

    extract = await alice.client.chat("My name is Ada.", request_type="extract", max_output_tokens=16)
    assert extract.message.model == SECOND_MODEL and extract.route.entries["route"] == "extract"


async def test_a_request_without_a_type_is_classified_by_its_nearest_route_examples(alice) -> None:
    # A memory service restarted by an earlier test is asked again within the classifier's back-off (5 s).
    deadline = time.monotonic() + 15
    while True:
        reply = await alice.client.chat("Give me a short summary of this text: the ships came home at dawn.",
                                        max_output_tokens=32)
        route = reply.route.entries
        if route["route_decision"] != "classifier_unavailable" or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    assert (route["route"], route["route_decision"], route["classified_as"]) == ("summarize", "classifier",
                                                                                 "summarize")
    assert 0.1 <= float(route["route_score"]) <= 1.0 and reply.message.model == CHAT_MODEL  # classifier_min_score

    code = await alice.client.chat("Write a function in Go to sort numbers", max_output_tokens=32)
    assert (code.route.entries["route"], code.route.entries["classified_as"]) == ("code", "code")

    vague = await alice.client.chat("Quantum flux capacitor?", max_output_tokens=16)
    assert vague.route.entries["route_decision"] in {"classifier", "default"}


async def _queue_waits(stack: LocalStack, key: str, models: list[str], gap: float = 0.1) -> list[float]:
    """Send one turn per model, ``gap`` apart; the queue wait of each, in ms."""
    async with grpc.aio.insecure_channel(stack.address("gateway")) as channel:
        gateway = gateway_pb2_grpc.GatewayStub(channel)
        calls = []
        for model in models:
            calls.append(gateway.Chat(gateway_pb2.ChatRequest(message="hi", model_hint=model),
                                      metadata=[("authorization", f"Bearer {key}")], timeout=10))
            await asyncio.sleep(gap)
        waits = []
        for call in calls:
            await call
            waits.append(float(dict(await call.trailing_metadata())["x-moteur-queue-wait-ms"]))
    return waits


async def test_the_gateway_dispatches_no_more_turns_than_the_models_registry_allows(stack, alice) -> None:
    # paced-single takes one call at a time: the second turn waits in the gateway's queue for it, while a
    # turn for another model, in another pool, does not wait behind them.
    waits = await _queue_waits(stack, alice.key, ["paced-single", "paced-single", "instant"])
    assert waits[0] < 100 and waits[1] > 500 and waits[2] < 100


async def test_the_registry_reloads_on_change_and_a_broken_file_keeps_the_previous_one(stack, alice) -> None:
    original = stack.models_file.read_text()
    before = await _list_models(stack)
    config = yaml.safe_load(original)
    config["models"].append({"name": "reloaded", "provider": "instant", "max_concurrency": 3})
    next(m for m in config["models"] if m["name"] == "paced-single")["max_concurrency"] = 2
    try:
        stack.models_file.write_text(yaml.safe_dump(config))
        after = await _wait_for(stack, lambda listed: listed.revision != before.revision)
        assert "reloaded" in {m.name for m in after.models}
        reply = await alice.client.chat("from the new registry", model_hint="reloaded")
        assert reply.message.model == "reloaded"
        # That answer carried the new revision: the gateway re-reads the capacities (and logs them), after which
        # two turns fit at once.
        capacity = await eventually(
            lambda: [e for e in logged(stack, "gateway", "dispatch.capacity") if e.get("revision") == after.revision],
            message="the gateway did not re-read the registry's capacities after an answer of the new revision")
        assert capacity[-1]["pools"]["model:paced-single"] == 2
        assert all(wait < 100 for wait in await _queue_waits(stack, alice.key, ["paced-single"] * 2))

        refusals_before = len(logged(stack, "router", "router.config_refused"))
        config["routes"][0]["candidates"] = ["gpt-99"]
        stack.models_file.write_text(yaml.safe_dump(config))
        # the watcher saw the broken file and refused it: only then does "the revision is unchanged" mean anything
        refusals = await eventually(
            lambda: [e for e in logged(stack, "router", "router.config_refused")[refusals_before:]
                     if "unknown models ['gpt-99']" in str(e.get("error"))],
            message="the router never refused the registry naming an unknown model")
        assert refusals[-1]["kept_revision"] == after.revision
        assert (await _list_models(stack)).revision == after.revision
    finally:
        stack.models_file.write_text(original)
        await _wait_for(stack, lambda listed: listed.revision == before.revision)


async def test_a_named_model_that_is_down_fails_naming_it_unless_the_caller_allows_another(stack, alice) -> None:
    # "gone": one model, two deployments, both at an address where nothing listens.
    original = stack.models_file.read_text()
    before = await _list_models(stack)
    config = yaml.safe_load(original)
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    config["models"] += [{"name": f"gone-{i}", "group": "gone", "provider": "openai", "model": "gone",
                          "base_url": nowhere, "timeout_seconds": 5} for i in (1, 2)]
    quiet = {"use_memory": False, "use_tools": False, "max_output_tokens": 8, "request_type": "chat"}
    try:
        stack.models_file.write_text(yaml.safe_dump(config))
        await _wait_for(stack, lambda listed: "gone-1" in {m.name for m in listed.models})
        with pytest.raises(MoteurClientError) as refused:
            await alice.client.chat("Say hello.", model_hint="gone", **quiet)
        assert refused.value.code is grpc.StatusCode.UNAVAILABLE
        assert "model 'gone' is unavailable (all 2 deployments failed: " in refused.value.message
        assert "set allow_model_substitution" in refused.value.message

        reply = await alice.client.chat("Say hello.", model_hint="gone", allow_model_substitution=True, **quiet)
        assert reply.model in {CHAT_MODEL, SECOND_MODEL} and reply.message.model == reply.model  # said, not hidden

        events = [e async for e in alice.client.chat_stream("Say hello.", model_hint="gone",
                                                            allow_model_substitution=True, **quiet)]
        assert events[-1].final.model in {CHAT_MODEL, SECOND_MODEL}
    finally:
        stack.models_file.write_text(original)
        await _wait_for(stack, lambda listed: listed.revision == before.revision)


async def _wait_for(
    stack: LocalStack, condition: Callable[[router_pb2.ListModelsResponse], bool], seconds: float = 10.0
) -> router_pb2.ListModelsResponse:
    deadline = time.monotonic() + seconds
    while True:
        listed = await _list_models(stack)
        if condition(listed) or time.monotonic() > deadline:
            assert condition(listed), "the router did not pick up the changed registry in time"
            return listed
        await asyncio.sleep(0.1)
