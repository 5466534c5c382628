"""Rows to CSV and XLSX.

CSV is UTF-8 with a byte order mark, so that spreadsheet programs read accented text correctly. Text
cells that a spreadsheet would run as a formula (starting with = + - @) are written with a leading ``'``
in CSV (OWASP's advice) and as text cells in XLSX. XLSX is written by openpyxl in write-only mode: rows
stream into the file, so 100k rows take tens of MB less than a workbook held in memory.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Font

from moteur.files.markdown import Table

XLSX_MAX_ROWS = 1_048_575  # the format's limit, less the header row
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_SHEET_NAME_UNSAFE = re.compile(r"[\[\]:*?/\\]")


def columns_of(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every key of the rows, in the order they first appear."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(str(key), None)
    return list(seen)


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, ensure_ascii=False)


def render_csv(table: Table) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(table.columns)
    for row in table.rows:
        writer.writerow([_csv_cell(_scalar(row.get(c))) for c in table.columns])
    return out.getvalue().encode("utf-8-sig")


def _csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def render_xlsx(tables: Sequence[Table], sheet_names: Sequence[str] = ()) -> bytes:
    workbook = Workbook(write_only=True)
    bold = Font(bold=True)
    for index, table in enumerate(tables):
        name = sheet_names[index] if index < len(sheet_names) else f"Table {index + 1}"
        sheet = workbook.create_sheet(_SHEET_NAME_UNSAFE.sub(" ", name)[:31] or f"Table {index + 1}")
        header = []
        for column in table.columns:
            cell = WriteOnlyCell(sheet, value=_text(column))
            cell.font = bold
            header.append(cell)
        sheet.append(header)
        for row in table.rows:
            sheet.append([_xlsx_cell(sheet, _scalar(row.get(c))) for c in table.columns])
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def _text(value: str) -> str:
    return ILLEGAL_CHARACTERS_RE.sub("", value)


def _xlsx_cell(sheet: Any, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    value = _text(value)
    if value.startswith("="):  # openpyxl would store it as a formula
        cell = WriteOnlyCell(sheet, value=value)
        cell.data_type = "s"
        return cell
    return value
