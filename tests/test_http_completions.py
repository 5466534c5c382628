"""OpenAI chat requests into the gateway's turns (moteur.gateway.http.completions): what is read, and the
INVALID_ARGUMENT, naming the field, for what cannot be."""

from __future__ import annotations

import json
from typing import Any

import pytest

from moteur.gateway.http.completions import ChatCompletionRequest, continued_session, tool_results, turn_input
from moteur.runtime.errors import InvalidArgument
from moteur.runtime.identity import Identity
from moteur.runtime.ids import new_id
from moteur.v1 import common_pb2

ADA = Identity("acme", "ada", "standard")
SERVICE = Identity("acme", "", "service")


def _request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.parse(json.dumps({"model": "instant", **fields}).encode())


def test_a_stateless_request_brings_its_history_and_asks_its_last_question() -> None:
    turn = turn_input(ADA, _request(messages=[
        {"role": "developer", "content": "Réponds en français."},
        {"role": "user", "content": [{"type": "text", "text": "Bonjour"}, {"type": "text", "text": " !"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "clock", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "10:00"},
        {"role": "user", "content": "Quelle heure est-il ?"},
    ]), {"x-moteur-priority": "high", "idempotency-key": "k-1"})
    assert turn.stateless and turn.message == "Quelle heure est-il ?" and turn.user == "ada"
    assert turn.history is not None
    assert [(m.role, m.content) for m in turn.history] == [
        ("system", "Réponds en français."), ("user", "Bonjour !"), ("assistant", ""), ("tool", "10:00")]
    assert turn.history[2].tool_calls == [{"id": "c1", "name": "clock", "arguments_json": "{}"}]
    assert turn.history[3].tool_result == {"call_id": "c1"}
    assert turn.priority == common_pb2.PRIORITY_HIGH and turn.idempotency_key == "k-1"
    assert turn.model_hint == "instant"


def test_a_request_ending_with_tool_results_asks_nothing_new() -> None:
    turn = turn_input(ADA, _request(messages=[
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "clock", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "10:00"}]), {})
    assert turn.message == "" and turn.history is not None and len(turn.history) == 3


def test_with_a_session_only_the_question_is_read() -> None:
    session_id = new_id()
    turn = turn_input(ADA, _request(messages=[{"role": "user", "content": "Earlier"},
                                              {"role": "user", "content": "Now"}]), {"x-moteur-session": session_id})
    assert not turn.stateless and turn.session_id == session_id and turn.message == "Now"
    new = turn_input(ADA, _request(messages=[{"role": "user", "content": "Hi"}]), {"x-moteur-session": "new"})
    assert not new.stateless and new.session_id == ""


def test_response_formats_tools_and_the_routed_model() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    turn = turn_input(ADA, _request(
        model="auto", messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        tools=[{"type": "function", "function": {"name": "clock", "parameters": {"type": "object"}}}],
        tool_choice={"type": "function", "function": {"name": "clock"}}), {})
    assert turn.model_hint == "" and turn.max_output_tokens == 64 and json.loads(turn.json_schema) == schema
    assert turn.json_output and [t.name for t in turn.client_tools] == ["clock"] and turn.tool_choice == "clock"
    assert turn.temperature is None and turn.stop == ()
    sampled = turn_input(ADA, _request(messages=[{"role": "user", "content": "Hi"}], temperature=0.2, stop="###",
                                       top_p=0.9), {})
    assert sampled.temperature == 0.2 and sampled.stop == ("###",) and sampled.top_p == 0.9
    assert turn_input(ADA, _request(messages=[{"role": "user", "content": "Hi"}], n=1), {}).top_p is None
    plain = turn_input(ADA, _request(messages=[{"role": "user", "content": "Hi"}],
                                     response_format={"type": "json_object"}), {})
    assert plain.json_output and plain.json_schema == ""


@pytest.mark.parametrize(("fields", "headers", "param"), [
    ({"messages": []}, {}, "messages"),
    ({"messages": [{"role": "robot", "content": "Hi"}]}, {}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, {}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}, {},
     "messages[1].role"),
    ({"messages": [{"role": "tool", "content": "10:00"}]}, {}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "user", "content": "   "}]}, {}, "message"),
    ({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10**6}, {}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "Hi"}], "temperature": 2.5}, {}, "temperature"),
    ({"messages": [{"role": "user", "content": "Hi"}], "stop": ["a", "b", "c", "d", "e"]}, {}, "stop"),
    ({"messages": [{"role": "user", "content": "Hi"}], "stop": ["a", ""]}, {}, "stop[1]"),
    ({"messages": [{"role": "user", "content": "Hi"}], "top_p": 0}, {}, "top_p"),
    ({"messages": [{"role": "user", "content": "Hi"}], "n": 2}, {}, "n"),
    ({"messages": [{"role": "user", "content": "Hi"}], "logprobs": True}, {}, "logprobs"),
    ({"messages": [{"role": "user", "content": "Hi"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 12}}}}, {},
     "response_format.json_schema.schema"),
    ({"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "json_schema"}}, {},
     "response_format.json_schema.schema"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, {"x-moteur-priority": "urgent"}, "x-moteur-priority"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, {"x-moteur-session": "not-an-id"}, "session_id"),
    ({"messages": [{"role": "user", "content": "Hi"}], "model": "no such model!"}, {}, "model_hint"),
])
def test_what_cannot_be_read_is_refused_naming_the_field(fields: dict[str, Any], headers: dict[str, str],
                                                         param: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        turn_input(ADA, _request(**fields), headers)
    assert refused.value.violations[0].field == param


def test_a_service_key_names_the_user() -> None:
    with pytest.raises(InvalidArgument) as refused:
        turn_input(SERVICE, _request(messages=[{"role": "user", "content": "Hi"}]), {})
    assert refused.value.violations[0].field == "user"
    assert turn_input(SERVICE, _request(messages=[{"role": "user", "content": "Hi"}], user="zoe"), {}).user == "zoe"


def test_a_body_that_is_not_json_is_refused() -> None:
    with pytest.raises(InvalidArgument) as refused:
        ChatCompletionRequest.parse(b"{not json")
    assert refused.value.violations[0].field == "body"


def test_tool_messages_continue_a_sessions_waiting_turn() -> None:
    session_id = new_id()
    asked = _request(messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "w", "arguments": "{}"}},
                                             {"id": "c2", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"sky": "clear"}'},
        {"role": "tool", "tool_call_id": "c2", "content": "pluie fine"}])
    assert continued_session(asked, {"x-moteur-session": session_id}) == session_id
    assert continued_session(asked, {}) == ""  # stateless: the history goes to the model instead
    results = tool_results(asked)
    assert [(r.call_id, r.content_json) for r in results] == [("c1", '{"sky": "clear"}'), ("c2", '"pluie fine"')]


def test_embeddings_read_texts_and_encode_as_asked() -> None:
    import base64
    import struct

    from moteur.gateway.http.embeddings import EmbeddingsRequest, embeddings_response
    from moteur.v1 import memory_pb2

    asked = EmbeddingsRequest.parse(json.dumps({"input": ["un", "two"], "encoding_format": "base64"}).encode())
    assert asked.texts() == ["un", "two"]
    embedded = memory_pb2.EmbedResponse(model="e5", dimensions=2, embeddings=[
        memory_pb2.Embedding(values=[0.5, -1.0]), memory_pb2.Embedding(values=[0.25, 2.0])])
    answer = embeddings_response(asked, embedded, tokens=2)
    assert struct.unpack("<2f", base64.b64decode(answer["data"][1]["embedding"])) == (0.25, 2.0)
    assert answer["model"] == "e5" and answer["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    with pytest.raises(InvalidArgument) as wrong_size:
        embeddings_response(EmbeddingsRequest.parse(b'{"input": "x", "dimensions": 3}'), embedded, tokens=1)
    assert wrong_size.value.violations[0].field == "dimensions"
    with pytest.raises(InvalidArgument) as blank:
        EmbeddingsRequest.parse(b'{"input": ["ok", "  "]}').texts()
    assert blank.value.violations[0].field == "input[1]"
