"""One trace per chat across the mesh: the gateway's server span and, in the same trace, the server spans
of router, memory, tools and files, each a child of a span of the service that called it. The services
export to an in-process OTLP receiver, as they would to a collector (MOTEUR_OTLP_ENDPOINT)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bench.keys import bench_key
from moteur.client import AsyncMoteurClient
from moteur.devstack.processes import free_port
from moteur.devstack.stack import LocalStack, StackOptions
from moteur.v1 import gateway_pb2
from tests.observability.otlp import ReceivedSpan, TraceReceiver, start_receiver

SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_SERVER
MESH = {"router", "memory", "tools", "files"}


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[tuple[TraceReceiver, int]]:
    port = free_port()
    server, receiver = await start_receiver(port)
    yield receiver, port
    await server.stop(0)


@pytest.fixture(scope="module")
def traced_stack(tmp_path_factory: pytest.TempPathFactory, receiver: tuple[TraceReceiver, int]) -> Iterator[LocalStack]:
    data_dir: Path = tmp_path_factory.mktemp("traced-stack")
    env = {"MOTEUR_OTLP_ENDPOINT": f"127.0.0.1:{receiver[1]}", "MOTEUR_LOG_LEVEL": "WARNING",
           "OTEL_BSP_SCHEDULE_DELAY": "200"}  # export within a fraction of a second, not the default 5 s
    with LocalStack(StackOptions(data_dir=data_dir, model_server=False, fact_extractor="rules",
                                 service_env=env)) as stack:
        yield stack


def _service(span: ReceivedSpan) -> str:
    return span.service.removeprefix("moteur-")


async def _wait_for_trace(receiver: TraceReceiver, trace_id: str, seconds: float = 20) -> list[ReceivedSpan]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        spans = receiver.trace(trace_id)
        if MESH <= {_service(s) for s in spans if s.kind == SERVER_KIND}:
            return spans
        await asyncio.sleep(0.2)
    return receiver.trace(trace_id)


QUESTION = 'Which lighthouse? Compute too.\n/tool calculator {"expression": "1+1"}'


async def _chat(client: AsyncMoteurClient, method: str) -> gateway_pb2.ChatResponse:
    options = {"model_hint": "instant", "output_format": "markdown", "timeout": 30}
    if method == "Chat":
        return await client.chat(QUESTION, **options)
    events = [event async for event in client.chat_stream(QUESTION, **options)]
    return events[-1].final


async def _exported_span(receiver: TraceReceiver, since: int, name: str, seconds: float = 20) -> ReceivedSpan:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = [s for s in receiver.spans[since:] if s.service == "moteur-gateway" and s.name == name]
        if found:
            return found[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"the gateway exported no {name} span")


@pytest.mark.parametrize(("method", "router_method"), [("Chat", "Complete"), ("ChatStream", "StreamComplete")])
async def test_one_chat_is_one_trace_across_the_mesh(
    traced_stack: LocalStack, receiver: tuple[TraceReceiver, int], method: str, router_method: str
) -> None:
    spans_received, _ = receiver
    key = await bench_key(traced_stack, "traced", f"tina-{method}", memory=True)
    async with AsyncMoteurClient(traced_stack.address("gateway"), key) as client:
        await client.upsert_document("The lighthouse of Ouessant is called Créac'h.", title="lighthouses")
        since = len(spans_received.spans)
        reply = await _chat(client, method)
    assert reply.message.file.file_id, reply  # the answer was rendered into a file

    chat = await _exported_span(spans_received, since, f"moteur.v1.Gateway/{method}")
    assert chat.parent_span_id == "", "the gateway's chat span starts the trace"
    spans = await _wait_for_trace(spans_received, chat.trace_id)
    by_id = {span.span_id: span for span in spans}
    servers = [s for s in spans if s.kind == SERVER_KIND and _service(s) != "gateway"]
    names = {(_service(s), s.name) for s in servers}
    assert {("router", f"moteur.v1.Router/{router_method}"), ("memory", "moteur.v1.Memory/Search"),
            ("tools", "moteur.v1.Tools/Invoke"), ("files", "moteur.v1.Files/Render")} <= names, sorted(names)
    for span in servers:
        parent = by_id.get(span.parent_span_id)
        assert parent is not None, f"{span.service} {span.name}: its parent span is not in the trace"
        assert _service(parent) != _service(span), f"{span.name}: parent {parent.name} is in the same service"
