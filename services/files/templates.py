"""Templates: Jinja2 in a sandbox, the built-in set, and each tenant's own, validated before they are stored.

A template writes Markdown, rendered into every document format (PDF, HTML, Markdown, DOCX), unless it
is for HTML and PDF only: then it writes HTML, autoescaped. Markdown output needs no escaping for safety
because raw HTML in Markdown is never rendered (see :mod:`moteur.files.markdown`); table cells go through
the ``cell`` filter so that a ``|`` in the data cannot break a table.

The sandbox refuses Python internals: attributes starting with ``_`` are refused when the template is
stored (with their line), and unreachable at render time; ``range`` is capped by Jinja, and ``*``/``**``
by :class:`_Sandbox` so one expression cannot allocate gigabytes (numbers included: at most a million bits).
What a template does with loops and recursion is bounded by the render worker it runs in (CPU, memory, time:
:mod:`moteur.files.pool`), not here.
"""

from __future__ import annotations

import datetime
import json
import re
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
from cachetools import LRUCache
from jinja2 import ChainableUndefined, TemplateError, TemplateSyntaxError, Undefined, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from moteur.files import markdown
from moteur.files.formats import DOCUMENT_FORMATS, HTML_FORMATS
from moteur.runtime.errors import InvalidArgument, ResourceExhausted

TEMPLATE_NAME = re.compile(r"[a-z0-9_-]{1,64}")
MAX_SOURCE_BYTES = 256 * 1024
_MAX_PRODUCT = 1_000_000  # the largest string, list or number a `*` or `**` may build


@dataclass(frozen=True)
class Template:
    name: str
    formats: frozenset[str]
    source: str
    description: str = ""
    built_in: bool = False
    data_schema: Mapping[str, Any] | None = None  # JSON Schema of ``data`` the template needs
    needs_text: bool = False  # the Markdown text is its body (a letter without one is an error)
    needs_rows: bool = False

    @property
    def writes_html(self) -> bool:
        return self.formats <= HTML_FORMATS


@dataclass(frozen=True)
class Context:
    """What a template sees."""

    title: str = ""
    text: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    columns: Sequence[str] = ()
    rows: Sequence[Mapping[str, Any]] = ()

    def variables(self) -> dict[str, Any]:
        return {"title": self.title, "markdown": self.text, "data": self.data, "columns": list(self.columns),
                "rows": list(self.rows), "today": datetime.date.today().isoformat(),
                "now": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


class _Sandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
            raise SecurityError("exponent too large")
        if operator == "**" and _int(left) and _int(right) and right > 0 and \
                left.bit_length() * right > _MAX_PRODUCT:
            # Jinja's ** groups left to right: 2**64**64**64 is ((2**64)**64)**64, every exponent small
            raise SecurityError(f"result of ** too large (over {_MAX_PRODUCT:,} bits)")
        if operator == "*":
            if _int(left) and _int(right) and left.bit_length() + right.bit_length() > _MAX_PRODUCT:
                raise SecurityError(f"result of * too large (over {_MAX_PRODUCT:,} bits)")
            for sequence, count in ((left, right), (right, left)):
                if isinstance(sequence, str | list | tuple) and isinstance(count, int) and \
                        len(sequence) * count > _MAX_PRODUCT:
                    raise SecurityError("result of * too large")
        return super().call_binop(context, operator, left, right)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _table(columns: Iterable[str], rows: Iterable[object], keys: Iterable[str] | None = None) -> str:
    """A Markdown table of ``rows`` with ``columns`` as its header (``keys``: the fields, when they differ)."""
    headers = list(columns)
    fields = list(keys) if keys is not None else headers
    lines = ["| " + " | ".join(markdown.cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        get = row.get if isinstance(row, Mapping) else (lambda _k, _d=None: "")
        lines.append("| " + " | ".join(markdown.cell(get(k, "")) for k in fields) + " |")
    return "\n".join(lines)


def _lines(value: Any) -> str:
    """Several lines kept apart in Markdown (an address)."""
    text = "\n".join(value) if isinstance(value, list | tuple) else str(value or "")
    return "  \n".join(line.strip() for line in text.splitlines())


@cache
def _environment(html: bool, strict: bool) -> _Sandbox:
    # Rendering: a missing field is empty (optional fields read as in `{% if data.sender %}`), and using it
    # further (`data.sender.name`) is an error naming it. Validation: every chain is empty, as sample data
    # cannot hold every field a tenant's template expects.
    env = _Sandbox(autoescape=html, undefined=Undefined if strict else ChainableUndefined,
                   trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(cell=markdown.cell, lines=_lines,
                       markdown=lambda text: Markup(markdown.to_html(str(text or ""))))
    env.globals.update(table=_table)
    return env


def _builtin_source(name: str) -> str:
    return resources.files("moteur.files").joinpath("templates", name).read_text(encoding="utf-8")


def theme_css() -> str:
    return _builtin_source("theme.css")


def page_html(body: str, title: str, template: str, lang: str = "fr") -> str:
    """A whole HTML document: the body a template made, the theme, the title."""
    page = _environment(True, True).from_string(_builtin_source("page.html.j2"))
    return page.render(body=Markup(body), title=title, template=template, lang=lang, theme=Markup(theme_css()))


_ALL_DOCUMENTS = frozenset(DOCUMENT_FORMATS)
_STRINGS = {"type": "array", "items": {"type": "string"}}
BUILT_INS = {t.name: t for t in (
    Template("report", _ALL_DOCUMENTS, _builtin_source("report.md.j2"),
             "A titled document: the Markdown text, then data.rows as a table if given.", True),
    Template("table", _ALL_DOCUMENTS | {"csv", "xlsx", "json"}, _builtin_source("table.md.j2"),
             "Rows as a table: data.rows, else the text's Markdown tables, else (CSV, XLSX) rows a model finds "
             "in the text.", True, needs_rows=True),
    Template("letter", _ALL_DOCUMENTS, _builtin_source("letter.md.j2"),
             "A letter: the Markdown text is its body; data.recipient, and optionally sender, date, subject, "
             "salutation, closing, signature.", True,
             {"type": "object", "required": ["recipient"],
              "properties": {k: {"type": ["string", "array"]} for k in
                             ("recipient", "sender", "date", "subject", "salutation", "closing", "signature")}},
             needs_text=True),
    Template("meeting_notes", _ALL_DOCUMENTS, _builtin_source("meeting_notes.md.j2"),
             "Meeting notes: data.attendees, and optionally date, decisions and actions ({owner, task, due}); "
             "the Markdown text is the discussion.", True,
             {"type": "object", "required": ["attendees"],
              "properties": {"attendees": {**_STRINGS, "minItems": 1}, "date": {"type": "string"},
                             "decisions": _STRINGS,
                             "actions": {"type": "array", "items": {
                                 "type": "object", "required": ["task"],
                                 "properties": {k: {"type": "string"} for k in ("owner", "task", "due")}}}}}),
    Template("transcript", _ALL_DOCUMENTS, _builtin_source("transcript.md.j2"),
             "A conversation transcript: data.messages, each {role, content} and optionally at.", True,
             {"type": "object", "required": ["messages"],
              "properties": {"messages": {"type": "array", "minItems": 1, "items": {
                  "type": "object", "required": ["role", "content"],
                  "properties": {"role": {"type": "string"}, "content": {"type": "string"},
                                 "at": {"type": "string"}}}}}}),
)}

# What a tenant template is rendered with when it is stored: every variable it may use has a value.
SAMPLE = Context(
    title="Exemple · Sample", text="# Titre\n\nUn paragraphe accentué : é à ç œ « ».\n\n- un\n- deux\n",
    data={"rows": [{"name": "Élodie", "value": 1}], "messages": [{"role": "user", "content": "Bonjour"}]},
    columns=["name", "value"], rows=[{"name": "Élodie", "value": 1}],
)


class TemplateRenderer:
    """Compiles templates once (by source) and renders them with a cap on the output's size."""

    def __init__(self) -> None:
        self._compiled: LRUCache[tuple[str, bool, bool], Any] = LRUCache(maxsize=256)

    def compile(self, source: str, html: bool, strict: bool = True) -> Any:
        key = (source, html, strict)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = _environment(html, strict).from_string(source)
        return compiled

    def render(self, template: Template, context: Context, max_chars: int) -> str:
        """The template's Markdown (or HTML); data it cannot use is INVALID_ARGUMENT with the line."""
        if template.data_schema is not None:
            _check_data(template, template.data_schema, context.data)
        if template.needs_text and not context.text.strip():
            raise InvalidArgument("markdown", f"template {template.name!r} needs the text (its body) in markdown")
        compiled = self.compile(template.source, template.writes_html)
        return _bounded(template.name, compiled.generate(**context.variables()), max_chars)


def validate(source: str, formats: frozenset[str], renderer: TemplateRenderer, max_chars: int) -> None:
    """Refuse a tenant template that does not parse, reaches for Python internals, or fails on sample data."""
    html = formats <= HTML_FORMATS
    env = _environment(html, False)
    try:
        tree = env.parse(source)
    except TemplateSyntaxError as exc:
        raise InvalidArgument("source", f"line {exc.lineno}: {exc.message}") from exc
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        name = _reached_name(node)
        if name is not None and name.startswith("_"):
            raise InvalidArgument("source", f"line {node.lineno}: {name!r} is not allowed: templates may not "
                                            "reach Python internals (names starting with '_')")
    try:
        _bounded("sample", renderer.compile(source, html, strict=False).generate(**SAMPLE.variables()), max_chars)
    except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError) as exc:
        line = _template_line(exc)
        where = f"line {line}: " if line else ""
        raise InvalidArgument("source", f"{where}fails on sample data: {exc}") from exc


def _reached_name(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        return node.arg.value
    if isinstance(node, nodes.Filter) and node.name == "attr" and node.args and isinstance(node.args[0], nodes.Const):
        return str(node.args[0].value)
    return None


def _bounded(name: str, chunks: Iterable[str], max_chars: int) -> str:
    out: list[str] = []
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > max_chars:
            raise ResourceExhausted(f"template {name!r} wrote more than {max_chars:,} characters "
                                    "(MOTEUR_FILES_MAX_BYTES)")
        out.append(chunk)
    return "".join(out)


def render_errors(name: str) -> Callable[[BaseException], InvalidArgument | None]:
    """Map an exception raised while rendering template ``name`` to a person-readable INVALID_ARGUMENT."""

    def mapped(exc: BaseException) -> InvalidArgument | None:
        if isinstance(exc, TemplateError | ArithmeticError | TypeError | ValueError | LookupError) and not isinstance(
            exc, InvalidArgument
        ):
            line = _template_line(exc)
            return InvalidArgument("data", f"template {name!r}{f' line {line}' if line else ''} cannot use the "
                                           f"data: {exc}")
        return None

    return mapped


def _template_line(exc: BaseException) -> int | None:
    if isinstance(exc, TemplateSyntaxError):
        return exc.lineno
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<template>"]
    return lines[-1] if lines else None


def _check_data(template: Template, schema: Mapping[str, Any], data: Mapping[str, Any]) -> None:
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if error is not None:
        path = ".".join(["data", *(str(p) for p in error.absolute_path)])
        raise InvalidArgument(path, f"{error.message} (template {template.name!r}: {template.description})")


def describe_schema(template: Template) -> str:
    return json.dumps(template.data_schema) if template.data_schema is not None else ""
