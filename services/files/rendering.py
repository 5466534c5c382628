"""The CPU-bound part of the files service: a template rendered and typeset into a file's bytes, and a tenant
template tried on sample data. Both run in render worker processes (:mod:`moteur.files.pool`), never in the
service process; :func:`render_file` and :func:`check_template` are the jobs a worker runs.

A worker keeps one :class:`TemplateRenderer` (its compile cache) for its life.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from moteur.files import markdown
from moteur.files.formats import Format
from moteur.files.pdf import render_pdf
from moteur.files.spreadsheets import render_csv, render_xlsx
from moteur.files.tables import Found
from moteur.files.templates import Context, Template, TemplateRenderer, page_html, render_errors, validate
from moteur.files.word import render_docx
from moteur.runtime.errors import InvalidArgument


@dataclass(frozen=True)
class RenderInput:
    format: Format
    template: str = ""
    text: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""
    title: str = ""


@dataclass(frozen=True)
class Oversize:
    """What a render job returns instead of bytes larger than the limit: the size, not the bytes."""

    size: int


def render_file(fmt: Format, template: Template, request: RenderInput, title: str, found: Found | None,
                max_bytes: int) -> bytes | Oversize:
    """A worker's render job: the file's bytes, or :class:`Oversize` when they pass ``max_bytes``."""
    try:
        content = produce(fmt, template, request, title, found, _renderer(), max_bytes)
    except RecursionError:
        raise _recursion("template", template.name) from None
    return Oversize(len(content)) if len(content) > max_bytes else content


def check_template(source: str, formats: frozenset[str], max_chars: int) -> None:
    """A worker's PutTemplate job: refuse a template that does not parse or fails on sample data."""
    try:
        validate(source, formats, _renderer(), max_chars)
    except RecursionError:
        raise _recursion("source", "") from None


def produce(fmt: Format, template: Template, request: RenderInput, title: str, found: Found | None,
            renderer: TemplateRenderer, max_bytes: int) -> bytes:
    """The file's bytes: blocking, CPU-bound work."""
    if fmt.name == "csv":
        assert found is not None
        return render_csv(found.tables[0])
    if fmt.name == "xlsx":
        assert found is not None
        return render_xlsx(found.tables)
    if fmt.name == "json":
        return _json_document(request, title)
    table = found.tables[0] if found else None
    context = Context(title=title, text=request.text, data=request.data,
                      columns=table.columns if table else (), rows=table.rows if table else ())
    try:
        body = renderer.render(template, context, max_chars=max_bytes)
    except Exception as exc:
        mapped = render_errors(template.name)(exc)
        if mapped is None:
            raise
        raise mapped from exc
    if fmt.name == "markdown":
        return body.encode()
    if fmt.name == "docx":
        return render_docx(body, title)
    page = page_html(body if template.writes_html else markdown.to_html(body), title, template.name)
    return page.encode() if fmt.name == "html" else render_pdf(page)


@cache
def _renderer() -> TemplateRenderer:
    return TemplateRenderer()


def _recursion(field_name: str, template: str) -> InvalidArgument:
    which = f"template {template!r}" if template else "the template"
    return InvalidArgument(field_name, f"{which} recurses too deeply (a macro that calls itself without end?); "
                                       "templates may not recurse past Python's stack limit")


def _json_document(request: RenderInput, title: str) -> bytes:
    document: dict[str, Any] = {"title": title} if title else {}
    if request.text:
        document["text"] = request.text
    if request.data:
        document["data"] = request.data
    if tables := markdown.tables(request.text):
        document["tables"] = [{"columns": t.columns, "rows": t.rows} for t in tables]
    return json.dumps(document, ensure_ascii=False, indent=2).encode()
