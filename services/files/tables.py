"""The rows of a CSV or XLSX file: given as data, found as Markdown tables in the text, or, failing both,
asked of a model through the router as JSON that a schema constrains and jsonschema checks.

When none of them yields a table the file still comes out, holding the text one paragraph per row, and the
result's note says the answer had no table in it: the caller asked for a file and gets one, and a person
reading the note knows why it is not a table (a refusal would lose the answer).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import structlog

from moteur.files.markdown import Table, paragraphs, tables, unique_columns
from moteur.files.spreadsheets import columns_of
from moteur.runtime.errors import InvalidArgument, MoteurError

log = structlog.get_logger("moteur.files.tables")

MODEL_INPUT_CHARS = 8000  # of the text sent to the model: small models have small context windows
ROWS_SCHEMA: dict[str, object] = {
    "type": "object",
    "required": ["columns", "rows"],
    "properties": {
        "columns": {"type": "array", "maxItems": 50, "items": {"type": "string", "maxLength": 200}},
        "rows": {"type": "array", "maxItems": 10000, "items": {
            "type": "array", "maxItems": 50, "items": {"type": ["string", "number", "boolean", "null"]}}},
    },
}
_SYSTEM = ("Find the table in the user's text: items that share the same attributes (a list of products with "
           "prices, people with roles, dates with events). Answer with JSON: {\"columns\": [names], \"rows\": "
           "[[values in the columns' order], ...]}, using only values from the text. If the text holds no such "
           "data, answer {\"columns\": [], \"rows\": []}.")

AskModel = Callable[[str, str, dict[str, object]], Awaitable[str]]  # (system, text, schema) -> JSON text


@dataclass(frozen=True)
class Found:
    tables: list[Table]
    source: str  # data, markdown, model, text: where the rows came from (a metric label)
    note: str = ""


def rows_from_data(data: Mapping[str, Any]) -> Table | None:
    """``data.rows`` as a table: objects, or lists with ``data.columns``; None when there are none."""
    rows = data.get("rows")
    if rows is None:
        return None
    if not isinstance(rows, list):
        raise InvalidArgument("data.rows", "a list of objects (or of lists, with data.columns) is needed")
    if all(isinstance(r, Mapping) for r in rows):
        # Objects keep no key order through protobuf's Struct: data.columns chooses it, else names sorted.
        named = data.get("columns")
        columns = [str(c) for c in named] if isinstance(named, list) else sorted(columns_of(rows))
        return Table(columns, list(rows))
    if all(isinstance(r, list) for r in rows):
        names = data.get("columns")
        if not isinstance(names, list):
            raise InvalidArgument("data.columns", "rows given as lists need data.columns, the list of their names")
        columns = unique_columns([str(c) for c in names])
        return Table(columns, [dict(zip(columns, r, strict=False)) for r in rows])
    raise InvalidArgument("data.rows", "every row must be an object, or every row a list (with data.columns)")


async def find_rows(text: str, data: Mapping[str, Any], ask_model: AskModel | None) -> Found:
    """The tables of a CSV or XLSX file; ``ask_model`` None: no model is asked (the text becomes rows)."""
    given = rows_from_data(data)
    if given is not None:
        return Found([given], "data")
    in_text = tables(text)
    if in_text:
        return Found(in_text, "markdown")
    if not text.strip():
        raise InvalidArgument("markdown", "a table needs data.rows or a text to find rows in")
    reason = "no model was asked"
    if ask_model is not None:
        table, reason = await _from_model(ask_model, text)
        if table is not None:
            return Found([table], "model", "the rows were found in the text by a model; check them")
    lines = paragraphs(text)
    return Found([Table(["text"], [{"text": line} for line in lines])], "text",
                 f"the answer had no table in it ({reason}); the file holds its text, one paragraph per row")


async def _from_model(ask: AskModel, text: str) -> tuple[Table | None, str]:
    try:
        answer = json.loads(await ask(_SYSTEM, text[:MODEL_INPUT_CHARS], ROWS_SCHEMA))
        jsonschema.validate(answer, ROWS_SCHEMA)
    except MoteurError as exc:
        log.warning("files.table_model_failed", error=exc.message)
        return None, "no model could look for one"
    except (ValueError, jsonschema.ValidationError) as exc:
        log.info("files.table_model_unusable", error=str(exc)[:200])
        return None, "the model's rows were not valid"
    columns = unique_columns([str(c) for c in answer["columns"]])
    rows = [r for r in answer["rows"] if len(r) == len(columns)]
    if not columns or not rows:
        return None, "a model found none"
    return Table(columns, [dict(zip(columns, r, strict=True)) for r in rows]), ""
