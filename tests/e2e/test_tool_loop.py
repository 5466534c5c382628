"""The tool loop through the public API: the "scripted" model (the fault server over real HTTP, see
moteur.devstack.faults) asks for the tool calls a test scripts for its question; the gateway runs the
registry's tools through the real tools service, hands the caller its own, and persists every step. A
model that writes its calls as text (Qwen's <tool_call> JSON, read by the router) goes through the same
loop."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
import yaml

from moteur.client import MoteurClientError, tool_result
from moteur.devstack.models import CHAT_MODEL
from moteur.devstack.stack import LocalStack
from moteur.runtime.identity import Identity
from moteur.v1 import common_pb2, gateway_pb2, router_pb2, router_pb2_grpc

LOCATION = {"name": "get_location", "description": "Where the user is, from their device",
            "input_schema": {"type": "object", "properties": {}},
            "output_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
async def script(fault_server: str):
    """Scripts the model's steps for a fresh question; returns the question."""
    async def scripted(*steps: dict[str, Any]) -> str:
        question = f"scripted question {uuid.uuid4().hex[:8]}"
        async with aiohttp.ClientSession() as http:
            reply = await http.post(f"{fault_server}/scripts", json={"match": question, "steps": list(steps)})
            assert reply.status == 200
        return question
    return scripted


async def seen_by_model(fault_server: str, question: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        return (await (await http.get(f"{fault_server}/scripts")).json())[question]


def calls(*pairs: tuple[str, Any]) -> dict[str, Any]:
    return {"text": "", "tool_calls": [{"name": name, "arguments": args} for name, args in pairs]}


async def test_the_models_tool_calls_run_in_parallel_and_every_step_is_persisted(alice, script, fault_server) -> None:
    question = await script(
        calls(("calculator", {"expression": "6 * 7"}), ("convert_units", {"value": 1, "from_unit": "km",
                                                                           "to_unit": "m"})),
        {"text": "6 times 7 is 42, and a kilometre is 1000 metres."},
    )
    reply = await alice.client.chat(question, model_hint="scripted")
    assert reply.status == gateway_pb2.TURN_STATUS_COMPLETED
    assert reply.message.content == "6 times 7 is 42, and a kilometre is 1000 metres."
    assert reply.route.entries["tool_rounds"] == "1" and reply.route.entries["tools"] == "offered"

    # The model saw both results, in the order it asked for them, as tool messages answering its calls.
    second = (await seen_by_model(fault_server, question))[-1]["messages"]
    asked, first_result, second_result = second[-3:]
    assert [c["function"]["name"] for c in asked["tool_calls"]] == ["calculator", "convert_units"]
    assert first_result["tool_call_id"] == asked["tool_calls"][0]["id"] and json.loads(first_result["content"])
    assert "42" in first_result["content"] and "1000" in second_result["content"]

    stored = (await alice.client.get_session(reply.session_id)).messages
    roles = [m.role for m in stored]
    assert roles == [common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT, common_pb2.ROLE_TOOL, common_pb2.ROLE_TOOL,
                     common_pb2.ROLE_ASSISTANT]
    assert [c.name for c in stored[1].tool_calls] == ["calculator", "convert_units"]
    assert all(m.tool_result.ok and m.tool_result.call_id for m in stored[2:4])
    assert stored[-1].id == reply.message.id


async def test_tool_events_stream_between_the_rounds(alice, script) -> None:
    question = await script(calls(("calculator", {"expression": "2 ** 10"})), {"text": "It is 1024."})
    events = [e async for e in alice.client.chat_stream(question, model_hint="scripted")]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started" and kinds[-1] == "final"
    tools = [e.tool for e in events if e.HasField("tool")]
    assert [(t.call.name, t.HasField("result")) for t in tools] == [("calculator", False), ("calculator", True)]
    assert tools[1].result.ok and json.loads(tools[1].result.content_json) == {"result": 1024}
    assert "".join(e.delta.text for e in events if e.HasField("delta")).strip() == "It is 1024."
    assert events[-1].final.status == gateway_pb2.TURN_STATUS_COMPLETED


async def test_tool_failures_are_results_the_model_reads(alice, script, fault_server) -> None:
    question = await script(
        calls(("calculator", "{expression: 1"), ("no_such_tool", {}), ("calculator", {"expression": "1/0"})),
        {"text": "Sorry, I could not compute that."},
    )
    reply = await alice.client.chat(question, model_hint="scripted")
    assert reply.message.content == "Sorry, I could not compute that."
    sent = (await seen_by_model(fault_server, question))[-1]["messages"]
    asked = {c["id"]: c["function"] for c in sent[-4]["tool_calls"]}
    errors = {(asked[m["tool_call_id"]]["name"], asked[m["tool_call_id"]]["arguments"]): json.loads(m["content"])
              for m in sent[-3:]}
    assert {call: error["error"] for call, error in errors.items()} == {
        ("calculator", "{expression: 1"): "invalid_arguments", ("no_such_tool", "{}"): "unknown_tool",
        ("calculator", '{"expression": "1/0"}'): "math_error"}
    assert "available: calculator" in errors[("no_such_tool", "{}")]["message"]


async def test_a_model_that_keeps_calling_tools_is_stopped_with_a_clear_answer(alice, script) -> None:
    question = await script(calls(("calculator", {"expression": "1 + 1"})))  # repeats forever
    reply = await alice.client.chat(question, model_hint="scripted")
    assert reply.status == gateway_pb2.TURN_STATUS_COMPLETED
    assert reply.finish_reason == common_pb2.FINISH_REASON_STOP  # an answer, not calls to run
    assert reply.route.entries["tool_loop"] == "max_rounds" and reply.route.entries["tool_rounds"] == "8"
    assert "stopped after 8 rounds of tool calls" in reply.message.content
    stored = (await alice.client.get_session(reply.session_id)).messages
    assert len(stored) == 1 + 8 * 2 + 1  # the question, 8 rounds of a call and its result, the answer


async def test_caller_side_tools_wait_for_the_callers_results(alice, script, fault_server) -> None:
    question = await script(
        calls(("get_location", {}), ("calculator", {"expression": "3 * 3"})),
        {"text": "You are in Lyon; 3 times 3 is 9."},
    )
    first = await alice.client.chat(question, model_hint="scripted", client_tools=[LOCATION])
    assert first.status == gateway_pb2.TURN_STATUS_REQUIRES_ACTION
    assert first.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    [pending] = first.pending_tool_calls
    assert pending.name == "get_location"

    # While it waits, the session takes no new turn…
    with pytest.raises(MoteurClientError) as busy:
        await alice.client.chat("something else", session_id=first.session_id, model_hint="scripted")
    assert busy.value.code is grpc.StatusCode.FAILED_PRECONDITION and pending.id in busy.value.message
    # …and results must answer exactly the pending calls, matching the tool's output schema.
    for results, field in [
        ([tool_result("call_unknown", {"city": "Lyon"})], "results[0].call_id"),
        ([tool_result(pending.id, {"town": "Lyon"})], "results[0].content_json"),
        ([tool_result(pending.id, {"city": "Lyon"}), tool_result(pending.id, {"city": "Lyon"})], "results[1].call_id"),
    ]:
        with pytest.raises(MoteurClientError) as refused:
            await alice.client.submit_tool_results(first.session_id, results)
        assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT and refused.value.message.startswith(field)

    done = await alice.client.submit_tool_results(first.session_id, [tool_result(pending.id, {"city": "Lyon"})])
    assert done.status == gateway_pb2.TURN_STATUS_COMPLETED
    assert done.message.content == "You are in Lyon; 3 times 3 is 9." and done.user_message_id == first.user_message_id
    sent = (await seen_by_model(fault_server, question))[-1]["messages"]
    assert {m["tool_call_id"]: m["content"] for m in sent if m["role"] == "tool"}[pending.id] == '{"city": "Lyon"}'

    stored = (await alice.client.get_session(first.session_id)).messages
    assert [m.role for m in stored] == [common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT, common_pb2.ROLE_TOOL,
                                        common_pb2.ROLE_TOOL, common_pb2.ROLE_ASSISTANT]
    with pytest.raises(MoteurClientError) as again:
        await alice.client.submit_tool_results(first.session_id, [tool_result(pending.id, {"city": "Lyon"})])
    assert again.value.code is grpc.StatusCode.FAILED_PRECONDITION
    # The session takes new turns again.
    assert (await alice.client.chat("thanks", session_id=first.session_id, model_hint="instant")).message.content


async def test_another_tenant_cannot_answer_a_pending_turn(alice, mallory, script) -> None:
    question = await script(calls(("get_location", {})), {"text": "ok"})
    first = await alice.client.chat(question, model_hint="scripted", client_tools=[LOCATION])
    with pytest.raises(MoteurClientError) as hidden:
        await mallory.client.submit_tool_results(
            first.session_id, [tool_result(first.pending_tool_calls[0].id, {"city": "Paris"})])
    assert hidden.value.code is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(("options", "field"), [
    ({"client_tools": [{"name": "bad name!", "input_schema": {}}]}, "client_tools[0].name"),
    ({"client_tools": [{"name": "t", "input_schema": {"type": "nonsense"}}]}, "client_tools[0].input_schema_json"),
    ({"client_tools": [LOCATION, LOCATION]}, "client_tools"),
    ({"client_tools": [{**LOCATION, "name": "calculator"}]}, "client_tools"),
    ({"tool_choice": "no_such_tool"}, "tool_choice"),
])
async def test_malformed_tool_declarations_are_invalid_argument(alice, options: dict[str, Any], field: str) -> None:
    with pytest.raises(MoteurClientError) as refused:
        await alice.client.chat("hello", model_hint="scripted", **options)
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT and refused.value.message.startswith(field)


async def test_submitting_to_a_session_with_nothing_pending_is_a_failed_precondition(alice) -> None:
    reply = await alice.client.chat("hello", model_hint="instant")
    with pytest.raises(MoteurClientError) as refused:
        await alice.client.submit_tool_results(reply.session_id, [tool_result("call_0", {})])
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION


async def test_the_real_small_model_calls_a_forced_tool_with_schema_valid_arguments(alice) -> None:
    reply = await alice.client.chat("What is 12 times 7? Use the calculator.", model_hint=f"{CHAT_MODEL}-tools",
                                    tool_choice="calculator", use_memory=False)
    stored = (await alice.client.get_session(reply.session_id)).messages
    asked = stored[1]
    assert [c.name for c in asked.tool_calls] == ["calculator"]
    arguments = json.loads(asked.tool_calls[0].arguments_json)  # the grammar kept it to the schema
    assert isinstance(arguments, dict) and isinstance(arguments["expression"], str)
    assert stored[2].role == common_pb2.ROLE_TOOL and stored[2].tool_result.call_id == asked.tool_calls[0].id
    assert stored[-1].role == common_pb2.ROLE_ASSISTANT and reply.status == gateway_pb2.TURN_STATUS_COMPLETED


async def test_list_tools_shows_each_tenant_only_its_own_tools(alice, mallory, mcp_ready) -> None:
    mine = {t.name: t for t in (await alice.client.list_tools()).tools}
    theirs = {t.name for t in (await mallory.client.list_tools()).tools}
    assert {"calculator", "knowledge_search", "notes__read_note"} <= set(mine)
    assert mine["notes__read_note"].source == "mcp:notes" and json.loads(mine["calculator"].input_schema_json)
    assert "calculator" in theirs and not any(name.startswith("notes__") for name in theirs)


async def test_a_turn_can_opt_out_of_the_registrys_tools(alice, script, fault_server) -> None:
    question = await script({"text": "no tools needed"})
    reply = await alice.client.chat(question, model_hint="scripted", use_tools=False)
    assert reply.message.content == "no tools needed" and "tools" not in reply.route.entries
    assert "tools" not in (await seen_by_model(fault_server, question))[0]


async def test_the_calls_of_one_round_run_at_the_same_time(alice, script, mcp_ready) -> None:
    question = await script(calls(*[("notes__wait", {"seconds": 0.5})] * 3), {"text": "waited"})
    events = [e async for e in alice.client.chat_stream(question, model_hint="scripted")]
    finished = [e.tool.result for e in events if e.HasField("tool") and e.tool.HasField("result")]
    assert len(finished) == 3 and all(r.ok for r in finished), finished
    # each wait saw the three in progress together: the gateway and the tools service ran them in parallel
    assert [json.loads(r.content_json)["most_at_once"] for r in finished] == [3, 3, 3]


# -- calls written as text ---------------------------------------------------------------------------------
CALCULATOR_QUESTION = "What is 17 * 23? Use the calculator."
WRITTEN_CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 * 23"}}\n</tool_call>'


def local_text_model(stack: LocalStack) -> str:
    """The stack's local model that writes its tool calls as text: the first deployment of its registry with
    tool_call_text: qwen and tools, served by llama.cpp (not the fault server); skips the test when there is
    none yet (the local Qwen2.5 chat model, issue 15 item 1, is registered in moteur/devstack/stack.py)."""
    models = yaml.safe_load(stack.models_file.read_text())["models"]
    local = [m["name"] for m in models if m.get("tool_call_text") == "qwen" and m.get("supports_tools")
             and m.get("provider") == "openai" and m.get("model") != "script"]
    if not local:
        pytest.skip("no local model in the stack's registry writes its tool calls as text: set supports_tools "
                    "and tool_call_text: qwen on the Qwen2.5 deployment in moteur/devstack/stack.py")
    return local[0]


async def _registry_revision(stack: LocalStack) -> tuple[str, set[str]]:
    async with grpc.aio.insecure_channel(stack.address("router")) as channel:
        listed = await router_pb2_grpc.RouterStub(channel).ListModels(
            router_pb2.ListModelsRequest(), metadata=stack.mesh_metadata(Identity("acme", "alice", "standard")),
            timeout=5)
    return listed.revision, {m.name for m in listed.models}


async def _until_revision(stack: LocalStack, done: Any) -> None:
    deadline = time.monotonic() + 10
    while not done(*await _registry_revision(stack)):
        assert time.monotonic() < deadline, "the router did not pick up the changed registry in time"
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def text_model(stack: LocalStack, fault_server: str) -> AsyncIterator[str]:
    """The scripted model as a deployment that writes its tool calls as text (tool_call_text: qwen), added
    to the running router's registry for this module's tests."""
    original = stack.models_file.read_text()
    before, _ = await _registry_revision(stack)
    config = yaml.safe_load(original)
    config["models"].append({"name": "scripted-qwen", "provider": "openai", "model": "script",
                             "base_url": f"{fault_server}/v1", "supports_tools": True, "tool_call_text": "qwen",
                             "timeout_seconds": 10})
    stack.models_file.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        await _until_revision(stack, lambda revision, names: "scripted-qwen" in names)
        yield "scripted-qwen"
    finally:
        stack.models_file.write_text(original)
        await _until_revision(stack, lambda revision, names: revision == before)


async def test_a_call_the_model_writes_as_text_runs_through_the_tool_loop(alice, fault_server, text_model) -> None:
    async with aiohttp.ClientSession() as http:
        reply = await http.post(f"{fault_server}/scripts", json={"match": CALCULATOR_QUESTION, "steps": [
            {"text": WRITTEN_CALL}, {"text": "17 times 23 is 391."}]})
        assert reply.status == 200
    reply = await alice.client.chat(CALCULATOR_QUESTION, model_hint=text_model, use_memory=False)
    assert reply.status == gateway_pb2.TURN_STATUS_COMPLETED and "391" in reply.message.content
    assert reply.route.entries["tool_rounds"] == "1"

    stored = (await alice.client.get_session(reply.session_id)).messages
    assert [m.role for m in stored] == [common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT, common_pb2.ROLE_TOOL,
                                        common_pb2.ROLE_ASSISTANT]
    asked, result = stored[1], stored[2]
    assert asked.content == "" and [c.name for c in asked.tool_calls] == ["calculator"]
    assert json.loads(asked.tool_calls[0].arguments_json) == {"expression": "17 * 23"}
    assert result.tool_result.ok and json.loads(result.tool_result.content_json) == {"result": 391}
    # The model was sent its call as a tool call, and the calculator's result as the tool's answer.
    sent = (await seen_by_model(fault_server, CALCULATOR_QUESTION))[-1]["messages"]
    assert sent[-2]["tool_calls"][0]["function"]["name"] == "calculator"
    assert sent[-1]["role"] == "tool" and "391" in sent[-1]["content"]

    # Streamed, the caller sees tool events and the answer, never the <tool_call> markup.
    events = [e async for e in alice.client.chat_stream(CALCULATOR_QUESTION, model_hint=text_model,
                                                        use_memory=False)]
    streamed = "".join(e.delta.text for e in events if e.HasField("delta"))
    assert "<tool_call>" not in streamed and "391" in streamed
    assert [(e.tool.call.name, e.tool.HasField("result")) for e in events if e.HasField("tool")] == [
        ("calculator", False), ("calculator", True)]
    assert events[-1].final.status == gateway_pb2.TURN_STATUS_COMPLETED


async def test_the_local_qwen_model_calls_the_calculator_through_the_tool_loop(alice, stack) -> None:
    reply = await alice.client.chat(CALCULATOR_QUESTION, model_hint=local_text_model(stack), use_memory=False)
    assert reply.status == gateway_pb2.TURN_STATUS_COMPLETED
    stored = (await alice.client.get_session(reply.session_id)).messages
    asked = [c.name for m in stored for c in m.tool_calls]
    assert asked and set(asked) == {"calculator"}, [m.content for m in stored]
    results = [json.loads(m.tool_result.content_json) for m in stored if m.role == common_pb2.ROLE_TOOL]
    assert {"result": 391} in results
    assert "391" in reply.message.content and "<tool_call>" not in reply.message.content
