"""Request decoding in the runtime: bad bytes and stray characters are INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import pytest

from moteur.runtime.errors import InvalidArgument
from moteur.runtime.requests import decoder
from moteur.v1 import common_pb2, gateway_pb2, router_pb2

decode_chat = decoder(gateway_pb2.ChatRequest.FromString)


def meta(entries: dict[str, str]) -> common_pb2.Metadata:
    return common_pb2.Metadata(entries=entries)


def test_a_valid_request_with_tabs_and_newlines_in_its_text_decodes() -> None:
    request = gateway_pb2.ChatRequest(message="Bonjour\n\tça va ?\x1b[0m", metadata=meta({"team": "ops"}))
    assert decode_chat(request.SerializeToString()) == request


@pytest.mark.parametrize(("request_", "field", "what"), [
    (gateway_pb2.ChatRequest(message="hi", metadata=meta({"a\x00b": "x"})), "metadata.entries", "a NUL character"),
    (gateway_pb2.ChatRequest(message="hi", metadata=meta({"team\n": "x"})), "metadata.entries", "U+000A"),
    (gateway_pb2.ChatRequest(message="hi", metadata=meta({"team": "o\x00ps"})), "metadata.entries['team']", "a NUL"),
    (gateway_pb2.ChatRequest(message="hi\x00"), "message", "a NUL character at position 2"),
    (gateway_pb2.ChatRequest(message="hi", user_id="bob\x07"), "user_id", "U+0007"),
    (gateway_pb2.ChatRequest(message="hi", session_id="01\x1b"), "session_id", "U+001B"),
    (gateway_pb2.ChatRequest(message="hi", model_hint="fake\t"), "model_hint", "U+0009"),
    (router_pb2.CompleteRequest(messages=[router_pb2.PromptMessage(role=common_pb2.ROLE_USER, content="ok"),
                                          router_pb2.PromptMessage(content="\x00")]),
     "messages[1].content", "a NUL"),
])
def test_stray_characters_are_refused_naming_the_field(request_: object, field: str, what: str) -> None:
    decode = decoder(type(request_).FromString)
    with pytest.raises(InvalidArgument) as refused:
        decode(request_.SerializeToString())
    assert refused.value.violations[0].field == field
    assert what in refused.value.message


@pytest.mark.parametrize(("raw", "reason"), [
    (b"\x0a\x02\xc3\x28", "invalid UTF-8"),  # field 1 (message), two bytes that are not UTF-8
    (b"\x0a\xff\xff\xff\xff\x0f", "malformed protobuf"),  # a length past the end
    (b"\xff\xff\xff", "malformed protobuf"),
])
def test_bytes_that_are_no_message_are_refused_naming_the_type(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        decode_chat(raw)
    assert "moteur.v1.ChatRequest" in refused.value.message
    assert reason in refused.value.message
