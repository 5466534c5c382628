"""The chat path end to end: real gateway, router, SecantusDB and the SmolLM2 model through llama.cpp."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request

import grpc
import pytest

from moteur.client import MoteurClientError
from moteur.devstack.models import CHAT_MODEL, SECOND_MODEL
from moteur.devstack.stack import LocalStack
from moteur.runtime.ids import new_id
from moteur.v1 import common_pb2


def _metric(stack: LocalStack, service: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample on a service's /metrics (0 when absent)."""
    url = f"http://127.0.0.1:{stack.ports[f'{service}-metrics']}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


async def test_chat_is_answered_by_the_real_model_and_persisted(alice) -> None:
    reply = await alice.client.chat("What is the capital of France? Answer in one word.")

    assert reply.model == CHAT_MODEL
    assert reply.message.content.strip()
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens
    stored = await alice.client.get_session(reply.session_id)
    assert [(m.role, m.content) for m in stored.messages] == [
        (common_pb2.ROLE_USER, "What is the capital of France? Answer in one word."),
        (common_pb2.ROLE_ASSISTANT, reply.message.content),
    ]
    assert stored.messages[1].id == reply.message.id
    assert stored.messages[0].id == reply.user_message_id
    assert stored.session.message_count == 2


async def test_second_turn_sends_the_first_turn_as_history(alice) -> None:
    # No recall: memories of alice's earlier tests would lengthen one prompt and not the other.
    first = await alice.client.chat("My favourite colour is teal. Say OK.", use_memory=False)
    second = await alice.client.chat("What is my favourite colour?", session_id=first.session_id, use_memory=False)

    # The model's own tokenizer counted the prompt: the second prompt holds the first question and answer.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    stored = await alice.client.get_session(first.session_id)
    assert [m.content for m in stored.messages][:3] == [
        "My favourite colour is teal. Say OK.", first.message.content, "What is my favourite colour?",
    ]


async def test_history_is_windowed_to_the_model_context(alice) -> None:
    # The second local model has a 2,048-token context; three ~900-token messages cannot all fit. (It reads
    # a prompt about three times faster than the default model: each turn stays well within its deadline.)
    filler = "The quick brown fox jumps over the lazy dog. " * 80  # 3,600 characters
    hinted = {"model_hint": SECOND_MODEL, "max_output_tokens": 16}
    reply = await alice.client.chat(filler + "Say A.", **hinted)
    for letter in "BC":
        reply = await alice.client.chat(filler + f"Say {letter}.", session_id=reply.session_id, **hinted)

    assert int(reply.route.entries["dropped_messages"]) >= 1
    assert reply.usage.input_tokens < 2048


async def test_streaming_delivers_deltas_then_a_final_message_with_usage(alice) -> None:
    events = [event async for event in alice.client.chat_stream("Count from one to five.")]
    kinds = [event.WhichOneof("event") for event in events]

    assert kinds[0] == "started"
    assert kinds[-1] == "final"
    assert set(kinds[1:-1]) == {"delta"} and len(kinds) >= 4
    final = events[-1].final
    assert "".join(e.delta.text for e in events[1:-1]) == final.message.content
    assert final.usage.output_tokens > 0
    assert final.session_id == events[0].started.session_id
    stored = await alice.client.get_session(final.session_id)
    assert stored.messages[-1].content == final.message.content


async def test_a_retried_chat_with_the_same_idempotency_key_returns_the_first_answer(stack, alice) -> None:
    first = await alice.client.chat("Name a fruit.", idempotency_key="retry-fruit-1")
    calls_before = _metric(stack, "router", "moteur_model_calls_total", model=CHAT_MODEL, outcome="ok")

    again = await alice.client.chat("Name a fruit.", idempotency_key="retry-fruit-1")

    assert again.idempotent_replay and not first.idempotent_replay
    assert again.message.id == first.message.id and again.message.content == first.message.content
    assert _metric(stack, "router", "moteur_model_calls_total", model=CHAT_MODEL, outcome="ok") == calls_before
    assert (await alice.client.get_session(first.session_id)).session.message_count == 2


async def test_an_idempotency_key_reused_for_another_request_is_refused(alice) -> None:
    await alice.client.chat("Name a colour.", idempotency_key="reuse-1", model_hint="instant")
    with pytest.raises(MoteurClientError) as error:
        await alice.client.chat("Name an animal.", idempotency_key="reuse-1", model_hint="instant")
    assert error.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "reuse-1" in error.value.message


async def test_sessions_are_listed_newest_first_in_pages_and_deleted(make_caller) -> None:
    carol = await make_caller("acme", "carol")
    ids = [(await carol.client.chat(f"Hello {i}", model_hint="instant")).session_id for i in range(3)]

    first = await carol.client.list_sessions(page_size=2)
    second = await carol.client.list_sessions(page_size=2, page_token=first.next_page_token)
    assert [s.id for s in first.sessions] + [s.id for s in second.sessions] == ids[::-1]
    assert second.next_page_token == ""

    deleted = await carol.client.delete_session(ids[0])
    assert deleted.deleted_messages == 2
    with pytest.raises(MoteurClientError) as error:
        await carol.client.get_session(ids[0])
    assert error.value.code is grpc.StatusCode.NOT_FOUND


async def test_session_messages_are_paged_oldest_first(alice) -> None:
    reply = await alice.client.chat("one", model_hint="instant")
    for text in ("two", "three"):
        await alice.client.chat(text, session_id=reply.session_id, model_hint="instant")

    page = await alice.client.get_session(reply.session_id, page_size=4)
    rest = await alice.client.get_session(reply.session_id, page_size=4, page_token=page.next_page_token)
    contents = [m.content for m in page.messages] + [m.content for m in rest.messages]
    assert contents[0::2] == ["one", "two", "three"]
    assert len(contents) == 6 and rest.next_page_token == ""


async def test_sessions_survive_a_gateway_restart(stack, alice) -> None:
    reply = await alice.client.chat("Remember this turn.", model_hint="instant")
    stack.restart("gateway")
    stored = await alice.client.get_session(reply.session_id)
    assert [m.content for m in stored.messages] == ["Remember this turn.", reply.message.content]


async def test_sessions_survive_a_secantusdb_restart(stack, alice) -> None:
    reply = await alice.client.chat("Persist me across a database restart.", model_hint="instant")
    stack.restart("mongo")
    stored = await alice.client.get_session(reply.session_id)
    assert [m.content for m in stored.messages] == ["Persist me across a database restart.", reply.message.content]
    again = await alice.client.chat("And keep going.", session_id=reply.session_id, model_hint="instant")
    assert again.session_id == reply.session_id


async def test_trace_and_request_id_follow_a_chat_from_gateway_to_router(stack, alice) -> None:
    await alice.client.chat("Trace me.", model_hint="instant")

    def rpc_lines(service: str, method: str) -> list[dict[str, str]]:
        lines = (stack.data_dir / "logs" / f"{service}.log").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        return [r for r in records if r.get("event") == "rpc" and r.get("method") == method and r["code"] == "OK"]

    chats = rpc_lines("gateway", "Chat")
    completes = {(r["trace_id"], r["request_id"]) for r in rpc_lines("router", "Complete")}
    assert any((c["trace_id"], c["request_id"]) in completes for c in chats)


async def test_a_gateway_stopped_with_sigterm_finishes_the_turn_in_flight(stack, alice) -> None:
    events = alice.client.chat_stream("Tell me about lighthouses in three sentences.", model_hint="paced")
    first = await anext(events)
    assert first.WhichOneof("event") == "started"
    stopping = asyncio.get_running_loop().run_in_executor(None, stack.processes["gateway"].stop)
    try:
        rest = [event async for event in events]
    finally:
        await stopping
        stack.processes["gateway"].start()
    assert rest[-1].WhichOneof("event") == "final"
    stored = await alice.client.get_session(first.started.session_id)
    assert stored.messages[-1].content == rest[-1].final.message.content


async def test_the_same_idempotency_key_in_flight_twice_is_aborted_not_run_twice(alice) -> None:
    request = {"idempotency_key": "in-flight-1", "model_hint": "paced"}
    first = asyncio.create_task(alice.client.chat("Describe a lighthouse in three sentences.", **request))
    await asyncio.sleep(0.1)  # the first turn has claimed the key and is waiting for the model
    with pytest.raises(MoteurClientError) as error:
        await alice.client.chat("Describe a lighthouse in three sentences.", **request)
    assert error.value.code is grpc.StatusCode.ABORTED and "still in progress" in error.value.message
    answer = await first
    replay = await alice.client.chat("Describe a lighthouse in three sentences.", **request)
    assert replay.idempotent_replay and replay.message.id == answer.message.id


async def test_gateway_metrics_count_turns_and_tokens(stack, alice) -> None:
    before = _metric(stack, "gateway", "moteur_chat_turns_total", model="instant", outcome="ok")
    reply = await alice.client.chat("count me", model_hint="instant")
    assert _metric(stack, "gateway", "moteur_chat_turns_total", model="instant", outcome="ok") == before + 1
    tokens = _metric(stack, "gateway", "moteur_chat_tokens_total", model="instant", direction="output")
    assert tokens >= reply.usage.output_tokens > 0


async def test_a_json_schema_temperature_and_stop_reach_the_model_over_grpc(make_caller) -> None:
    caller = await make_caller(f"gen-{new_id().lower()}", "jo")
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    reply = await caller.client.chat("Name a river.", model_hint="instant", json_schema=schema, temperature=0.2,
                                     stop=["\n\n"])
    assert json.loads(reply.message.content) == {"answer": "Name a river."}
    refusals = [({"temperature": 3.0}, "temperature"), ({"stop": ["end"] * 5}, "stop"), ({"stop": [""]}, "stop[0]"),
                ({"json_schema": '{"type": 12}'}, "json_schema"), ({"json_schema": "[1, 2]"}, "json_schema")]
    for options, field in refusals:
        with pytest.raises(MoteurClientError) as refused:
            await caller.client.chat("Name a river.", model_hint="instant", **options)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT, options
        assert field in str(refused.value), (options, str(refused.value))
