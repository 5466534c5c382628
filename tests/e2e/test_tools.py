"""The tools service through gRPC: the registry, built-in tools, every way a call can fail, the tenant
policy (reloaded live), MCP servers over stdio and streamable HTTP, and knowledge search."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import re
import signal
import urllib.request
from pathlib import Path

import grpc
import jsonschema
import pytest
import uvicorn
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mcp_notes_server import build as build_notes_server

from moteur.devstack.processes import free_port
from moteur.runtime.identity import Identity
from moteur.runtime.ids import new_id
from moteur.v1 import common_pb2, tools_pb2, tools_pb2_grpc
from tests.mesh import signed

MESH = Identity("acme", "alice", "standard")


@pytest.fixture
async def tools(stack):
    async with grpc.aio.insecure_channel(stack.address("tools")) as channel:
        yield tools_pb2_grpc.ToolsStub(channel)


async def _invoke(tools, name: str, arguments: object) -> common_pb2.ToolResult:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    call = common_pb2.ToolCall(id="call-1", name=name, arguments_json=text)
    return await tools.Invoke(tools_pb2.InvokeRequest(call=call), metadata=signed(MESH), timeout=10)


async def test_the_registry_lists_the_builtins_with_their_schemas(tools) -> None:
    listed = {t.name: t for t in (await tools.ListTools(tools_pb2.ListToolsRequest(), metadata=signed(MESH))).tools}
    assert {"calculator", "datetime_now", "convert_units"} <= set(listed)
    schema = json.loads(listed["calculator"].input_schema_json)
    assert schema["required"] == ["expression"] and listed["calculator"].source == "builtin"


@pytest.mark.parametrize(("name", "arguments", "expected"), [
    ("calculator", {"expression": "2 * (3 + 4) ** 2"}, {"result": 98}),
    ("calculator", {"expression": "sqrt(16) + pi"}, {"result": pytest.approx(7.14159, rel=1e-4)}),
    ("convert_units", {"value": 10, "from_unit": "km", "to_unit": "mile"},
     {"value": pytest.approx(6.2137, rel=1e-4), "unit": "mile"}),
])
async def test_builtins_answer_with_schema_valid_results(tools, name: str, arguments: object, expected: object) -> None:
    result = await _invoke(tools, name, arguments)
    assert result.ok and result.call_id == "call-1" and json.loads(result.content_json) == expected


async def test_the_clock_answers_in_the_asked_time_zone(tools) -> None:
    result = await _invoke(tools, "datetime_now", {"timezone": "Asia/Tokyo"})
    assert result.ok and json.loads(result.content_json)["utc_offset"] == "+0900"


@pytest.mark.parametrize(("name", "arguments", "code"), [
    ("calculator", {"expr": "1+1"}, "invalid_arguments"),            # violates the schema
    ("calculator", "{not json", "invalid_arguments"),
    ("calculator", {"expression": "__import__('os').system('id')"}, "invalid_expression"),  # never eval
    ("calculator", {"expression": "9**9**9"}, "invalid_expression"),  # too large to compute
    ("calculator", {"expression": "1/0"}, "math_error"),
    ("convert_units", {"value": 1, "from_unit": "kg", "to_unit": "km"}, "incompatible_units"),
    ("datetime_now", {"timezone": "Mars/Olympus"}, "unknown_timezone"),
])
async def test_tool_failures_are_results_the_model_can_read(tools, name: str, arguments: object, code: str) -> None:
    result = await _invoke(tools, name, arguments)
    assert not result.ok and result.error_code == code and result.error_message


async def test_an_unknown_tool_or_a_malformed_call_is_a_protocol_error(tools) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await _invoke(tools, "rm_rf", {})
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND and "calculator" in unknown.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as nameless:
        await tools.Invoke(tools_pb2.InvokeRequest(call=common_pb2.ToolCall(name="calculator")), metadata=signed(MESH))
    assert nameless.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "call.id" in nameless.value.details()


async def test_every_call_is_audited_without_its_arguments(tools, mongo) -> None:
    await _invoke(tools, "calculator", {"expression": "6*7"})
    audit = await mongo["moteur"]["tool_calls"].find({"tenant": "acme", "tool": "calculator"}).to_list()
    assert audit and all(len(a["arguments_sha256"]) == 64 and "arguments" not in a for a in audit)


# -- per-tenant policy, MCP servers, knowledge search ---------------------------------------------------

ACME = Identity("acme", "alice", "standard")
ACME_ENTERPRISE = Identity("acme", "alice", "enterprise")
GLOBEX = Identity("globex", "mallory", "standard")
INITECH = Identity("initech", "ian", "standard")  # not in the test policy: the defaults, until a test adds it
DEFAULT_TOOLS = {"calculator", "convert_units", "datetime_now", "knowledge_search"}


async def _names(tools, identity: Identity) -> set[str]:
    listed = await tools.ListTools(tools_pb2.ListToolsRequest(), metadata=signed(identity), timeout=5)
    return {t.name for t in listed.tools}


async def _call(tools, identity: Identity, name: str, arguments: object,
                user_id: str = "") -> common_pb2.ToolResult:
    call = common_pb2.ToolCall(id="call-1", name=name, arguments_json=json.dumps(arguments))
    return await tools.Invoke(tools_pb2.InvokeRequest(call=call, user_id=user_id),
                              metadata=signed(identity), timeout=15)


async def _eventually(check, seconds: float = 30) -> None:
    """Polls ``check`` (an async predicate) until it holds: MCP servers start and policies reload in the
    background."""
    for _ in range(round(seconds / 0.2)):
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"still not so after {seconds} s")


def _metrics(stack) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['tools-metrics']}/metrics", timeout=5) as reply:
        return reply.read().decode()


@pytest.fixture
async def mcp_ready(tools) -> None:
    """acme's MCP servers have started (a few seconds after the stack)."""
    await _eventually(lambda: _has(tools, ACME, "notes__read_note"))
    await _eventually(lambda: _has(tools, ACME_ENTERPRISE, "vault__read_note"))


async def _has(tools, identity: Identity, name: str) -> bool:
    return name in await _names(tools, identity)


@pytest.fixture
def policy(stack):
    """Writes a changed policy for the running tools service; the test's own, put back afterwards."""
    original = stack.options.tools_config
    yield lambda change: stack.write_tools_file(change(copy.deepcopy(original)))
    stack.write_tools_file(original)


async def test_each_tenant_lists_its_allowed_builtins_and_its_own_mcp_tools(tools, mcp_ready) -> None:
    acme = await _names(tools, ACME)
    assert {"http_get", "knowledge_search", "notes__read_note", "notes__list_titles", "notes__save_note"} <= acme
    assert await _names(tools, GLOBEX) == DEFAULT_TOOLS  # no http_get, no one else's MCP tools
    listed = {t.name: t for t in (await tools.ListTools(tools_pb2.ListToolsRequest(), metadata=signed(MESH))).tools}
    assert listed["notes__read_note"].source == "mcp:notes"
    assert json.loads(listed["notes__read_note"].input_schema_json)["required"] == ["title"]


async def test_another_tenants_tool_is_not_found_like_an_unknown_one(tools, mcp_ready) -> None:
    answers = {}
    for name in ("notes__read_note", "http_get", "no_such_tool"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _call(tools, GLOBEX, name, {"title": "launch"})
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        answers[name] = refused.value.details().replace(name, "<name>")
    assert len(set(answers.values())) == 1  # nothing tells a tool that exists elsewhere from one that does not
    assert "calculator" in answers["http_get"] and "notes__" not in answers["http_get"]


async def test_an_mcp_tool_answers_with_content_valid_against_its_schema(tools, mcp_ready) -> None:
    listed = {t.name: t for t in (await tools.ListTools(tools_pb2.ListToolsRequest(), metadata=signed(MESH))).tools}
    result = await _call(tools, ACME, "notes__read_note", {"title": "launch"})
    assert result.ok, result.error_message
    content = json.loads(result.content_json)
    jsonschema.validate(content, json.loads(listed["notes__read_note"].output_schema_json))
    assert content == {"title": "launch", "text": "The launch is on Thursday at 10:00.", "words": 7}
    text_only = await _call(tools, ACME, "notes__list_titles", {})
    assert text_only.ok and json.loads(text_only.content_json) == {"text": "launch\nwelcome"}


@pytest.mark.parametrize(("name", "arguments", "code", "words"), [
    ("notes__save_note", {"title": "t", "text": "x"}, "tool_error", "disk is full"),  # the server's isError
    ("notes__read_note", {"title": "nowhere"}, "tool_error", "no note titled"),
    ("notes__read_note", {"name": "launch"}, "invalid_arguments", "title"),  # refused before the server
])
async def test_an_mcp_tool_failure_is_a_result_the_model_can_read(tools, mcp_ready, name: str, arguments: object,
                                                                  code: str, words: str) -> None:
    result = await _call(tools, ACME, name, arguments)
    assert (result.ok, result.error_code) == (False, code) and words in result.error_message


async def test_an_mcp_server_that_cannot_start_only_leaves_its_tools_absent(tools, stack, mcp_ready) -> None:
    assert not any(n.startswith("broken__") for n in await _names(tools, ACME))
    async with grpc.aio.insecure_channel(stack.address("tools")) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    metrics = await asyncio.to_thread(_metrics, stack)
    assert 'moteur_mcp_servers{server="broken",state="failed",tenant="acme"} 1.0' in metrics
    assert 'moteur_mcp_servers{server="notes",state="ready",tenant="acme"} 1.0' in metrics


async def test_tools_of_a_tier_are_only_that_tiers(tools, mcp_ready) -> None:
    enterprise = {t.name: t for t in (await tools.ListTools(
        tools_pb2.ListToolsRequest(), metadata=signed(ACME_ENTERPRISE))).tools}
    assert list(enterprise["vault__read_note"].tiers) == ["enterprise"]
    assert (await _call(tools, ACME_ENTERPRISE, "vault__read_note", {"title": "welcome"})).ok
    assert not any(n.startswith("vault__") for n in await _names(tools, ACME))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _call(tools, ACME, "vault__read_note", {"title": "welcome"})
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND


def _connects(stack, server: str) -> float:
    found = re.search(rf'moteur_mcp_connects_total{{server="{server}",tenant="acme"}} (\S+)', _metrics(stack))
    assert found, f"no connection count for {server}"
    return float(found.group(1))


async def _lacks(tools, identity: Identity, name: str) -> bool:
    return not await _has(tools, identity, name)


async def test_an_mcp_servers_changed_tool_list_shows_without_reconnecting(tools, stack, mcp_ready) -> None:
    connects = _connects(stack, "notes")
    learned = await _call(tools, ACME, "notes__learn", {"name": "greet", "answer": "bonjour"})
    assert learned.ok, learned.error_message
    try:
        await _eventually(lambda: _has(tools, ACME, "notes__greet"), seconds=10)
        greeted = await _call(tools, ACME, "notes__greet", {})
        assert greeted.ok and json.loads(greeted.content_json) == {"text": "bonjour"}
    finally:
        assert (await _call(tools, ACME, "notes__forget", {"name": "greet"})).ok
    await _eventually(lambda: _lacks(tools, ACME, "notes__greet"), seconds=10)
    assert _connects(stack, "notes") == connects  # the same connection all along, listed again each second


def _children(pid: int) -> dict[int, str]:
    """The processes whose parent is ``pid``, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return found


async def test_a_killed_mcp_server_is_restarted_and_its_tools_come_back(tools, stack, mcp_ready) -> None:
    connects = _connects(stack, "vault")
    vault = [pid for pid, command in _children(stack.processes["tools"].pid).items()
             if "mcp_notes_server.py vault" in command]
    assert len(vault) == 1, _children(stack.processes["tools"].pid)
    os.kill(vault[0], signal.SIGKILL)
    # at once, a call either finds the connection closed or the tool gone while it reconnects: never a hang
    try:
        during = await _call(tools, ACME_ENTERPRISE, "vault__read_note", {"title": "welcome"})
        assert during.ok or during.error_code == "unavailable", during
    except grpc.aio.AioRpcError as gone:
        assert gone.code() is grpc.StatusCode.NOT_FOUND

    async def reconnected() -> bool:
        return _connects(stack, "vault") > connects

    await _eventually(reconnected, seconds=20)
    assert await _has(tools, ACME_ENTERPRISE, "vault__read_note")
    assert (await _call(tools, ACME_ENTERPRISE, "vault__read_note", {"title": "welcome"})).ok
    assert _connects(stack, "vault") == connects + 1


async def test_a_changed_policy_applies_without_a_restart_and_a_broken_one_is_refused(tools, stack, policy) -> None:
    assert await _names(tools, INITECH) == DEFAULT_TOOLS

    def calculator_only(config: dict) -> dict:
        config["tenants"]["initech"] = {"allow": ["calc*"]}
        return config

    policy(calculator_only)
    await _eventually(lambda: _same(tools, INITECH, {"calculator"}))
    refused = _refusals(await asyncio.to_thread(_metrics, stack))
    stack.tools_file.write_text("defaults: {allow: 5}\n")  # not a list: refused, the previous policy stays
    await _eventually(lambda: _refused_since(stack, refused))
    assert await _names(tools, INITECH) == {"calculator"}
    stack.write_tools_file(stack.options.tools_config)
    await _eventually(lambda: _same(tools, INITECH, DEFAULT_TOOLS))


async def _same(tools, identity: Identity, names: set[str]) -> bool:
    return await _names(tools, identity) == names


def _refusals(metrics: str) -> float:
    prefix = 'moteur_tools_config_reloads_total{outcome="refused"}'
    lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


async def _refused_since(stack, before: float) -> bool:
    return _refusals(await asyncio.to_thread(_metrics, stack)) > before


async def test_a_streamable_http_mcp_server_added_by_a_reload_serves_its_tenant(tools, policy) -> None:
    port = free_port()
    web = uvicorn.Server(uvicorn.Config(build_notes_server("web").streamable_http_app(host="127.0.0.1"),
                                        host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(web.serve())

    async def started() -> bool:
        return web.started

    try:
        await _eventually(started, seconds=10)

        def with_web(config: dict) -> dict:
            config["tenants"]["initech"] = {"mcp_servers": [
                {"name": "web", "transport": "http", "url": f"http://127.0.0.1:{port}/mcp", "timeout_ms": 5000}]}
            return config

        policy(with_web)
        await _eventually(lambda: _has(tools, INITECH, "web__read_note"))
        result = await _call(tools, INITECH, "web__read_note", {"title": "welcome"})
        assert result.ok and json.loads(result.content_json)["title"] == "welcome"
        assert not any(n.startswith("web__") for n in await _names(tools, ACME))
        policy(lambda config: config)  # the server removed from the policy: its tools go
        await _eventually(lambda: _same(tools, INITECH, DEFAULT_TOOLS))
    finally:
        web.should_exit = True
        await asyncio.wait_for(serving, 10)


async def test_knowledge_search_finds_the_callers_and_the_tenants_documents_only(tools, make_caller) -> None:
    tenant, other = f"kb-{new_id()}", f"kb-{new_id()}"
    service, ada, bob = (await make_caller(tenant, ""), await make_caller(tenant, "ada"),
                         await make_caller(tenant, "bob"))
    stranger = await make_caller(other, "ada")
    text = "The lighthouse keeper rotation: {} covers the night shift on Tuesdays."
    await service.client.upsert_document(text.format("the whole team"), document_id="shared")
    await ada.client.upsert_document(text.format("Ada"), document_id="ada-notes")
    await bob.client.upsert_document(text.format("Bob"), document_id="bob-notes")
    await stranger.client.upsert_document(text.format("a stranger"), document_id="stranger-notes")

    async def documents(identity: Identity, user_id: str = "") -> dict[str, dict]:
        result = await _call(tools, identity, "knowledge_search",
                             {"query": "who works the lighthouse night shift", "top_k": 10, "kinds": ["document"]},
                             user_id=user_id)
        assert result.ok, result.error_message
        return {r["document_id"]: r for r in json.loads(result.content_json)["results"]}

    found = await documents(Identity(tenant, "ada", "standard"))
    assert set(found) == {"shared", "ada-notes"} and found["shared"]["shared"] and found["shared"]["score"] > 0.3
    assert set(await documents(Identity(tenant, "", "service"), user_id="bob")) == {"shared", "bob-notes"}
    assert set(await documents(Identity(tenant, "", "service"))) == {"shared"}  # acting for no user
    with pytest.raises(grpc.aio.AioRpcError) as impersonating:
        await documents(Identity(tenant, "ada", "standard"), user_id="bob")
    assert impersonating.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_knowledge_search_without_memory_is_an_unavailable_result(stack) -> None:
    process, address = stack.extra_service("tools", "tools-no-memory", MOTEUR_MEMORY_ADDR=f"127.0.0.1:{free_port()}")
    await asyncio.to_thread(process.start)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            result = await _call(tools_pb2_grpc.ToolsStub(channel), ACME, "knowledge_search", {"query": "anything"})
        assert (result.ok, result.error_code) == (False, "unavailable") and "memory" in result.error_message
    finally:
        await asyncio.to_thread(process.stop)
