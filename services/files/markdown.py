"""Markdown, the one document language of the service: CommonMark with tables (markdown-it-py).

Raw HTML in Markdown is not rendered (``html`` off): a model's answer or a user's data cannot inject markup
into an HTML or PDF file. Tables found in the text are what CSV and XLSX are made of when no rows are given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache

from markdown_it import MarkdownIt
from markdown_it.token import Token

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?")


@cache
def parser() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")


def to_html(text: str) -> str:
    return parser().render(text)


def parse(text: str) -> list[Token]:
    return parser().parse(text)


@dataclass
class Table:
    """Rows as objects keyed by the columns, in the columns' order."""

    columns: list[str]
    rows: list[dict[str, object]] = field(default_factory=list)


def plain_text(inline: Token) -> str:
    """The text of an inline token without its Markdown markup."""
    parts: list[str] = []
    for child in inline.children or ():
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return "".join(parts).strip()


def tables(text: str) -> list[Table]:
    """Every table of the text, in order; cells that are plain numbers become numbers."""
    found: list[Table] = []
    header: list[str] | None = None
    row: list[str] = []
    in_head = in_cell = False
    for token in parse(text):
        if token.type == "thead_open":
            in_head, header = True, None
        elif token.type == "thead_close":
            in_head = False
        elif token.type == "tr_open":
            row = []
        elif token.type in ("th_open", "td_open"):
            in_cell = True
            row.append("")
        elif token.type in ("th_close", "td_close"):
            in_cell = False
        elif token.type == "inline" and in_cell:
            row[-1] = plain_text(token)
        elif token.type == "tr_close":
            if in_head:
                header = unique_columns(row)
                found.append(Table(header))
            elif header is not None:
                cells = [_number(c) for c in row]
                found[-1].rows.append(dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=False)))
    return found


def unique_columns(names: list[str]) -> list[str]:
    """Column names as keys: blanks named by position, repeats numbered."""
    seen: dict[str, int] = {}
    columns: list[str] = []
    for index, name in enumerate(names, 1):
        name = name or f"column_{index}"
        seen[name] = seen.get(name, 0) + 1
        columns.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return columns


def paragraphs(text: str) -> list[str]:
    """The text's blocks as plain lines (for a table made of text that had no table)."""
    return [plain_text(t) for t in parse(text) if t.type == "inline" and plain_text(t)]


def cell(value: object) -> str:
    """A value written into a Markdown table cell: pipes escaped, one line."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _number(text: str) -> object:
    if _NUMBER.fullmatch(text):
        return float(text) if "." in text else int(text)
    return text
