"""Tool calls a local model writes as text (moteur.router.toolcalls): Qwen's <tool_call> JSON read into tool
calls, checked against the tools offered, left as text when malformed; through the router over real HTTP
against the fault server's scripted model, whole and streamed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from moteur.devstack.faults import FaultServer
from moteur.router.orchestrator import CompletionRequest, RoutedCompletion
from moteur.router.providers import ModelTool, Turn
from moteur.router.registry import ModelsConfig
from moteur.router.toolcalls import Holdback, Reading, read
from tests.test_router_tools import SCRIPTED, WEATHER, collect, router, script

CALCULATOR = ModelTool("calculator", "Evaluate an arithmetic expression", {
    "type": "object", "properties": {"expression": {"type": "string", "minLength": 1}},
    "required": ["expression"], "additionalProperties": False,
})
TOOLS = (CALCULATOR, WEATHER)
QWEN = {**SCRIPTED, "name": "qwen", "tool_call_text": "qwen"}


def tagged(*calls: dict[str, object]) -> str:
    return "".join(f"<tool_call>\n{json.dumps(call)}\n</tool_call>\n" for call in calls)


ONE = tagged({"name": "calculator", "arguments": {"expression": "17*23"}})
TWO = "I will look both up.\n" + tagged({"name": "weather", "arguments": {"city": "Paris"}},
                                        {"name": "weather", "arguments": {"city": "Lyon"}}) + "Then I answer."
FENCED = 'Let me compute it.\n```json\n{"name": "calculator", "arguments": {"expression": "17*23"}}\n```'
STRING_ARGUMENTS = tagged({"name": "calculator", "arguments": json.dumps({"expression": "17*23"})})
# what Qwen2.5-Coder-1.5B-Instruct (Q4_K_M) answered through llama-cpp-python's server, tool_choice auto
QWEN_CODER = '```json\n{\n  "name": "calculator",\n  "arguments": {\n    "expression": "17 * 23"\n  }\n}\n```'
BARE = '{"name": "calculator", "arguments": {"expression": "17*23"}}'
UNKNOWN_TOOL = tagged({"name": "abacus", "arguments": {"expression": "17*23"}})
INVALID_ARGUMENTS = tagged({"name": "calculator", "arguments": {"formula": "17*23"}})
BROKEN_JSON = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17*23"\n</tool_call>'
# one valid call and one not: the answer stays text, nothing runs
HALF_VALID = tagged({"name": "calculator", "arguments": {"expression": "1"}}, {"name": "abacus", "arguments": {}})


def calls_of(text: str, tool_choice: str = "") -> list[tuple[str, dict[str, object]]]:
    return [(c.name, json.loads(c.arguments_json)) for c in read(text, TOOLS, tool_choice).calls]


# -- reading ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [ONE, FENCED, STRING_ARGUMENTS, BARE, ONE.replace("\n</tool_call>\n", ""),
                                  QWEN_CODER.replace(" * ", "*")])
def test_one_written_call_is_read_in_each_form(text: str) -> None:
    assert calls_of(text) == [("calculator", {"expression": "17*23"})]


def test_two_calls_keep_their_order_get_fresh_ids_and_the_text_before_them_is_the_content() -> None:
    reading = read(TWO, TOOLS)
    assert [json.loads(c.arguments_json)["city"] for c in reading.calls] == ["Paris", "Lyon"]
    assert reading.content == "I will look both up."  # text after the calls is dropped
    again = read(TWO, TOOLS)
    ids = {c.id for c in reading.calls} | {c.id for c in again.calls}
    assert len(ids) == 4 and all(i.startswith("call_") for i in ids)


def test_a_list_of_calls_in_one_tag_and_a_fence_inside_a_tag_are_read() -> None:
    listed = "<tool_call>\n```json\n" + json.dumps([{"name": "weather", "arguments": {"city": "Nice"}},
                                                   {"name": "calculator", "arguments": {"expression": "2"}}])
    assert calls_of(listed + "\n```\n</tool_call>") == [("weather", {"city": "Nice"}),
                                                          ("calculator", {"expression": "2"})]


@pytest.mark.parametrize(("text", "why"), [
    (UNKNOWN_TOOL, "tool 'abacus' was not offered"),
    (INVALID_ARGUMENTS, "do not match its schema"),
    (BROKEN_JSON, "not JSON"),
    (HALF_VALID, "tool 'abacus' was not offered"),
    (tagged({"name": "calculator", "arguments": "{expression"}), "are not JSON"),
    (tagged({"name": "calculator"}), "is not {"),
    (tagged({"name": "calculator", "arguments": {"expression": "1"}, "result": 1}), "is not {"),
    ('```json\n{"name": "abacus", "arguments": {}}\n```', "not offered"),
])
def test_a_malformed_unknown_or_invalid_call_leaves_the_answer_as_text(text: str, why: str) -> None:
    reading = read(text, TOOLS)
    assert not reading.calls and why in reading.refused


@pytest.mark.parametrize("text", [
    "The answer is 391.",
    'Here is the JSON you asked for:\n```json\n{"name": "Alice", "age": 3}\n```',
    '{"answer": 391}',
    # a small model's echo of its call with the result, after the result: an answer
    '```json\n{"name": "calculator", "arguments": "{\\"expression\\": \\"17 * 23\\"}", "result": 391}\n```',
    "Use `<tool>` tags and ``` fences in markdown.",
])
def test_plain_answers_and_json_that_is_not_a_call_are_text_without_refusal(text: str) -> None:
    assert read(text, TOOLS) == Reading()


def test_a_tool_choice_naming_one_tool_reads_only_calls_of_it() -> None:
    assert calls_of(ONE, tool_choice="calculator")
    assert "not offered" in read(ONE, TOOLS, tool_choice="weather").refused


# -- holding a stream back -------------------------------------------------------------------------------
def fed(text: str, size: int) -> tuple[str, str]:
    """What a stream passes on while ``text`` arrives ``size`` characters at a time, and what it holds."""
    held = Holdback()
    passed = "".join(held.feed(text[i:i + size]) for i in range(0, len(text), size))
    return passed, held.rest()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize(("text", "shown"), [
    (ONE, ""), (TWO, "I will look both up.\n"), (FENCED, "Let me compute it.\n"), (BARE, ""), (QWEN_CODER, ""),
    ("  " + BARE, ""), ("Spaced out:\n```json" + "\n" * 30 + BARE + "```", "Spaced out:\n"),
    ("A tag half written at the end <tool_ca", "A tag half written at the end "),
    ("Plain text, with `code`, a ``` fence\n```python\nprint(1)\n``` and <b>html</b>.", None),
    ('Not a call:\n```json\n{"a": [1, 2]}\n```\nthe end.', None),
])
def test_a_stream_shows_text_until_a_call_begins_whatever_the_chunks(text: str, shown: str | None, size: int) -> None:
    passed, rest = fed(text, size)
    assert passed + rest == text
    assert passed == (text if shown is None else shown)


def test_plain_text_is_passed_on_as_it_comes() -> None:
    held = Holdback()
    assert [held.feed(word) for word in ["The", " answer", " is", " 391."]] == ["The", " answer", " is", " 391."]


# -- through the router ----------------------------------------------------------------------------------
@pytest.fixture
async def faults() -> AsyncIterator[FaultServer]:
    async with FaultServer() as server:
        yield server


def sample(name: str, model: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": model}) or 0.0


async def answer(faults: FaultServer, text: str, streamed: bool, *models: dict[str, object]
                 ) -> tuple[str, RoutedCompletion]:
    question = f"question {len(faults.scripts)} streamed={streamed}"
    await script(faults, question, [{"text": text}])
    request = CompletionRequest([Turn("user", question)], tools=TOOLS)
    routed = router(faults, *(models or (QWEN,)))
    if streamed:
        return await collect(routed.stream(request))
    result = await routed.complete(request)
    return result.completion.text, result


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize(("text", "expected", "content"), [
    (ONE, [("calculator", {"expression": "17*23"})], ""),
    (TWO, [("weather", {"city": "Paris"}), ("weather", {"city": "Lyon"})], "I will look both up."),
    (FENCED, [("calculator", {"expression": "17*23"})], "Let me compute it."),
    (QWEN_CODER, [("calculator", {"expression": "17 * 23"})], ""),
    (STRING_ARGUMENTS, [("calculator", {"expression": "17*23"})], ""),
])
async def test_calls_written_as_text_end_the_answer_as_tool_calls(
    faults: FaultServer, text: str, expected: list[tuple[str, dict[str, object]]], content: str, streamed: bool
) -> None:
    parsed = sample("moteur_model_text_tool_calls_total", "qwen")
    shown, result = await answer(faults, text, streamed)
    completion = result.completion
    assert completion.finish_reason == "tool_calls"
    assert [(c.name, json.loads(c.arguments_json)) for c in completion.tool_calls] == expected
    assert completion.text == content
    assert shown.strip() == content and "<tool_call>" not in shown and "```" not in shown
    assert sample("moteur_model_text_tool_calls_total", "qwen") == parsed + len(expected)


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("text", [UNKNOWN_TOOL, INVALID_ARGUMENTS, BROKEN_JSON, HALF_VALID])
async def test_calls_that_do_not_check_out_stay_the_text_the_model_wrote(
    faults: FaultServer, text: str, streamed: bool
) -> None:
    refused = sample("moteur_model_text_tool_calls_refused_total", "qwen")
    shown, result = await answer(faults, text, streamed)
    assert result.completion.finish_reason == "stop" and not result.completion.tool_calls
    assert result.completion.text == text and shown == text
    assert sample("moteur_model_text_tool_calls_refused_total", "qwen") == refused + 1


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_model_without_tool_call_text_keeps_its_text(faults: FaultServer, streamed: bool) -> None:
    shown, result = await answer(faults, ONE, streamed, SCRIPTED)
    assert shown == ONE and result.completion.text == ONE and not result.completion.tool_calls


async def test_a_stream_shows_the_text_before_the_call_as_it_comes(faults: FaultServer) -> None:
    await script(faults, "stream me", [{"text": TWO}])
    items = [item async for item in router(faults, QWEN).stream(
        CompletionRequest([Turn("user", "stream me")], tools=TOOLS))]
    deltas, final = items[:-1], items[-1]
    assert isinstance(final, RoutedCompletion) and len(final.completion.tool_calls) == 2
    assert deltas[:4] == ["I", " will", " look", " both"]  # not held back: only the markup is
    assert "".join(deltas) == "I will look both up.\n"


def test_tool_call_text_needs_a_deployment_offered_tools() -> None:
    with pytest.raises(ValidationError, match="tool_call_text needs supports_tools"):
        ModelsConfig.model_validate({"models": [{"name": "q", "provider": "instant", "tool_call_text": "qwen"}],
                                     "default_model": "q"})
