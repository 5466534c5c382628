"""Tool calling through the router, over real HTTP against the fault server's scripted model: tools offered
in OpenAI's format, calls parsed from whole and streamed answers, results sent back as tool messages,
tools dropped for models that cannot take them unless a tool is required."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from moteur.devstack.faults import ANSWER, FaultServer
from moteur.router.orchestrator import CompletionRequest, ModelRouter, RoutedCompletion
from moteur.router.providers import ModelTool, ToolCall, Turn
from moteur.router.registry import ModelsConfig
from moteur.router.windowing import window
from moteur.runtime.errors import PermissionDenied, Unavailable

WEATHER = ModelTool("weather", "The weather in a city", {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
})
CLOCK = ModelTool("clock", "The time", {"type": "object", "properties": {}})


@pytest.fixture
async def faults() -> AsyncIterator[FaultServer]:
    async with FaultServer() as server:
        yield server


async def script(faults: FaultServer, match: str, steps: list[dict[str, Any]]) -> None:
    async with aiohttp.ClientSession() as http:
        await http.post(f"http://127.0.0.1:{faults.port}/scripts", json={"match": match, "steps": steps})


def router(faults: FaultServer, *models: dict[str, Any]) -> ModelRouter:
    deployments = [{"provider": "openai", "base_url": faults.base_url, "timeout_seconds": 5, **m} for m in models]
    routes = [{"name": "chat", "candidates": [d["name"] for d in deployments]}]
    return ModelRouter(ModelsConfig.model_validate({"models": deployments, "routes": routes}))


SCRIPTED = {"name": "scripted", "model": "script", "supports_tools": True}


async def collect(stream: AsyncIterator[str | RoutedCompletion]) -> tuple[str, RoutedCompletion]:
    text, final = "", None
    async for item in stream:
        if isinstance(item, str):
            text += item
        else:
            final = item
    assert final is not None
    return text, final


@pytest.mark.parametrize("streamed", [False, True])
async def test_parallel_tool_calls_are_parsed_and_their_results_go_back_to_the_model(
    faults: FaultServer, streamed: bool
) -> None:
    question = f"weather in two cities, streamed={streamed}"
    await script(faults, question, [
        {"text": "", "tool_calls": [{"name": "weather", "arguments": {"city": "Paris"}},
                                    {"name": "weather", "arguments": {"city": "Lyon"}}]},
        {"text": "Sunny in both."},
    ])
    models = router(faults, SCRIPTED)
    request = CompletionRequest([Turn("user", question)], tools=(WEATHER, CLOCK))
    if streamed:
        _, first = await collect(models.stream(request))
    else:
        first = await models.complete(request)
    assert first.completion.finish_reason == "tool_calls"
    calls = first.completion.tool_calls
    assert [(c.name, json.loads(c.arguments_json)) for c in calls] == [
        ("weather", {"city": "Paris"}), ("weather", {"city": "Lyon"})]
    assert len({c.id for c in calls}) == 2

    follow_up = [Turn("user", question), Turn("assistant", "", calls),
                 Turn("tool", '{"sky": "clear"}', tool_call_id=calls[0].id),
                 Turn("tool", '{"sky": "blue"}', tool_call_id=calls[1].id)]
    second = await models.complete(CompletionRequest(follow_up, tools=(WEATHER, CLOCK)))
    assert second.completion.text == "Sunny in both." and not second.completion.tool_calls

    seen = faults.script_requests[question]
    assert seen[0]["tools"][0]["function"]["name"] == "weather"
    assert seen[0]["tools"][0]["function"]["parameters"] == WEATHER.parameters
    sent = seen[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == [c.id for c in calls]
    assert sent[2] == {"role": "tool", "content": '{"sky": "clear"}', "tool_call_id": calls[0].id}


async def test_arguments_that_are_not_json_reach_the_caller_as_written(faults: FaultServer) -> None:
    await script(faults, "broken args", [{"tool_calls": [{"name": "weather", "arguments": "{city: Paris"}]}])
    result = await router(faults, SCRIPTED).complete(
        CompletionRequest([Turn("user", "broken args")], tools=(WEATHER,)))
    assert [(c.name, c.arguments_json) for c in result.completion.tool_calls] == [("weather", "{city: Paris")]
    # …and replaying them in the history does not break the next call
    replay = [Turn("user", "broken args"), Turn("assistant", "", result.completion.tool_calls),
              Turn("tool", '{"error": "invalid_arguments"}', tool_call_id=result.completion.tool_calls[0].id)]
    await router(faults, SCRIPTED).complete(CompletionRequest(replay, tools=(WEATHER,)))


async def test_a_model_without_tools_answers_optional_tool_requests_without_them(faults: FaultServer) -> None:
    models = router(faults, {"name": "plain", "model": "ok"}, SCRIPTED)
    result = await models.complete(CompletionRequest(HELLO := [Turn("user", "hello")], tools=(WEATHER,)))
    assert result.deployment.name == "plain" and result.completion.text == ANSWER
    assert "tools" not in faults.script_requests.get("hello", [{}])[0]

    forced = await models.complete(CompletionRequest(HELLO, tools=(WEATHER,), tool_choice="weather"))
    assert forced.deployment.name == "scripted"
    assert forced.attempts == ["plain:no_tools", "scripted:ok"]


async def test_a_required_tool_with_no_model_able_to_call_tools_is_refused(faults: FaultServer) -> None:
    models = router(faults, {"name": "plain", "model": "ok"})
    with pytest.raises((Unavailable, PermissionDenied)):
        await models.complete(CompletionRequest([Turn("user", "x")], tools=(WEATHER,), tool_choice="required"))


def test_windowing_never_keeps_a_tool_result_without_its_call() -> None:
    call = ToolCall("c1", "weather", '{"city": "Paris"}')
    turns = [Turn("user", "old " * 200), Turn("assistant", "", (call,)), Turn("tool", "x" * 400, tool_call_id="c1"),
             Turn("user", "and now?")]
    kept, dropped = window(turns, budget=115)
    assert [t.role for t in kept] == ["user"] and dropped == 3
