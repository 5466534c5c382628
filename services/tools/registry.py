"""The tool registry and the call protocol: JSON Schema in, JSON Schema out, within limits.

A tool is a spec (name, description, input and output JSON Schemas, timeout, side effects, concurrency
and output caps) and an async function from validated arguments to a JSON value. :meth:`Registry.invoke`
turns every way a call can go wrong into a result the model sees — ``invalid_arguments``, ``timeout``,
``busy`` (the tool's limit), ``tenant_busy`` (the tenant's), ``deadline_exceeded``, ``failed``,
``invalid_output`` (including a result JSON cannot carry: infinity, NaN, a huge integer) — and marks
oversized output as truncated; only protocol failures (an unknown tool, a malformed call) are gRPC errors,
raised by the servicer. Limits are per tenant, so that one tenant's slow calls never make another's busy.

Built-in tools are everyone's; a tool registered for a tenant (an MCP server's) is that tenant's only.
A tool that needs to know who is calling (``knowledge_search``) reads :func:`current_caller`, set for
the duration of each call, so tools that do not care keep their one-argument signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import structlog

from moteur.runtime import jsontext
from moteur.runtime.context import time_remaining
from moteur.tools.metrics import (
    TOOL_CALLS,
    TOOL_CALLS_ABANDONED,
    TOOL_CALLS_IN_FLIGHT,
    TOOL_CALLS_REFUSED,
    TOOL_LATENCY,
)
from moteur.tools.slots import Slots

log = structlog.get_logger("moteur.tools")

JSON = Any
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
# A call cancelled this close to its caller's deadline was cancelled by it (gRPC ends the handler then).
DEADLINE_SLACK_SECONDS = 0.05
Function = Callable[[Mapping[str, JSON]], Awaitable[JSON]]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    timeout_ms: int = 2_000
    side_effects: bool = False
    max_concurrency: int = 16  # calls in flight per tenant: one tenant filling a tool's slots fills its own
    max_output_bytes: int = 64_000
    source: str = "builtin"  # "builtin" or "mcp:<server>"
    tiers: tuple[str, ...] = ()  # tiers that may use it; empty: every tier

    def allows_tier(self, tier: str) -> bool:
        return not self.tiers or tier in self.tiers


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a call is for: the tenant and tier from the mesh identity, the user it acts for."""

    tenant: str
    user: str = ""
    tier: str = ""
    session_id: str = ""


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("moteur_tool_caller", default=None)


def current_caller() -> Caller:
    """The caller of the tool call in progress (for tools scoped to a tenant or a user)."""
    caller = _caller.get()
    if caller is None:
        raise ToolError("no_caller", "this tool needs to know who is calling")
    return caller


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What a call produced, as the model will see it (common.proto ToolResult)."""

    ok: bool
    content_json: str = ""
    error_code: str = ""
    error_message: str = ""
    duration_ms: int = 0
    truncated: bool = False


@dataclass(slots=True)
class _Registered:
    spec: ToolSpec
    function: Function
    # Checked and compiled once: jsonschema.validate() re-checks the schema on every call (~1 ms).
    arguments: jsonschema.Draft202012Validator = field(init=False)
    output: jsonschema.Draft202012Validator = field(init=False)

    def __post_init__(self) -> None:
        jsonschema.Draft202012Validator.check_schema(self.spec.input_schema)
        jsonschema.Draft202012Validator.check_schema(self.spec.output_schema)
        self.arguments = jsonschema.Draft202012Validator(self.spec.input_schema)
        self.output = jsonschema.Draft202012Validator(self.spec.output_schema)


_EVERYONE = ""  # the tenant key of built-in tools


class Registry:
    """Tools by (tenant, name): built-ins under no tenant, each tenant's own (MCP) tools under it."""

    def __init__(self) -> None:
        self._tools: dict[tuple[str, str], _Registered] = {}
        self._tenant_slots = Slots()  # by tenant: its calls in flight, every tool together
        self._tool_slots = Slots()  # by (tenant, tool): a tenant's calls of one tool

    def register(self, spec: ToolSpec, function: Function, tenant: str = _EVERYONE) -> None:
        """Raises ValueError for a name taken (by a built-in or the tenant's own) or an invalid schema."""
        if (tenant, spec.name) in self._tools or (_EVERYONE, spec.name) in self._tools:
            raise ValueError(f"tool {spec.name!r} is registered twice")
        self._tools[tenant, spec.name] = _Registered(spec, function)

    def unregister(self, name: str, tenant: str = _EVERYONE) -> None:
        self._tools.pop((tenant, name), None)

    def specs(self, tenant: str = _EVERYONE) -> list[ToolSpec]:
        """The built-ins, and ``tenant``'s own tools when one is named."""
        return [t.spec for (owner, _), t in self._tools.items() if owner in (_EVERYONE, tenant)]

    def get(self, name: str, tenant: str = _EVERYONE) -> ToolSpec | None:
        tool = self._find(name, tenant)
        return tool.spec if tool else None

    def _find(self, name: str, tenant: str) -> _Registered | None:
        return self._tools.get((_EVERYONE, name)) or self._tools.get((tenant, name))

    async def invoke(self, name: str, arguments_json: str, caller: Caller | None = None,
                     max_tenant_calls: int | None = None) -> ToolOutcome:
        """Runs one call and answers what the model will see; a tool's failure is an outcome, never raised.

        The caller's tenant has at most ``max_tenant_calls`` calls in flight (None: no limit) and at most the
        tool's ``max_concurrency`` of that tool; beyond either the call is refused at once (``tenant_busy``,
        ``busy``). It runs for the tool's timeout, or less when the inbound call's deadline comes first
        (then ``deadline_exceeded``: no one is left to read the result). A cancelled call (its caller gone)
        is stopped, counted as abandoned, and the cancellation goes on.
        """
        tenant = caller.tenant if caller else _EVERYONE
        tool = self._find(name, tenant)
        if tool is None:  # the servicer checked the name; the tool went away since (an MCP server stopped)
            return ToolOutcome(False, error_code="unavailable", error_message=f"{name} is no longer available")
        started = time.perf_counter()
        token = _caller.set(caller)
        try:
            outcome = await self._run(tool, arguments_json, tenant, max_tenant_calls)
        except _Stopped as stopped:
            stopped.record(name, tenant, started)
            outcome = ToolOutcome(False, error_code=stopped.code, error_message=stopped.message)
        except asyncio.CancelledError:
            remaining = time_remaining()
            reason = "deadline" if remaining is not None and remaining <= DEADLINE_SLACK_SECONDS else "cancelled"
            _Stopped("abandoned", reason, "", "").record(name, tenant, started)
            raise
        else:
            if not outcome.ok:
                # the code only: a message may quote the caller's arguments (user text)
                log.info("tool.failed", tool=name, code=outcome.error_code)
        finally:
            _caller.reset(token)
        elapsed = time.perf_counter() - started
        outcome = dataclasses.replace(outcome, duration_ms=round(elapsed * 1000))
        TOOL_CALLS.labels(name, "ok" if outcome.ok else outcome.error_code).inc()
        TOOL_LATENCY.labels(name).observe(elapsed)
        return outcome

    async def _run(self, tool: _Registered, arguments_json: str, tenant: str,
                   max_tenant_calls: int | None) -> ToolOutcome:
        spec = tool.spec
        try:
            arguments = jsontext.loads(arguments_json or "{}")
            _check(tool.arguments, arguments)
        except (ValueError, jsonschema.ValidationError) as exc:
            return ToolOutcome(False, error_code="invalid_arguments", error_message=_explain(exc))
        seconds, deadline_first = _time_allowed(spec)
        with self._admitted(spec, tenant, max_tenant_calls):
            try:
                result = await _call(tool, arguments, seconds, deadline_first)
            except ToolError as exc:
                return ToolOutcome(False, error_code=exc.code, error_message=exc.message)
        try:
            _check(tool.output, result)
        except jsonschema.ValidationError as exc:
            return ToolOutcome(False, error_code="invalid_output", error_message=_explain(exc))
        try:
            content = encode(result)
        except ValueError as exc:
            return ToolOutcome(False, error_code="invalid_output", error_message=f"{spec.name}'s result: {exc}")
        if len(content.encode()) > spec.max_output_bytes:
            # Cut to the cap and say so: the model sees the start of the result and knows it is partial.
            cut = content.encode()[: spec.max_output_bytes].decode(errors="ignore")
            return ToolOutcome(True, content_json=encode({"truncated_text": cut}), truncated=True)
        return ToolOutcome(True, content_json=content)

    @contextlib.contextmanager
    def _admitted(self, spec: ToolSpec, tenant: str, max_tenant_calls: int | None) -> Iterator[None]:
        """Holds a slot of the tenant's and one of its slots of the tool for the block; raises _Stopped
        (refused) when either is full."""
        if max_tenant_calls is not None and not self._tenant_slots.try_take(tenant, max_tenant_calls):
            raise _Stopped("refused", "tenant_limit", "tenant_busy",
                           f"this tenant already has {max_tenant_calls} tool calls running; try again when one "
                           "has finished", limit=max_tenant_calls)
        try:
            if not self._tool_slots.try_take((tenant, spec.name), spec.max_concurrency):
                raise _Stopped("refused", "tool_limit", "busy",
                               f"{spec.name} is running {spec.max_concurrency} calls; try again",
                               limit=spec.max_concurrency)
            TOOL_CALLS_IN_FLIGHT.inc()
            try:
                yield
            finally:
                TOOL_CALLS_IN_FLIGHT.dec()
                self._tool_slots.give_back((tenant, spec.name))
        finally:
            if max_tenant_calls is not None:
                self._tenant_slots.give_back(tenant)


def encode(value: JSON) -> str:
    """``value`` as strict JSON: the one place results are written. Raises ValueError saying why a value
    cannot be (infinity or NaN, which JSON has no way to write; an integer too long to convert; a value
    that is no JSON type)."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        if "float" in str(exc):  # "Out of range float values are not JSON compliant"
            raise ValueError("it holds infinity or NaN, which JSON cannot carry") from None
        if "integer" in str(exc):  # Python's cap on converting huge integers to text
            raise ValueError(f"it holds an integer of more than {sys.get_int_max_str_digits():,} digits, "
                             "too long to send as JSON") from None
        raise ValueError(f"it cannot be sent as JSON: {exc}") from None
    except (TypeError, RecursionError) as exc:
        raise ValueError(f"it cannot be sent as JSON: {exc}") from None


def _time_allowed(spec: ToolSpec) -> tuple[float, bool]:
    """Seconds the call may run: the tool's timeout, or what is left of the caller's deadline when that is
    less (then True). Raises _Stopped (refused) when the deadline has already passed."""
    timeout, remaining = spec.timeout_ms / 1000, time_remaining()
    if remaining is None or remaining >= timeout:
        return timeout, False
    if remaining <= 0:
        raise _Stopped("refused", "deadline", "deadline_exceeded",
                       "the caller's deadline had passed before the call could start")
    return remaining, True


async def _call(tool: _Registered, arguments: JSON, seconds: float, deadline_first: bool) -> JSON:
    """The tool's result; raises ToolError for its failures (its own, its timeout, a crash), _Stopped
    (abandoned) when the caller's deadline ends it first."""
    spec = tool.spec
    try:
        async with asyncio.timeout(seconds):
            return await tool.function(arguments)
    except TimeoutError:
        if deadline_first:
            raise _Stopped("abandoned", "deadline", "deadline_exceeded",
                           f"the caller's deadline passed after {round(seconds * 1000)} ms; {spec.name} was "
                           "stopped") from None
        raise ToolError("timeout", f"{spec.name} did not finish within {spec.timeout_ms} ms") from None
    except ToolError:
        raise
    except Exception as exc:  # a tool's bug is the model's failed call, not the service's crash
        log.exception("tool.crashed", tool=spec.name)
        raise ToolError("failed", f"{spec.name} failed: {type(exc).__name__}") from None


class _Stopped(Exception):
    """The service, not the tool, ended the call: ``refused`` before it ran (a limit, no time left) or
    ``abandoned`` while it ran (the caller's deadline). Counted by reason and logged — who and which tool,
    never the arguments."""

    def __init__(self, event: str, reason: str, code: str, message: str, **detail: int) -> None:
        super().__init__(message)
        self.event, self.reason, self.code, self.message, self.detail = event, reason, code, message, detail

    def record(self, tool: str, tenant: str, started: float) -> None:
        counter = TOOL_CALLS_REFUSED if self.event == "refused" else TOOL_CALLS_ABANDONED
        counter.labels(self.reason).inc()
        log.warning(f"tool.{self.event}", tool=tool, tenant=tenant, reason=self.reason,
                    after_ms=round((time.perf_counter() - started) * 1000), **self.detail)


class ToolError(Exception):
    """A tool's own, expected failure (e.g. "unknown unit"), shown to the model as is."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _check(validator: jsonschema.Draft202012Validator, value: JSON) -> None:
    """Raise the most relevant violation, as jsonschema.validate would."""
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    except RecursionError:
        raise jsonschema.ValidationError("nested too deeply to check") from None
    if error is not None:
        raise error


def _explain(exc: Exception) -> str:
    if isinstance(exc, jsonschema.ValidationError):
        where = "/".join(str(p) for p in exc.absolute_path) or "arguments"
        return f"{where}: {exc.message}"
    return f"arguments are not JSON: {exc}"
