"""Markdown to DOCX with python-docx: headings, paragraphs with bold, italic and code, bullet and numbered
lists (nested), quotes, code blocks and tables whose header row repeats on each page.

python-docx writes real Word styles (Heading 1, List Bullet…), so the document stays editable and a
company's Word template restyles it; converting through HTML would lose that.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from docx import Document
from docx.document import Document as DocxDocument
from docx.enum.text import WD_BREAK
from docx.oxml import OxmlElement
from docx.oxml.ns import qn
from docx.shared import Pt
from docx.table import Table as DocxTable
from docx.text.paragraph import Paragraph
from markdown_it.token import Token

from moteur.files import markdown

MONOSPACE = "DejaVu Sans Mono"
CORE_PROPERTY_CHARS = 255  # Office's limit for a document property such as the title


def render_docx(text: str, title: str = "") -> bytes:
    document = Document()
    document.core_properties.title = title[:CORE_PROPERTY_CHARS]  # metadata only; longer fails the render
    _Writer(document).write(markdown.parse(text))
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


class _Writer:
    def __init__(self, document: DocxDocument) -> None:
        self.document = document
        self.lists: list[bool] = []  # the open lists, innermost last: True when numbered
        self.quotes = 0
        self.table: list[list[Token]] | None = None  # rows of cells (their inline tokens) being read

    def write(self, tokens: Sequence[Token]) -> None:
        index = 0
        while index < len(tokens):
            token = tokens[index]
            kind = token.type
            if kind == "heading_open":
                heading = self.document.add_heading("", level=min(int(token.tag[1]), 9))
                _inline(heading, tokens[index + 1])
                index += 2
            elif kind == "paragraph_open" and self.table is None:
                _inline(self._paragraph(), tokens[index + 1])
                index += 2
            elif kind in ("bullet_list_open", "ordered_list_open"):
                self.lists.append(kind == "ordered_list_open")
            elif kind in ("bullet_list_close", "ordered_list_close"):
                self.lists.pop()
            elif kind == "blockquote_open":
                self.quotes += 1
            elif kind == "blockquote_close":
                self.quotes -= 1
            elif kind in ("fence", "code_block"):
                self._code(token.content)
            elif kind == "hr":
                self.document.add_paragraph()
            elif kind == "table_open":
                self.table = []
            elif kind == "tr_open" and self.table is not None:
                self.table.append([])
            elif kind == "inline" and self.table is not None:
                self.table[-1].append(token)
            elif kind == "table_close" and self.table is not None:
                self._table(self.table)
                self.table = None
            index += 1

    def _paragraph(self) -> Paragraph:
        style = None
        if self.lists:
            depth = min(len(self.lists), 3)
            style = ("List Number" if self.lists[-1] else "List Bullet") + (f" {depth}" if depth > 1 else "")
        elif self.quotes:
            style = "Quote"
        return self.document.add_paragraph(style=style)

    def _code(self, text: str) -> None:
        paragraph = self.document.add_paragraph(style="No Spacing")
        lines = text.rstrip("\n").split("\n")
        for number, line in enumerate(lines, 1):
            run = paragraph.add_run(line)
            run.font.name, run.font.size = MONOSPACE, Pt(9)
            if number < len(lines):
                run.add_break(WD_BREAK.LINE)

    def _table(self, rows: list[list[Token]]) -> None:
        width = max((len(r) for r in rows), default=0)
        if not rows or not width:
            return
        table: DocxTable = self.document.add_table(rows=len(rows), cols=width)
        table.style = "Table Grid"
        _repeat_header(table)
        # Row by row: table.cell(r, c) walks the whole table each time (quadratic on long tables).
        for number, (row, cells) in enumerate(zip(table.rows, rows, strict=True)):
            for cell, inline in zip(row.cells, cells, strict=False):
                _inline(cell.paragraphs[0], inline, bold=number == 0)


def _inline(paragraph: Paragraph, inline: Token, bold: bool = False) -> None:
    strong = emphasis = 0
    for child in inline.children or ():
        kind = child.type
        if kind == "strong_open":
            strong += 1
        elif kind == "strong_close":
            strong -= 1
        elif kind == "em_open":
            emphasis += 1
        elif kind == "em_close":
            emphasis -= 1
        elif kind == "softbreak":
            paragraph.add_run(" ")
        elif kind == "hardbreak":
            paragraph.add_run().add_break(WD_BREAK.LINE)
        elif kind in ("text", "code_inline", "image"):
            run = paragraph.add_run(child.content)
            run.bold = bold or strong > 0 or None
            run.italic = emphasis > 0 or None
            if kind == "code_inline":
                run.font.name = MONOSPACE


def _repeat_header(table: DocxTable) -> None:
    """Word repeats a row marked tblHeader at the top of each page the table spans."""
    properties = table.rows[0]._tr.get_or_add_trPr()
    header = OxmlElement("w:tblHeader")
    header.set(qn("w:val"), "true")
    properties.append(header)
