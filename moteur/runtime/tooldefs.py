"""Tool definitions as every service checks them: names, descriptions and JSON Schemas.

The router checks the tools a prompt offers, the gateway the tools a caller declares, the tools service
its registry: one set of rules, so that a name or schema accepted in one place is never refused in another.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jsonschema

from moteur.runtime import jsontext
from moteur.runtime.errors import InvalidArgument

TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAX_TOOLS = 128
MAX_DESCRIPTION = 1024
MAX_SCHEMA_BYTES = 32_000
# No schema means "no arguments": an object with no properties.
EMPTY_OBJECT_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


def check_tool_name(field: str, name: str) -> str:
    if not TOOL_NAME.fullmatch(name):
        raise InvalidArgument(field, f"{name[:80]!r} is not a tool name: 1 to 64 letters, digits, '_' or '-'")
    return name


def check_description(field: str, text: str) -> str:
    if len(text) > MAX_DESCRIPTION:
        raise InvalidArgument(field, f"at most {MAX_DESCRIPTION:,} characters, got {len(text):,}")
    return text


def parse_schema(field: str, text: str) -> dict[str, Any]:
    """A JSON Schema object (Draft 2020-12) from its JSON text; empty text: no arguments."""
    if not text.strip():
        return dict(EMPTY_OBJECT_SCHEMA)
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise InvalidArgument(field, f"at most {MAX_SCHEMA_BYTES:,} bytes")
    try:
        _checked_schema(text)
    except _SchemaRefused as refused:
        raise InvalidArgument(field, str(refused)) from None
    # Parsed again rather than copied from the checked one: the caller may change its copy, and parsing a
    # schema's text is 3x faster than deep-copying the dict (5 against 15 µs, on every tool of every turn).
    return dict(jsontext.loads(text))


class _SchemaRefused(Exception):
    pass


@functools.lru_cache(maxsize=1024)
def _checked_schema(text: str) -> None:
    """Checking a schema costs ~1.5 ms, and a chat turn offers the same tools every time: each distinct
    text is checked once (refusals are not cached, and are rare)."""
    try:
        schema = jsontext.loads(text)
    except ValueError as exc:
        raise _SchemaRefused(f"is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise _SchemaRefused("must be a JSON object (a JSON Schema)")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise _SchemaRefused(f"is not a valid JSON Schema: {exc.message}") from None
    except RecursionError:
        raise _SchemaRefused("is nested too deeply") from None


def check_unique(field: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidArgument(field, f"tool {name!r} is declared twice")
        seen.add(name)
