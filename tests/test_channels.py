"""The mesh calls of moteur.runtime.channels against a real in-process grpc.aio server: a peer that comes up
late is retried (a unary call, a stream before its first message), a stream that started is never replayed,
and trailing metadata comes back."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import grpc
import pytest
from structlog.testing import capture_logs

from moteur.runtime.channels import call_service, call_service_with_trailers, open_channel, stream_service
from moteur.runtime.errors import RemoteError, Unavailable
from moteur.runtime.identity import TOKEN_HEADER, Identity

IDENTITY = Identity("acme", "alice", "standard", token="signed-token")


class Peer:
    """A tiny generic service, ``test.Echo``, that counts its calls."""

    def __init__(self) -> None:
        self.calls = {"Unary": 0, "Stream": 0}
        self.fail_after_first = False
        self.seen_metadata: dict[str, str] = {}

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls["Unary"] += 1
        self.seen_metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        context.set_trailing_metadata((("x-revision", "7"),))
        return b"echo:" + request

    async def stream(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        self.calls["Stream"] += 1
        yield b"one:" + request
        if self.fail_after_first:
            # Details that look like a connection failure: only the rule "never after the first message" stops
            # a retry here.
            await context.abort(grpc.StatusCode.UNAVAILABLE, "failed to connect to the backend")
        yield b"two:" + request
        context.set_trailing_metadata((("x-revision", "8"),))

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler("test.Echo", {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
        })


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _serve(peer: Peer, port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((peer.handler(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


async def _serve_later(peer: Peer, port: int, delay: float, started: list[grpc.aio.Server]) -> None:
    await asyncio.sleep(delay)
    started.append(await _serve(peer, port))


@pytest.fixture
async def peer_up() -> AsyncIterator[tuple[Peer, grpc.aio.Channel]]:
    peer, port = Peer(), _free_port()
    server = await _serve(peer, port)
    channel = open_channel(f"127.0.0.1:{port}")
    yield peer, channel
    await channel.close()
    await server.stop(None)


async def test_a_unary_call_returns_its_response_and_trailing_metadata(peer_up) -> None:
    peer, channel = peer_up
    response, trailing = await call_service_with_trailers(
        channel.unary_unary("/test.Echo/Unary"), b"hi", "echo", IDENTITY, timeout=5)
    assert response == b"echo:hi"
    assert ("x-revision", "7") in tuple(trailing)
    assert peer.seen_metadata[TOKEN_HEADER] == "signed-token"


async def test_a_unary_call_to_a_peer_that_comes_up_late_is_retried() -> None:
    peer, port, started = Peer(), _free_port(), []
    channel = open_channel(f"127.0.0.1:{port}")
    late = asyncio.create_task(_serve_later(peer, port, 0.3, started))
    try:
        response, _ = await call_service_with_trailers(
            channel.unary_unary("/test.Echo/Unary"), b"hi", "echo", IDENTITY, timeout=5)
        assert response == b"echo:hi"
        assert peer.calls["Unary"] == 1
    finally:
        await late
        await channel.close()
        for server in started:
            await server.stop(None)


async def test_a_peer_that_stays_down_is_unavailable() -> None:
    channel = open_channel(f"127.0.0.1:{_free_port()}")
    try:
        with pytest.raises(Unavailable, match="echo service is unreachable"):
            await call_service_with_trailers(channel.unary_unary("/test.Echo/Unary"), b"hi", "echo", IDENTITY,
                                             timeout=0.5)
        with pytest.raises(Unavailable, match="echo service is unreachable"):
            async for _ in stream_service(channel.unary_stream("/test.Echo/Stream"), b"hi", "echo", IDENTITY,
                                          timeout=0.5):
                pass
    finally:
        await channel.close()


async def test_a_stream_from_a_peer_that_comes_up_late_is_retried_before_its_first_message() -> None:
    peer, port, started = Peer(), _free_port(), []
    channel = open_channel(f"127.0.0.1:{port}")
    late = asyncio.create_task(_serve_later(peer, port, 0.3, started))
    trailers: list[grpc.aio.Metadata] = []
    try:
        got = [r async for r in stream_service(channel.unary_stream("/test.Echo/Stream"), b"hi", "echo", IDENTITY,
                                               timeout=5, on_trailers=trailers.append)]
        assert got == [b"one:hi", b"two:hi"]
        assert peer.calls["Stream"] == 1
        assert len(trailers) == 1 and ("x-revision", "8") in tuple(trailers[0])
    finally:
        await late
        await channel.close()
        for server in started:
            await server.stop(None)


async def test_a_stream_that_fails_after_its_first_message_is_not_replayed(peer_up) -> None:
    peer, channel = peer_up
    peer.fail_after_first = True
    got: list[bytes] = []
    trailers: list[grpc.aio.Metadata] = []
    with pytest.raises(Unavailable):
        async for response in stream_service(channel.unary_stream("/test.Echo/Stream"), b"hi", "echo", IDENTITY,
                                             timeout=5, on_trailers=trailers.append):
            got.append(response)
    assert got == [b"one:hi"]
    assert peer.calls["Stream"] == 1
    assert trailers == []


async def test_closing_a_stream_early_cancels_the_call(peer_up) -> None:
    _, channel = peer_up
    stream = stream_service(channel.unary_stream("/test.Echo/Stream"), b"hi", "echo", IDENTITY, timeout=5)
    assert await anext(stream) == b"one:hi"
    await stream.aclose()  # no error, and the call is cancelled in the finally


class FlakyMemory:
    """``moteur.v1.Memory`` answering UNAVAILABLE with a transport's words ("Socket closed") to its first call
    of each method, as when a connection ends under a call; then it answers."""

    def __init__(self) -> None:
        self.calls = {"Delete": 0, "Upsert": 0}

    def _method(self, name: str):
        async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.calls[name] += 1
            if self.calls[name] == 1:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "Socket closed")
            return b"done"
        return grpc.unary_unary_rpc_method_handler(answer)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler("moteur.v1.Memory", {n: self._method(n) for n in self.calls})


async def test_a_deletion_cut_by_the_transport_is_repeated_and_a_write_is_not_but_is_logged() -> None:
    memory, port = FlakyMemory(), _free_port()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((memory.handler(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    try:
        # Deleting again deletes nothing more: the channel's retry policy repeats it.
        assert await call_service(channel.unary_unary("/moteur.v1.Memory/Delete"), b"", "memory", IDENTITY,
                                  timeout=5) == b"done"
        assert memory.calls["Delete"] == 2
        # A write may have landed: it is passed on, once, and the transport's words are in the log.
        with capture_logs() as logs, pytest.raises(RemoteError, match="Socket closed"):
            await call_service(channel.unary_unary("/moteur.v1.Memory/Upsert"), b"", "memory", IDENTITY, timeout=5)
        assert memory.calls["Upsert"] == 1
        assert {"event": "mesh.call_failed", "peer": "memory", "code": "UNAVAILABLE", "details": "Socket closed",
                "log_level": "warning"} in logs
    finally:
        await channel.close()
        await server.stop(None)
