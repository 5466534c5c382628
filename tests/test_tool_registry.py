"""The call protocol's limits with tools written for the test: timeouts, output caps, concurrency per tenant
and per tool, the caller's deadline, results JSON cannot carry; tools scoped to a tenant; the tools policy's
validation; the built-ins' own limits (huge numbers, unreadable units)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError
from structlog.testing import capture_logs

from moteur.runtime.context import deadline_var
from moteur.tools.builtins import register_builtins
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


def test_a_tenants_own_concurrency_limit_overrides_the_services() -> None:
    policy = ToolsPolicy.model_validate({"tenants": {"acme": {"max_concurrent_calls": 3}, "globex": {}}})
    assert [policy.max_concurrent_calls(t, 32) for t in ("acme", "globex", "initech")] == [3, 32, 32]
    with pytest.raises(ValidationError, match="max_concurrent_calls"):
        ToolsPolicy.model_validate({"tenants": {"acme": {"max_concurrent_calls": 0}}})


# -- one tenant cannot slow another -------------------------------------------------------------------------

def _count(metric: str, reason: str) -> float:
    return REGISTRY.get_sample_value(metric, {"reason": reason}) or 0.0


class _Gate:
    """A tool that runs until the test opens the gate, and says how many of its calls are running."""

    def __init__(self) -> None:
        self.opened, self.started, self.running, self.cancelled = asyncio.Event(), asyncio.Condition(), 0, 0

    async def __call__(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        async with self.started:
            self.running += 1
            self.started.notify_all()
        try:
            await self.opened.wait()
            return {}
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1

    async def until_running(self, calls: int) -> None:
        async with self.started:
            await self.started.wait_for(lambda: self.running >= calls)


async def test_a_tenant_beyond_its_limit_is_refused_while_another_tenant_runs() -> None:
    gate = _Gate()
    registry = _registry(gate, max_concurrency=16)
    refused = _count("moteur_tool_calls_refused_total", "tenant_limit")
    acme = [asyncio.create_task(registry.invoke("t", "{}", Caller("acme"), max_tenant_calls=2)) for _ in range(2)]
    await gate.until_running(2)
    with capture_logs() as logs:
        third = await registry.invoke("t", '{"secret": "never logged"}', Caller("acme"), max_tenant_calls=2)
    assert (third.ok, third.error_code) == (False, "tenant_busy") and "2 tool calls" in third.error_message
    globex = asyncio.create_task(registry.invoke("t", "{}", Caller("globex"), max_tenant_calls=2))
    await gate.until_running(3)  # globex's call runs beside acme's two
    gate.opened.set()
    assert all(o.ok for o in await asyncio.gather(*acme, globex))
    assert _count("moteur_tool_calls_refused_total", "tenant_limit") == refused + 1
    assert [(e["event"], e["tenant"], e["tool"], e["reason"]) for e in logs] == [
        ("tool.refused", "acme", "t", "tenant_limit")]
    assert "never logged" not in repr(logs)
    assert (await registry.invoke("t", "{}", Caller("acme"), max_tenant_calls=2)).ok  # the slots came back


async def test_a_tool_full_for_one_tenant_still_runs_for_another() -> None:
    gate = _Gate()
    registry = _registry(gate, max_concurrency=1)
    first = asyncio.create_task(registry.invoke("t", "{}", Caller("acme")))
    await gate.until_running(1)
    assert (await registry.invoke("t", "{}", Caller("acme"))).error_code == "busy"
    other = asyncio.create_task(registry.invoke("t", "{}", Caller("globex")))
    await gate.until_running(2)
    gate.opened.set()
    assert (await first).ok and (await other).ok


async def test_a_call_past_its_callers_deadline_is_stopped_and_counted() -> None:
    gate = _Gate()
    registry = _registry(gate, timeout_ms=10_000)
    abandoned = _count("moteur_tool_calls_abandoned_total", "deadline")
    token = deadline_var.set(time.monotonic() + 0.2)  # as the server interceptor sets it for an inbound call
    try:
        with capture_logs() as logs:
            outcome = await registry.invoke("t", "{}", Caller("acme"), max_tenant_calls=1)
    finally:
        deadline_var.reset(token)
    assert (outcome.ok, outcome.error_code) == (False, "deadline_exceeded") and outcome.duration_ms < 1_000
    assert gate.cancelled == 1 and gate.running == 0
    assert _count("moteur_tool_calls_abandoned_total", "deadline") == abandoned + 1
    assert [(e["event"], e["reason"]) for e in logs] == [("tool.abandoned", "deadline")]
    gate.opened.set()
    assert (await registry.invoke("t", "{}", Caller("acme"), max_tenant_calls=1)).ok  # its slot came back


async def test_a_call_whose_deadline_has_passed_is_not_started() -> None:
    gate = _Gate()
    token = deadline_var.set(time.monotonic() - 0.01)
    try:
        outcome = await _registry(gate).invoke("t", "{}", Caller("acme"))
    finally:
        deadline_var.reset(token)
    assert (outcome.ok, outcome.error_code) == (False, "deadline_exceeded") and gate.running == gate.cancelled == 0


async def test_a_cancelled_call_stops_the_tool_and_gives_its_slots_back() -> None:
    gate = _Gate()
    registry = _registry(gate, max_concurrency=1)
    abandoned = _count("moteur_tool_calls_abandoned_total", "cancelled")
    call = asyncio.create_task(registry.invoke("t", "{}", Caller("acme"), max_tenant_calls=1))
    await gate.until_running(1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert gate.cancelled == 1
    assert _count("moteur_tool_calls_abandoned_total", "cancelled") == abandoned + 1
    gate.opened.set()
    assert (await registry.invoke("t", "{}", Caller("acme"), max_tenant_calls=1)).ok


# -- results JSON cannot carry --------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "why"), [
    (float("inf"), "infinity or NaN"),
    (float("nan"), "infinity or NaN"),
    (10 ** 5000, "more than 4,300 digits"),
], ids=["inf", "nan", "huge-integer"])
async def test_a_result_json_cannot_carry_is_an_error_result_saying_why(value: object, why: str) -> None:
    async def unwritable(arguments: Mapping[str, Any]) -> dict[str, Any]:
        return {"value": value}

    outcome = await _registry(unwritable).invoke("t", "{}")
    assert (outcome.ok, outcome.error_code) == (False, "invalid_output") and why in outcome.error_message


@pytest.mark.parametrize(("name", "arguments", "code", "words"), [
    ("calculator", {"expression": "10**100000"}, "result_too_large", "100,000 digits"),
    ("calculator", {"expression": "3999999**3999999"}, "result_too_large", "digits"),  # refused, not computed
    ("calculator", {"expression": "(10**4000)*(10**4000)"}, "result_too_large", "8,000 digits"),
    ("convert_units", {"value": 1e308, "from_unit": "km", "to_unit": "nm"}, "out_of_range", "largest number"),
    ("convert_units", {"value": 1, "from_unit": "foo", "to_unit": "km"}, "unknown_unit", "unknown unit 'foo'"),
    ("convert_units", {"value": 1, "from_unit": "km", "to_unit": "kg"}, "incompatible_units",
     "cannot convert km to kg: km measures [length], kg measures [mass]"),
    ("convert_units", {"value": 1, "from_unit": "km", "to_unit": "km**"}, "unknown_unit", "cannot read the unit"),
    ("convert_units", {"value": 1, "from_unit": "km", "to_unit": "m)"}, "unknown_unit", "cannot read the unit"),
    ("convert_units", {"value": 1, "from_unit": "m**9**9**9", "to_unit": "m"}, "unknown_unit", "cannot read"),
    ("convert_units", {"value": 1, "from_unit": "9⁹⁹⁹⁹⁹⁹⁹⁹ m", "to_unit": "m"}, "unknown_unit", "cannot read"),
    ("convert_units", {"value": 1, "from_unit": "", "to_unit": "m"}, "invalid_arguments", "from_unit"),
])
async def test_builtins_explain_what_they_cannot_answer(name: str, arguments: object, code: str, words: str) -> None:
    registry = Registry()
    register_builtins(registry)
    started = time.perf_counter()
    outcome = await registry.invoke(name, json.dumps(arguments))
    assert (outcome.ok, outcome.error_code) == (False, code) and words in outcome.error_message, outcome
    assert time.perf_counter() - started < 0.5  # refused before any long computation


async def test_units_with_powers_still_convert() -> None:
    registry = Registry()
    register_builtins(registry)
    outcome = await registry.invoke("convert_units", json.dumps({"value": 1, "from_unit": "kg*m**2/s^2",
                                                                 "to_unit": "J"}))
    assert outcome.ok and json.loads(outcome.content_json) == {"value": pytest.approx(1.0), "unit": "joule"}
