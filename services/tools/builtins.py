"""The built-in tools: a calculator, dates and time zones, unit conversion, HTTP GET (see http_get.py),
knowledge search (see knowledge.py).

The calculator evaluates with simpleeval (an AST walker with an allow-list of operators and functions,
never ``eval``) and refuses a power whose answer would be too long to send before computing it, so
``3999999**3999999`` cannot hold the event loop for minutes; units go through pint's registry, and a unit is
read only when its text is plainly a unit (pint evaluates numbers in a unit's text: ``9**9**9`` would hang).
Every answer a JSON value can carry: a finite number, an integer of at most :data:`MAX_DIGITS` digits.
"""

from __future__ import annotations

import ast
import datetime
import math
import re
import sys
import zoneinfo
from collections.abc import Iterable, Mapping
from typing import Any

import pint
import simpleeval

from moteur.tools.generate_file import GenerateFile
from moteur.tools.http_get import HttpGet
from moteur.tools.knowledge import KnowledgeSearch
from moteur.tools.registry import Registry, ToolError, ToolSpec
from moteur.tools.settings import ToolsSettings
from moteur.v1 import files_pb2_grpc, memory_pb2_grpc

_NUMBER = {"type": "number"}
_UNIT_TEXT = {"type": "string", "minLength": 1, "maxLength": 64}
_units: pint.UnitRegistry = pint.UnitRegistry()
# What a unit's text may be: names, ASCII digits, spaces and * / ^ ( ) . _ - ° %; an exponent is one digit
# (with decimals), at most a few of them: pint computes any numbers in the text, and 9**9**9 never ends.
_UNIT_SIGNS = frozenset("0123456789 */^()._°%-")  # with letters; not superscripts: pint reads ⁹ as **9
_POWER = re.compile(r"\*\*|\^")
_EXPONENT = re.compile(r"\s*[-+]?\d(\.\d{1,3})?(?!\s*(\d|\.|\*\*|\^))")
_MOST_POWERS = 3

_FUNCTIONS = {name: getattr(math, name) for name in (
    "sqrt", "sin", "cos", "tan", "asin", "acos", "atan", "log", "log10", "log2", "exp", "floor", "ceil", "fabs",
)} | {"abs": abs, "round": round, "min": min, "max": max}


# The longest integer an answer may hold: Python's own cap on writing an integer as text, hence as JSON.
MAX_DIGITS = sys.get_int_max_str_digits() or 4300


def _too_long(digits: float) -> ToolError:
    return ToolError("result_too_large", f"the result would have about {digits:,.0f} digits; at most "
                                         f"{MAX_DIGITS:,} fit in an answer")


def _power(base: Any, exponent: Any) -> Any:
    """``base ** exponent``, refused before it is computed when the answer would be longer than an answer
    may be (a float power overflows at once, an integer one would take minutes)."""
    if (isinstance(base, int) and isinstance(exponent, int) and 0 < exponent <= simpleeval.MAX_POWER
            and 1 < abs(base) <= simpleeval.MAX_POWER):  # beyond, simpleeval refuses it itself
        digits = exponent * math.log10(abs(base))
        if digits > MAX_DIGITS:
            raise _too_long(digits)
    return simpleeval.safe_power(base, exponent)


_OPERATORS = {**simpleeval.DEFAULT_OPERATORS, ast.Pow: _power}


async def calculator(arguments: Mapping[str, Any]) -> dict[str, Any]:
    evaluator = simpleeval.SimpleEval(operators=_OPERATORS, functions=_FUNCTIONS,
                                      names={"pi": math.pi, "e": math.e})
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
    if isinstance(value, int) and value.bit_length() > MAX_DIGITS * math.log2(10):
        raise _too_long(math.log10(abs(value)))
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


def _unit(text: str) -> pint.Unit:
    """The unit ``text`` names; ToolError ``unknown_unit`` saying what is wrong with it otherwise."""
    powers = list(_POWER.finditer(text))
    unreadable = ToolError("unknown_unit", f"cannot read the unit {text!r}: use a unit's name or symbol, like "
                                           "'km', 'mile', 'degC' or 'm/s**2'")
    if (not all(c.isalpha() or c in _UNIT_SIGNS for c in text) or len(powers) > _MOST_POWERS
            or not all(_EXPONENT.match(text, p.end()) for p in powers)):
        raise unreadable
    try:
        return _units.parse_units(text)
    except pint.errors.UndefinedUnitError as exc:
        raise ToolError("unknown_unit", f"unknown unit {', '.join(map(repr, _names(exc.unit_names)))}") from None
    except Exception:  # pint's parser fails in many ways on text that is no unit (AssertionError, TokenError…)
        raise unreadable from None


def _names(names: str | Iterable[str]) -> tuple[str, ...]:
    """An UndefinedUnitError's unit names: one str up to pint 0.24, a tuple since."""
    return (names,) if isinstance(names, str) else tuple(names)


async def convert_units(arguments: Mapping[str, Any]) -> dict[str, Any]:
    value, source, target = arguments["value"], arguments["from_unit"], arguments["to_unit"]
    from_unit, to_unit = _unit(source), _unit(target)
    try:
        quantity = _units.Quantity(value, from_unit).to(to_unit)
    except pint.errors.DimensionalityError:
        raise ToolError("incompatible_units",
                        f"cannot convert {source} to {target}: {source} measures {_dimension(from_unit)}, "
                        f"{target} measures {_dimension(to_unit)}") from None
    except pint.errors.OffsetUnitCalculusError as exc:
        raise ToolError("incompatible_units", f"cannot convert {source} to {target}: {exc}") from None
    magnitude = float(quantity.magnitude)
    if not math.isfinite(magnitude):
        raise ToolError("out_of_range", f"{value} {source} in {target} is beyond the largest number an answer "
                                        f"can hold (about {sys.float_info.max:.1e})")
    return {"value": magnitude, "unit": str(quantity.units)}


def _dimension(unit: pint.Unit) -> str:
    dimensionality = str(unit.dimensionality)
    return "nothing (a pure number)" if dimensionality == "dimensionless" else dimensionality


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
        {"type": "object", "properties": {"value": _NUMBER, "from_unit": _UNIT_TEXT, "to_unit": _UNIT_TEXT},
         "required": ["value", "from_unit", "to_unit"], "additionalProperties": False},
        {"type": "object", "properties": {"value": _NUMBER, "unit": {"type": "string"}}, "required": ["value", "unit"]},
        timeout_ms=500,
    ), convert_units)
