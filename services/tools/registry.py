"""The tool registry and the call protocol: JSON Schema in, JSON Schema out, within limits.

A tool is a spec (name, description, input and output JSON Schemas, timeout, side effects, concurrency
and output caps) and an async function from validated arguments to a JSON value. :meth:`Registry.invoke`
turns every way a call can go wrong into a result the model sees — ``invalid_arguments``, ``timeout``,
``busy``, ``failed``, ``invalid_output`` — and marks oversized output as truncated; only protocol
failures (an unknown tool, a malformed call) are gRPC errors, raised by the servicer.

Built-in tools are everyone's; a tool registered for a tenant (an MCP server's) is that tenant's only.
A tool that needs to know who is calling (``knowledge_search``) reads :func:`current_caller`, set for
the duration of each call, so tools that do not care keep their one-argument signature.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import structlog

from moteur.runtime import jsontext
from moteur.tools.metrics import TOOL_CALLS, TOOL_LATENCY

log = structlog.get_logger("moteur.tools")

JSON = Any
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
Function = Callable[[Mapping[str, JSON]], Awaitable[JSON]]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    timeout_ms: int = 2_000
    side_effects: bool = False
    max_concurrency: int = 16
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
    slots: asyncio.Semaphore = field(init=False)
    # Checked and compiled once: jsonschema.validate() re-checks the schema on every call (~1 ms).
    arguments: jsonschema.Draft202012Validator = field(init=False)
    output: jsonschema.Draft202012Validator = field(init=False)

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.spec.max_concurrency)
        jsonschema.Draft202012Validator.check_schema(self.spec.input_schema)
        jsonschema.Draft202012Validator.check_schema(self.spec.output_schema)
        self.arguments = jsonschema.Draft202012Validator(self.spec.input_schema)
        self.output = jsonschema.Draft202012Validator(self.spec.output_schema)


_EVERYONE = ""  # the tenant key of built-in tools


class Registry:
    """Tools by (tenant, name): built-ins under no tenant, each tenant's own (MCP) tools under it."""

    def __init__(self) -> None:
        self._tools: dict[tuple[str, str], _Registered] = {}

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

    async def invoke(self, name: str, arguments_json: str, caller: Caller | None = None) -> ToolOutcome:
        tool = self._find(name, caller.tenant if caller else _EVERYONE)
        if tool is None:  # the servicer checked the name; the tool went away since (an MCP server stopped)
            return ToolOutcome(False, error_code="unavailable", error_message=f"{name} is no longer available")
        started = time.perf_counter()
        token = _caller.set(caller)
        try:
            outcome = await self._run(tool, arguments_json)
        finally:
            _caller.reset(token)
        elapsed = time.perf_counter() - started
        outcome = dataclasses.replace(outcome, duration_ms=round(elapsed * 1000))
        TOOL_CALLS.labels(name, "ok" if outcome.ok else outcome.error_code).inc()
        TOOL_LATENCY.labels(name).observe(elapsed)
        if not outcome.ok:
            log.info("tool.failed", tool=name, code=outcome.error_code, error=outcome.error_message[:200])
        return outcome

    async def _run(self, tool: _Registered, arguments_json: str) -> ToolOutcome:
        spec = tool.spec
        try:
            arguments = jsontext.loads(arguments_json or "{}")
            _check(tool.arguments, arguments)
        except (ValueError, jsonschema.ValidationError) as exc:
            return ToolOutcome(False, error_code="invalid_arguments", error_message=_explain(exc))
        if tool.slots.locked():
            return ToolOutcome(False, error_code="busy",
                               error_message=f"{spec.name} is running {spec.max_concurrency} calls; try again")
        async with tool.slots:
            try:
                async with asyncio.timeout(spec.timeout_ms / 1000):
                    result = await tool.function(arguments)
            except TimeoutError:
                return ToolOutcome(False, error_code="timeout",
                                   error_message=f"{spec.name} did not finish within {spec.timeout_ms} ms")
            except ToolError as exc:
                return ToolOutcome(False, error_code=exc.code, error_message=exc.message)
            except Exception as exc:  # a tool's bug is the model's failed call, not the service's crash
                log.exception("tool.crashed", tool=spec.name)
                return ToolOutcome(False, error_code="failed",
                                   error_message=f"{spec.name} failed: {type(exc).__name__}")
        try:
            _check(tool.output, result)
        except jsonschema.ValidationError as exc:
            return ToolOutcome(False, error_code="invalid_output", error_message=_explain(exc))
        content = json.dumps(result, ensure_ascii=False)
        if len(content.encode()) > spec.max_output_bytes:
            # Cut to the cap and say so: the model sees the start of the result and knows it is partial.
            cut = content.encode()[: spec.max_output_bytes].decode(errors="ignore")
            return ToolOutcome(True, content_json=json.dumps({"truncated_text": cut}), truncated=True)
        return ToolOutcome(True, content_json=content)


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
