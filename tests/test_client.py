"""moteur.client against a fake gateway (a real grpc server in its own threads): the blocking client wraps the
async one, so both have the same methods, send the same requests, stream as events arrive and fail with
MoteurClientError."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import get_type_hints

import grpc
import pytest

from moteur.client import AsyncMoteurClient, ChatOptions, MoteurClient, MoteurClientError
from moteur.client.requests import chat_request
from moteur.v1 import common_pb2, files_pb2, gateway_pb2, gateway_pb2_grpc


class FakeGateway(gateway_pb2_grpc.GatewayServicer):
    def __init__(self) -> None:
        self.requests: list[gateway_pb2.ChatRequest] = []
        self.go_on = threading.Event()  # ChatStream sends its first event, then waits for this
        self.stream_cancelled = threading.Event()

    def Chat(self, request: gateway_pb2.ChatRequest, context: grpc.ServicerContext) -> gateway_pb2.ChatResponse:
        self.requests.append(request)
        if request.message == "fail":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no such model")
        return gateway_pb2.ChatResponse(session_id="s1", model=request.model_hint or "m")

    def ChatStream(
        self, request: gateway_pb2.ChatRequest, context: grpc.ServicerContext
    ) -> Iterator[gateway_pb2.ChatEvent]:
        self.requests.append(request)
        context.add_callback(lambda: self.stream_cancelled.set() if not context.is_active() else None)
        yield gateway_pb2.ChatEvent(delta={"text": "Hel"})
        if not self.go_on.wait(10):
            return
        yield gateway_pb2.ChatEvent(delta={"text": "lo"})
        yield gateway_pb2.ChatEvent(final=gateway_pb2.ChatResponse(session_id="s1"))

    def GetFile(
        self, request: files_pb2.GetFileRequest, context: grpc.ServicerContext
    ) -> Iterator[files_pb2.FileChunk]:
        info = files_pb2.FileInfo(ref=common_pb2.FileRef(file_id=request.file_id, name="../../evil.txt"))
        yield files_pb2.FileChunk(info=info, data=b"abc")
        yield files_pb2.FileChunk(data=b"def")


@pytest.fixture
def gateway() -> Iterator[tuple[FakeGateway, str]]:
    fake = FakeGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    gateway_pb2_grpc.add_GatewayServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield fake, f"127.0.0.1:{port}"
    fake.go_on.set()
    server.stop(None)


@pytest.fixture
def client(gateway) -> Iterator[MoteurClient]:
    with MoteurClient(gateway[1], "key") as blocking:
        yield blocking


def _public(cls: type) -> set[str]:
    return {name for name, value in vars(cls).items() if callable(value) and not name.startswith("_")}


def test_both_clients_have_the_same_methods_and_arguments() -> None:
    assert _public(MoteurClient) == _public(AsyncMoteurClient)
    assert "save_file" in _public(AsyncMoteurClient)
    for name in _public(AsyncMoteurClient) - {"close"}:
        assert inspect.signature(getattr(MoteurClient, name)) == inspect.signature(getattr(AsyncMoteurClient, name))


def test_chat_options_are_the_request_builders_keywords() -> None:
    keywords = {name for name, p in inspect.signature(chat_request).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert set(get_type_hints(ChatOptions)) == keywords


def test_the_blocking_chat_sends_its_typed_options(gateway, client: MoteurClient) -> None:
    fake, _ = gateway
    reply = client.chat("hi", session_id="s0", model_hint="tiny", priority="high", max_output_tokens=5,
                        use_memory=False, metadata={"k": "v"}, allow_model_substitution=True,
                        client_tools=[{"name": "clock", "input_schema": {"type": "object"}}], timeout=5)
    assert reply.model == "tiny"
    sent = fake.requests[-1]
    assert (sent.session_id, sent.model_hint, sent.priority, sent.max_output_tokens) == (
        "s0", "tiny", common_pb2.PRIORITY_HIGH, 5)
    assert sent.HasField("use_memory") and not sent.use_memory and not sent.HasField("use_tools")
    assert sent.allow_model_substitution and sent.metadata.entries == {"k": "v"}
    assert [t.name for t in sent.client_tools] == ["clock"]


def test_the_blocking_client_raises_what_the_async_one_raises(client: MoteurClient) -> None:
    with pytest.raises(MoteurClientError) as failure:
        client.chat("fail")
    assert failure.value.code is grpc.StatusCode.INVALID_ARGUMENT and failure.value.message == "no such model"
    with pytest.raises(ValueError, match="unknown priority"):
        client.chat("hi", priority="urgent")


async def test_the_async_client_raises_client_errors(gateway) -> None:
    async with AsyncMoteurClient(gateway[1], "key") as async_client:
        with pytest.raises(MoteurClientError) as failure:
            await async_client.chat("fail")
    assert failure.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_the_blocking_stream_yields_each_event_as_it_arrives(gateway, client: MoteurClient) -> None:
    fake, _ = gateway
    events = client.chat_stream("hi", model_hint="tiny")
    assert next(events).delta.text == "Hel"  # before the server sends the rest
    fake.go_on.set()
    rest = list(events)
    assert [e.delta.text for e in rest[:1]] == ["lo"] and rest[-1].final.session_id == "s1"
    assert fake.requests[-1].model_hint == "tiny"


def test_closing_a_blocking_stream_early_cancels_the_call(gateway, client: MoteurClient) -> None:
    fake, _ = gateway
    events = client.chat_stream("hi")
    assert next(events).delta.text == "Hel"
    events.close()
    assert fake.stream_cancelled.wait(5)
    assert client.list_files is not None and client.chat("hi").session_id == "s1"  # the client still works


def test_save_file_writes_under_the_files_own_name_from_both_clients(gateway, client: MoteurClient,
                                                                     tmp_path: Path) -> None:
    saved = client.save_file("f1", tmp_path)
    assert saved == tmp_path / "evil.txt" and saved.read_bytes() == b"abcdef"


async def test_the_async_client_saves_files_too(gateway, tmp_path: Path) -> None:
    async with AsyncMoteurClient(gateway[1], "key") as async_client:
        saved = await async_client.save_file("f1", tmp_path)
    assert saved == tmp_path / "evil.txt" and saved.read_bytes() == b"abcdef"


def test_a_closed_blocking_client_says_so(gateway) -> None:
    blocking = MoteurClient(gateway[1], "key")
    blocking.close()
    blocking.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        blocking.list_models()
