"""Every bad input gets the right gRPC status and a message a person can act on; nothing is lost."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2

from moteur.client import AsyncMoteurClient, MoteurClientError
from moteur.devstack.models import CHAT_MODEL, SECOND_MODEL
from moteur.runtime.ids import new_id


async def _error(call) -> MoteurClientError:
    with pytest.raises(MoteurClientError) as caught:
        await call
    return caught.value


def _bad_request_fields(error: MoteurClientError) -> list[str]:
    return [v.field for d in error.details if isinstance(d, error_details_pb2.BadRequest) for v in d.field_violations]


async def test_an_empty_message_is_invalid(alice) -> None:
    error = await _error(alice.client.chat("   "))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request_fields(error) == ["message"]
    assert "empty" in error.message


async def test_an_oversized_message_is_invalid_and_states_the_limit(alice) -> None:
    error = await _error(alice.client.chat("x" * 32_769))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "32,768" in error.message


async def test_a_malformed_session_id_is_invalid(alice) -> None:
    error = await _error(alice.client.chat("hello", session_id="not-a-session"))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request_fields(error) == ["session_id"]


async def test_an_unknown_session_is_not_found(alice) -> None:
    missing = new_id()
    error = await _error(alice.client.chat("hello", session_id=missing))
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert missing in error.message


async def test_an_unknown_enum_value_is_invalid(alice) -> None:
    error = await _error(alice.client.chat("hello", request_type=99))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request_fields(error) == ["request_type"]


async def test_out_of_range_max_output_tokens_is_invalid(alice) -> None:
    error = await _error(alice.client.chat("hello", max_output_tokens=100_000))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "8,192" in error.message


async def test_an_unknown_model_is_invalid_and_names_the_valid_ones(alice) -> None:
    error = await _error(alice.client.chat("hello", model_hint="gpt-17"))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    valid = f"instant, paced, paced-single, priced, {SECOND_MODEL}, {CHAT_MODEL}, {CHAT_MODEL}-tools, scripted"
    assert f"unknown model 'gpt-17'; valid: {valid}" in error.message


@pytest.mark.parametrize("key", ["", "mot_not-a-real-key", "sk-something-else"])
async def test_a_missing_or_wrong_api_key_is_unauthenticated(stack, key: str) -> None:
    async with AsyncMoteurClient(stack.address("gateway"), key) as client:
        error = await _error(client.chat("hello"))
    assert error.code is grpc.StatusCode.UNAUTHENTICATED
    assert "API key" in error.message


async def test_another_tenants_session_is_not_found(alice, mallory) -> None:
    reply = await alice.client.chat("A secret of acme.", model_hint="instant")
    for call in (
        mallory.client.get_session(reply.session_id),
        mallory.client.chat("Let me in.", session_id=reply.session_id, model_hint="instant"),
        mallory.client.delete_session(reply.session_id),
    ):
        error = await _error(call)
        assert error.code is grpc.StatusCode.NOT_FOUND
    assert reply.session_id not in [s.id for s in (await mallory.client.list_sessions()).sessions]
    assert (await alice.client.get_session(reply.session_id)).session.message_count == 2


async def test_a_user_key_cannot_act_for_another_user(alice) -> None:
    error = await _error(alice.client.chat("hello", user_id="bob"))
    assert error.code is grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(("parts", "named"), [
    (("model", "model2"), f"{CHAT_MODEL}:unreachable"), (("router",), "router service"),
])
async def test_a_part_down_is_unavailable_and_the_question_is_kept(
    stack, alice, parts: tuple[str, ...], named: str
) -> None:
    reply = await alice.client.chat("First turn.", model_hint="instant")
    with stack.stopped(*parts):
        error = await _error(alice.client.chat("Are you there?", session_id=reply.session_id))
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert named in error.message and "unreachable" in error.message
    stored = await alice.client.get_session(reply.session_id)
    assert [m.content for m in stored.messages][-1] == "Are you there?"


async def test_a_deadline_too_short_for_the_model_is_deadline_exceeded(alice) -> None:
    reply = await alice.client.chat("Start.", model_hint="instant")
    error = await _error(alice.client.chat(
        "Write a long story about a lighthouse keeper.", session_id=reply.session_id,
        model_hint="paced", timeout=0.25,
    ))
    assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
    # The gateway saw its deadline pass too, and kept the question (written as the turn ends, which on a
    # busy machine may be a moment after the caller's own deadline fired).
    for _ in range(20):
        stored = await alice.client.get_session(reply.session_id)
        if [m.content for m in stored.messages][-1] == "Write a long story about a lighthouse keeper.":
            break
        await asyncio.sleep(0.1)
    assert [m.content for m in stored.messages][-1] == "Write a long story about a lighthouse keeper."


async def test_the_session_store_down_is_unavailable_with_a_clear_message(stack, alice) -> None:
    with stack.stopped("mongo"):
        error = await _error(alice.client.list_sessions())
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert "MongoDB" in error.message
    assert (await alice.client.list_sessions()).sessions is not None  # and it recovers on its own


async def test_a_caller_that_goes_away_mid_stream_still_has_its_question_persisted(alice) -> None:
    reply = await alice.client.chat("Opening turn.", model_hint="instant")
    events = alice.client.chat_stream(
        "Tell me a long story about the sea.", session_id=reply.session_id, max_output_tokens=200
    )
    assert (await anext(events)).WhichOneof("event") == "started"
    await anext(events)  # a first delta: the model is generating
    await events.aclose()  # the caller hangs up

    for _ in range(50):  # the gateway notices the cancellation and persists the question
        stored = await alice.client.get_session(reply.session_id)
        if stored.session.message_count == 3:
            break
        await asyncio.sleep(0.1)
    assert [m.content for m in stored.messages][-1] == "Tell me a long story about the sea."


async def test_a_restarted_router_is_used_again_at_once(stack, alice) -> None:
    with stack.stopped("router"):
        error = await _error(alice.client.chat("while it is down", model_hint="instant"))
        assert error.code is grpc.StatusCode.UNAVAILABLE
    # The gateway's channel is backing off from the failed connection; the next turn must not fail for it.
    reply = await alice.client.chat("right after it is back", model_hint="instant")
    assert reply.message.content


@pytest.mark.parametrize("key", ["team\x00", "$ne\x00", "a\x1bb"])
async def test_a_stray_character_in_a_metadata_key_is_invalid_before_any_model_call(make_caller, key: str) -> None:
    caller = await make_caller("nul-probe", "ana")
    calls = {
        "Chat": caller.client.chat("hello", model_hint="instant", metadata={key: "x"}),
        "ChatStream": _drain(caller.client.chat_stream("hello", model_hint="instant", metadata={key: "x"})),
        "CreateSession": caller.client.create_session(title="t", metadata={key: "x"}),
    }
    for name, call in calls.items():
        error = await _error(call)
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT, name
        assert _bad_request_fields(error) == ["metadata.entries"], name
        assert "metadata.entries" in error.message and "character" in error.message, name
    assert not (await caller.client.list_sessions()).sessions  # nothing was started, so nothing was lost
    assert (await caller.client.get_usage()).total.total_tokens == 0  # and no model was called


async def _drain(events) -> None:
    async for _ in events:
        pass


async def test_a_user_key_reads_only_its_own_limits_and_scopes_are_checked(make_caller, key_store) -> None:
    ana = await make_caller("limits-probe", "ana")
    admin = await make_caller("limits-probe", "", admin=True)
    _, carols_key = await key_store.create("limits-probe", "carol")
    assert (await ana.client.get_limits("user:ana")).scope == "user:ana"
    assert (await ana.client.get_limits("tenant")).scope == "tenant"
    for scope in ("user:carol", f"key:{carols_key.key_id}"):
        error = await _error(ana.client.get_limits(scope))
        assert error.code is grpc.StatusCode.PERMISSION_DENIED, scope
        assert "its own limits" in error.message
    assert (await admin.client.get_limits("user:carol")).scope == "user:carol"  # an admin reads any
    for scope in ("user:\x00$ne", "key:$ne", "key:", "user:", "bogus", "key:../../x", "user:" + "x" * 200):
        error = await _error(admin.client.get_limits(scope))
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT, scope
        assert _bad_request_fields(error) == ["scope"], scope
