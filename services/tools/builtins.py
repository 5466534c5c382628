"""The built-in tools: a calculator, dates and time zones, unit conversion, HTTP GET (see http_get.py),
knowledge search (see knowledge.py).

The calculator evaluates with simpleeval (an AST walker with an allow-list of operators and functions,
never ``eval``) and caps the size of numbers so ``9**9**9`` cannot take the service down; units go through
pint's registry.
"""

from __future__ import annotations

import datetime
import math
import zoneinfo
from collections.abc import Mapping
from typing import Any

import pint
import simpleeval

from moteur.runtime.settings import ToolsSettings
from moteur.tools.generate_file import GenerateFile
from moteur.tools.http_get import HttpGet
from moteur.tools.knowledge import KnowledgeSearch
from moteur.tools.registry import Registry, ToolError, ToolSpec
from moteur.v1 import files_pb2_grpc, memory_pb2_grpc

_NUMBER = {"type": "number"}
_units = pint.UnitRegistry()

_FUNCTIONS = {name: getattr(math, name) for name in (
    "sqrt", "sin", "cos", "tan", "asin", "acos", "atan", "log", "log10", "log2", "exp", "floor", "ceil", "fabs",
)} | {"abs": abs, "round": round, "min": min, "max": max}


async def calculator(arguments: Mapping[str, Any]) -> dict[str, Any]:
    evaluator = simpleeval.SimpleEval(functions=_FUNCTIONS, names={"pi": math.pi, "e": math.e})
    try:
        value = evaluator.eval(arguments["expression"])
    except ZeroDivisionError:
        raise ToolError("math_error", "division by zero") from None
    except (simpleeval.InvalidExpression, SyntaxError, TypeError, ValueError, OverflowError) as exc:
        raise ToolError("invalid_expression", f"cannot evaluate: {exc}") from None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ToolError("invalid_expression", "the expression must give a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("math_error", "the result is not a finite number")
    return {"result": value}


async def datetime_now(arguments: Mapping[str, Any]) -> dict[str, Any]:
    zone = arguments.get("timezone", "UTC")
    try:
        tz = zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ToolError("unknown_timezone", f"unknown time zone {zone!r}; use an IANA name like Europe/Paris") from None
    now = datetime.datetime.now(tz)
    return {"iso": now.isoformat(timespec="seconds"), "timezone": zone, "weekday": now.strftime("%A"),
            "utc_offset": now.strftime("%z")}


async def convert_units(arguments: Mapping[str, Any]) -> dict[str, Any]:
    try:
        quantity = _units.Quantity(arguments["value"], arguments["from_unit"]).to(arguments["to_unit"])
    except pint.errors.UndefinedUnitError as exc:
        raise ToolError("unknown_unit", f"unknown unit: {exc}") from None
    except pint.errors.DimensionalityError as exc:
        raise ToolError("incompatible_units", str(exc)) from None
    return {"value": float(quantity.magnitude), "unit": str(quantity.units)}


def register_builtins(registry: Registry, settings: ToolsSettings | None = None,
                      memory: memory_pb2_grpc.MemoryStub | None = None,
                      files: files_pb2_grpc.FilesStub | None = None) -> None:
    """Every built-in; ``knowledge_search`` only with a memory service to search, ``generate_file`` only
    with a files service to render."""
    settings = settings or ToolsSettings()
    if files is not None:
        generate = GenerateFile(files)
        registry.register(generate.spec(), generate)
    fetch = HttpGet(settings.http_allowlist, settings.http_trusted_hosts)
    registry.register(fetch.spec(), fetch)
    if memory is not None:
        knowledge = KnowledgeSearch(memory)
        registry.register(knowledge.spec(), knowledge)
    registry.register(ToolSpec(
        "calculator", "Evaluate an arithmetic expression (+ - * / ** %, parentheses, sqrt, log, sin, pi…).",
        {"type": "object", "properties": {"expression": {"type": "string", "minLength": 1, "maxLength": 500}},
         "required": ["expression"], "additionalProperties": False},
        {"type": "object", "properties": {"result": _NUMBER}, "required": ["result"]},
        timeout_ms=500,
    ), calculator)
    registry.register(ToolSpec(
        "datetime_now", "The current date and time in a time zone (IANA name, default UTC).",
        {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 64}},
         "additionalProperties": False},
        {"type": "object", "properties": {"iso": {"type": "string"}, "timezone": {"type": "string"},
                                          "weekday": {"type": "string"}, "utc_offset": {"type": "string"}},
         "required": ["iso", "timezone"]},
        timeout_ms=500,
    ), datetime_now)
    registry.register(ToolSpec(
        "convert_units", "Convert a quantity between units (km to mi, °C to °F, kg to lb, …).",
        {"type": "object", "properties": {"value": _NUMBER, "from_unit": {"type": "string", "maxLength": 64},
                                          "to_unit": {"type": "string", "maxLength": 64}},
         "required": ["value", "from_unit", "to_unit"], "additionalProperties": False},
        {"type": "object", "properties": {"value": _NUMBER, "unit": {"type": "string"}}, "required": ["value", "unit"]},
        timeout_ms=500,
    ), convert_units)
