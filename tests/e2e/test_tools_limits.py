"""The tools service's limits through gRPC: one tenant at its concurrency limit is refused while another
tenant's calls run; a call whose caller's deadline passes is abandoned, its MCP tool's work cancelled; the
built-ins answer what JSON cannot carry and units they cannot read as error results that say why."""

from __future__ import annotations

import asyncio
import copy
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from moteur.devstack.stack import LocalStack
from moteur.runtime.identity import Identity
from moteur.v1 import common_pb2, tools_pb2, tools_pb2_grpc

ACME = Identity("acme", "alice", "standard")  # may use every built-in; has the notes MCP server (notes__wait)
GLOBEX = Identity("globex", "mallory", "standard")


@pytest.fixture
async def tools(stack: LocalStack):
    async with grpc.aio.insecure_channel(stack.address("tools")) as channel:
        yield tools_pb2_grpc.ToolsStub(channel)


async def _call(tools: tools_pb2_grpc.ToolsStub, stack: LocalStack, identity: Identity, name: str,
                arguments: object, timeout: float = 15) -> common_pb2.ToolResult:
    call = common_pb2.ToolCall(id="call-1", name=name, arguments_json=json.dumps(arguments))
    return await tools.Invoke(tools_pb2.InvokeRequest(call=call), metadata=stack.mesh_metadata(identity),
                              timeout=timeout)


def _sample(stack: LocalStack, series: str) -> float:
    """The value of one series of the tools service's metrics, e.g. ``moteur_tool_calls_in_flight``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['tools-metrics']}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _until(check: Callable[[], Awaitable[bool]], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"still not so after {seconds} s"
        await asyncio.sleep(0.1)


async def _metric_above(stack: LocalStack, series: str, value: float) -> bool:
    return await asyncio.to_thread(_sample, stack, series) > value


RELOADED = 'moteur_tools_config_reloads_total{outcome="ok"}'


@pytest.fixture
async def acme_limited_to_two(stack: LocalStack) -> AsyncIterator[None]:
    """acme's policy says 2 tool calls in flight at most (the service's own default is higher); put back after."""
    original = stack.options.tools_config
    assert original is not None
    limited = copy.deepcopy(original)
    limited["tenants"]["acme"]["max_concurrent_calls"] = 2
    await _apply(stack, limited)
    yield
    await _apply(stack, original)


async def _apply(stack: LocalStack, policy: dict[str, object]) -> None:
    """Writes the policy and waits until the tools service has reloaded it."""
    reloads = await asyncio.to_thread(_sample, stack, RELOADED)
    stack.write_tools_file(policy)
    await _until(lambda: _metric_above(stack, RELOADED, reloads))


async def test_a_tenant_at_its_limit_is_refused_while_another_tenants_calls_run(
        tools, stack: LocalStack, mcp_ready: None, acme_limited_to_two: None) -> None:
    refused = await asyncio.to_thread(_sample, stack, 'moteur_tool_calls_refused_total{reason="tenant_limit"}')
    waits = [asyncio.create_task(_call(tools, stack, ACME, "notes__wait", {"seconds": 1.5})) for _ in range(2)]
    await _until(lambda: _metric_above(stack, "moteur_tool_calls_in_flight", 1), seconds=10)
    busy = await _call(tools, stack, ACME, "calculator", {"expression": "1+1"})
    assert (busy.ok, busy.error_code) == (False, "tenant_busy") and "2 tool calls" in busy.error_message
    started = time.monotonic()
    other = await _call(tools, stack, GLOBEX, "calculator", {"expression": "6*7"})
    assert other.ok and json.loads(other.content_json) == {"result": 42}
    assert time.monotonic() - started < 1.0  # not queued behind acme's calls
    waited = await asyncio.gather(*waits)
    assert all(w.ok for w in waited) and json.loads(waited[0].content_json)["most_at_once"] == 2
    assert (await _call(tools, stack, ACME, "calculator", {"expression": "1+1"})).ok  # its slots came back
    assert await _metric_above(stack, 'moteur_tool_calls_refused_total{reason="tenant_limit"}', refused)


async def test_a_call_whose_deadline_passes_is_abandoned_and_its_mcp_work_cancelled(
        tools, stack: LocalStack, mcp_ready: None) -> None:
    series = 'moteur_tool_calls_abandoned_total{reason="deadline"}'
    abandoned = await asyncio.to_thread(_sample, stack, series)
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await _call(tools, stack, ACME, "notes__wait", {"seconds": 2.0}, timeout=0.5)
    assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await _until(lambda: _metric_above(stack, series, abandoned), seconds=5)
    # Had the MCP server's wait gone on, it would still run (2 s) beside this one.
    alone = await _call(tools, stack, ACME, "notes__wait", {"seconds": 0.1})
    assert alone.ok and json.loads(alone.content_json)["most_at_once"] == 1


@pytest.mark.parametrize(("name", "arguments", "code", "words"), [
    ("calculator", {"expression": "10**100000"}, "result_too_large", "100,000 digits"),
    ("convert_units", {"value": 1e308, "from_unit": "km", "to_unit": "nm"}, "out_of_range", "largest number"),
    ("convert_units", {"value": 1, "from_unit": "foo", "to_unit": "km"}, "unknown_unit", "unknown unit 'foo'"),
    ("convert_units", {"value": 1, "from_unit": "km", "to_unit": "km**"}, "unknown_unit", "cannot read the unit"),
    ("convert_units", {"value": 1, "from_unit": "km", "to_unit": "kg"}, "incompatible_units",
     "cannot convert km to kg"),
])
async def test_what_a_builtin_cannot_answer_is_an_error_result_saying_why(
        tools, stack: LocalStack, name: str, arguments: object, code: str,
        words: str) -> None:
    result = await _call(tools, stack, ACME, name, arguments)
    assert (result.ok, result.error_code) == (False, code) and words in result.error_message, result
