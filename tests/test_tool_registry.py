"""The call protocol's limits with tools written for the test: timeouts, output caps, concurrency; tools
scoped to a tenant; the tools policy's validation."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from moteur.tools.policy import ToolsPolicy, load_policy
from moteur.tools.registry import Caller, Registry, ToolSpec, current_caller

ANY_OBJECT = {"type": "object"}


def _registry(function: Any, **limits: Any) -> Registry:
    registry = Registry()
    registry.register(ToolSpec("t", "test tool", ANY_OBJECT, ANY_OBJECT, **limits), function)
    return registry


async def test_a_tool_that_hangs_ends_with_a_timeout_result() -> None:
    async def hang(arguments: Mapping[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(60)
        return {}

    outcome = await _registry(hang, timeout_ms=100).invoke("t", "{}")
    assert (outcome.ok, outcome.error_code) == (False, "timeout") and 100 <= outcome.duration_ms < 1000


async def test_megabytes_of_output_are_truncated_and_flagged() -> None:
    async def flood(arguments: Mapping[str, Any]) -> dict[str, Any]:
        return {"text": "x" * 3_000_000}

    outcome = await _registry(flood, max_output_bytes=10_000).invoke("t", "{}")
    assert outcome.ok and outcome.truncated and len(outcome.content_json) < 11_000


async def test_output_that_breaks_its_schema_is_an_error_result() -> None:
    async def wrong(arguments: Mapping[str, Any]) -> list[int]:
        return [1, 2]

    outcome = await _registry(wrong).invoke("t", "{}")
    assert (outcome.ok, outcome.error_code) == (False, "invalid_output")


async def test_a_tools_concurrency_limit_answers_busy_beyond_it() -> None:
    async def slow(arguments: Mapping[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.2)
        return {}

    registry = _registry(slow, max_concurrency=2)
    outcomes = await asyncio.gather(*(registry.invoke("t", "{}") for _ in range(3)))
    assert sorted(o.error_code for o in outcomes) == ["", "", "busy"]


async def test_a_crashing_tool_is_a_failed_result_not_a_crash() -> None:
    async def crash(arguments: Mapping[str, Any]) -> dict[str, Any]:
        raise RuntimeError("bug")

    outcome = await _registry(crash).invoke("t", "{}")
    assert (outcome.ok, outcome.error_code) == (False, "failed")


async def test_a_tenants_own_tool_is_invisible_and_uncallable_for_other_tenants() -> None:
    async def echo(arguments: Mapping[str, Any]) -> dict[str, Any]:
        return {"tenant": current_caller().tenant}

    registry = _registry(echo)
    registry.register(ToolSpec("notes__echo", "one tenant's", ANY_OBJECT, ANY_OBJECT, source="mcp:notes"), echo,
                      tenant="acme")
    assert {s.name for s in registry.specs("acme")} == {"t", "notes__echo"}
    assert {s.name for s in registry.specs("globex")} == {"t"}
    mine = await registry.invoke("notes__echo", "{}", Caller("acme", "alice"))
    assert mine.ok and mine.content_json == '{"tenant": "acme"}'
    theirs = await registry.invoke("notes__echo", "{}", Caller("globex", "mallory"))
    assert (theirs.ok, theirs.error_code) == (False, "unavailable")


def test_the_policy_replaces_the_default_allowlist_per_tenant() -> None:
    policy = ToolsPolicy.model_validate({"defaults": {"allow": ["calc*", "datetime_now"]},
                                         "tenants": {"acme": {"allow": ["*"]}, "globex": {}}})
    assert policy.allows_builtin("acme", "http_get") and not policy.allows_builtin("globex", "http_get")
    assert policy.allows_builtin("initech", "calculator") and not policy.allows_builtin("initech", "http_get")


@pytest.mark.parametrize(("server", "complaint"), [
    ({"name": "notes", "transport": "stdio"}, "needs a 'command'"),
    ({"name": "crm", "transport": "http"}, "needs a 'url'"),
    ({"name": "Notes_1", "transport": "stdio", "command": ["x"]}, "name"),  # [a-z0-9-]{1,32}
    ({"name": "notes", "transport": "sse", "command": ["x"]}, "transport"),
    ({"name": "notes", "transport": "stdio", "command": ["x"], "timeout": 5}, "timeout"),  # a typo is refused
])
def test_an_invalid_mcp_server_is_refused_naming_the_field(server: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError) as refused:
        ToolsPolicy.model_validate({"tenants": {"acme": {"mcp_servers": [server]}}})
    assert complaint in str(refused.value)


def test_the_example_policy_loads() -> None:
    policy, revision = load_policy(Path(__file__).parents[1] / "config" / "tools.yaml")
    assert "knowledge_search" in policy.defaults.allow and len(revision) == 12
