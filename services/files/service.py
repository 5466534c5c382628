"""The files service's domain: render a file from text and data through a template, store it, find it again,
stream it, delete it, and forget it when it expires.

Rendering is blocking, CPU-bound work (Jinja, WeasyPrint, openpyxl) that a tenant's template controls: every
render and every template check runs in a worker process of the render pool (:mod:`moteur.files.pool`),
under a CPU, memory and time budget (:mod:`moteur.files.budgets`), with workers shared fairly across tenants.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import re
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import structlog
from opentelemetry import trace

from moteur.files import markdown
from moteur.files.budgets import CHECK, RENDER, cpu_seconds, pool_limits, refusal
from moteur.files.formats import DOCUMENT_FORMATS, Format
from moteur.files.metrics import (
    FILES_EXPIRED,
    FILES_RENDER_SECONDS,
    FILES_RENDERED_BYTES,
    FILES_RENDERS,
    FILES_SIZE,
    FILES_TABLE_SOURCES,
    FILES_TEMPLATE_UPLOADS,
)
from moteur.files.pool import LimitExceeded, QueueFull, RenderPool
from moteur.files.rendering import Oversize, RenderInput, check_template, produce, render_file
from moteur.files.settings import FilesSettings
from moteur.files.spreadsheets import XLSX_MAX_ROWS
from moteur.files.storage import Storage
from moteur.files.store import FileRecord, FileStore, TemplateStore
from moteur.files.tables import AskModel, Found, find_rows, rows_from_data
from moteur.files.templates import BUILT_INS, MAX_SOURCE_BYTES, TEMPLATE_NAME, Template
from moteur.files.worker import Job
from moteur.runtime.errors import InvalidArgument, MoteurError, NotFound, QuotaViolation, ResourceExhausted
from moteur.runtime.ids import new_id

__all__ = ["CHUNK_BYTES", "FileService", "Owner", "RenderInput", "produce"]  # produce: for bench/files.py
log = structlog.get_logger("moteur.files")
_tracer = trace.get_tracer("moteur.files")
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Owner:
    """Whose file: the tenant always; the user when a user's key asks (it sees only its own files)."""

    tenant: str
    user: str = ""
    session: str = ""


class FileService:
    def __init__(self, files: FileStore, templates: TemplateStore, storage: Storage, settings: FilesSettings) -> None:
        self._files = files
        self._templates = templates
        self.storage = storage
        self._settings = settings
        self._pool = RenderPool(pool_limits(settings))

    async def start(self) -> None:
        """Start the render workers: the service serves once they are warm."""
        await self._pool.start()

    def close(self) -> None:
        self._pool.close()

    # -- rendering ---------------------------------------------------------------------------------
    async def render(self, owner: Owner, request: RenderInput, ask_model: AskModel | None = None) -> FileRecord:
        fmt = request.format
        started = time.perf_counter()
        with _tracer.start_as_current_span("files.render", attributes={"files.format": fmt.name}) as span:
            try:
                record = await self._render(owner, request, ask_model, span)
            except MoteurError as exc:
                FILES_RENDERS.labels(fmt.name, exc.code.name.lower()).inc()
                log.info("files.render_refused", format=fmt.name, template=request.template, code=exc.code.name,
                         error=exc.message)
                raise
            except BaseException:
                FILES_RENDERS.labels(fmt.name, "error").inc()
                raise
        elapsed = time.perf_counter() - started
        FILES_RENDERS.labels(fmt.name, "ok").inc()
        FILES_RENDER_SECONDS.labels(fmt.name).observe(elapsed)
        FILES_RENDERED_BYTES.labels(fmt.name).inc(record.size)
        FILES_SIZE.labels(fmt.name).observe(record.size)
        log.info("files.rendered", file_id=record.id, format=fmt.name, template=record.template, bytes=record.size,
                 ms=round(elapsed * 1000, 1), note=record.note or None)
        return record

    async def _render(self, owner: Owner, request: RenderInput, ask_model: AskModel | None,
                      span: trace.Span) -> FileRecord:
        fmt, settings = request.format, self._settings
        input_bytes = len(request.text.encode()) + (len(json.dumps(request.data)) if request.data else 0)
        if input_bytes > settings.files_max_input_bytes:
            raise InvalidArgument("markdown", f"text and data take {input_bytes:,} bytes; at most "
                                              f"{settings.files_max_input_bytes:,} (MOTEUR_FILES_MAX_INPUT_BYTES)")
        template = await self.template(owner.tenant, request.template or fmt.default_template, fmt)
        span.set_attribute("files.template", template.name)
        found = await self._rows(fmt, template, request, ask_model)
        title = request.title or _first_heading(request.text) or ""
        content = await self._in_worker(owner.tenant, RENDER, render_file, fmt, template, request, title, found,
                                        settings.files_max_bytes)
        if isinstance(content, Oversize):
            raise _too_large(owner.tenant, content.size, settings.files_max_bytes)
        now = datetime.datetime.now(datetime.UTC)
        file_id = new_id()
        record = FileRecord(
            id=file_id, tenant=owner.tenant, user=owner.user, session=owner.session,
            name=f"{_file_name(request.name or title or template.name)}.{fmt.extension}", format=fmt.name,
            mime_type=fmt.mime_type, size=len(content), sha256=hashlib.sha256(content).hexdigest(),
            template=template.name, note=found.note if found else "",
            storage_key=f"{quote(owner.tenant, safe='')}/{file_id}.{fmt.extension}", created_at=now,
            expires_at=now + datetime.timedelta(days=settings.files_retention_days),
        )
        await self.storage.put(record.storage_key, content)
        await self._files.insert(record)
        span.set_attribute("files.bytes", record.size)
        return record

    async def _rows(self, fmt: Format, template: Template, request: RenderInput,
                    ask_model: AskModel | None) -> Found | None:
        """The tables a file is made of: CSV and XLSX always; documents when the template shows rows."""
        if fmt.tabular:
            found = await find_rows(request.text, request.data, ask_model)
            FILES_TABLE_SOURCES.labels(found.source).inc()
            if fmt.name == "csv" and len(found.tables) > 1:
                note = f"the text has {len(found.tables)} tables; the CSV holds the first (XLSX keeps them all)"
                return Found(found.tables[:1], found.source, note)
            if fmt.name == "xlsx" and any(len(t.rows) > XLSX_MAX_ROWS for t in found.tables):
                raise _too_large_rows(XLSX_MAX_ROWS)
            return found
        if fmt.name == "json":
            return None
        given = rows_from_data(request.data)
        if given is not None:
            return Found([given], "data")
        in_text = markdown.tables(request.text) if template.needs_rows else []
        if in_text:
            return Found(in_text[:1], "markdown")
        if template.needs_rows:
            raise InvalidArgument("data.rows", f"template {template.name!r} needs rows: data.rows (a list of "
                                               "objects) or a Markdown table in the text")
        return None

    # -- templates ---------------------------------------------------------------------------------
    async def template(self, tenant: str, name: str, fmt: Format) -> Template:
        """The tenant's template of that name, else the built-in; it must render ``fmt``."""
        template = await self._templates.get(tenant, name) or BUILT_INS.get(name)
        if template is None:
            known = ", ".join(sorted({*BUILT_INS, *(t.name for t in await self._templates.of_tenant(tenant))}))
            raise NotFound(f"template {name!r} does not exist; known templates: {known}")
        if fmt.name not in template.formats:
            raise InvalidArgument("template", f"template {name!r} does not render {fmt.name}; it renders "
                                              f"{', '.join(sorted(template.formats))}")
        return template

    async def templates(self, tenant: str, fmt: Format | None) -> list[Template]:
        """Built-ins and the tenant's own; a tenant template replaces the built-in of its name."""
        merged = {**BUILT_INS, **{t.name: t for t in await self._templates.of_tenant(tenant)}}
        return [t for _, t in sorted(merged.items()) if fmt is None or fmt.name in t.formats]

    async def put_template(self, tenant: str, template: Template) -> Template:
        try:
            if not TEMPLATE_NAME.fullmatch(template.name):
                raise InvalidArgument("name", "1 to 64 characters among a-z, 0-9, '_' and '-'")
            if not template.formats:
                raise InvalidArgument("formats", "at least one of pdf, html, markdown, docx")
            if not_documents := sorted(template.formats - DOCUMENT_FORMATS):
                raise InvalidArgument("formats", f"templates render documents (pdf, html, markdown, docx); "
                                                 f"{', '.join(not_documents)} files are made from rows")
            if len(template.source.encode()) > MAX_SOURCE_BYTES:
                raise InvalidArgument("source", f"at most {MAX_SOURCE_BYTES:,} bytes")
            await self._in_worker(tenant, CHECK, check_template, template.source, template.formats,
                                  self._settings.files_max_bytes)
        except (InvalidArgument, ResourceExhausted):
            FILES_TEMPLATE_UPLOADS.labels("refused").inc()
            raise
        await self._templates.put(tenant, template)
        FILES_TEMPLATE_UPLOADS.labels("ok").inc()
        log.info("files.template_stored", tenant=tenant, template=template.name, formats=sorted(template.formats))
        return template

    async def _in_worker(self, tenant: str, kind: str, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` in a render worker, when the tenant's turn comes, under the budgets of ``kind``."""
        try:
            return await self._pool.run(tenant, Job(function, args, cpu_seconds(kind, self._settings), kind))
        except (LimitExceeded, QueueFull) as exc:
            raise refusal(exc, tenant, self._settings) from None

    # -- stored files ------------------------------------------------------------------------------
    async def find(self, owner: Owner, file_id: str) -> FileRecord:
        record = await self._files.get(owner.tenant, file_id, owner.user, _now())
        if record is None:
            raise NotFound(f"file {file_id!r} not found (or expired)")
        return record

    def content(self, record: FileRecord) -> AsyncIterator[bytes]:
        return self.storage.read(record.storage_key, CHUNK_BYTES)

    async def page(self, owner: Owner, limit: int, before: str) -> list[FileRecord]:
        return await self._files.page(owner.tenant, owner.user, owner.session, limit, before, _now())

    async def delete(self, owner: Owner, file_id: str) -> None:
        record = await self.find(owner, file_id)
        # Bytes first: a failure in between leaves metadata pointing at nothing, never bytes nobody can find.
        await self.storage.delete(record.storage_key)
        await self._files.remove(record.id)
        log.info("files.deleted", file_id=record.id)

    async def sweep(self, batch: int = 500) -> int:
        """Delete every expired file, bytes first; returns how many."""
        deleted = 0
        while expired := await self._files.expired(_now(), batch):
            for record in expired:
                await self.storage.delete(record.storage_key)
                await self._files.remove(record.id)
            deleted += len(expired)
            FILES_EXPIRED.inc(len(expired))
        if deleted:
            log.info("files.expired_deleted", files=deleted)
        return deleted

    async def sweep_forever(self, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # a store hiccup must not end retention for good
                log.warning("files.sweep_failed", exc_info=True)
            await sleep(self._settings.files_sweep_seconds)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _first_heading(text: str) -> str:
    tokens = markdown.parse(text) if text else []
    for index, token in enumerate(tokens[:-1]):
        if token.type == "heading_open":
            return markdown.plain_text(tokens[index + 1])
    return ""


def _file_name(text: str) -> str:
    """A slug of ``text`` ("Rapport trimestriel été" -> "rapport-trimestriel-ete"): safe in every shell,
    file system and URL, and still recognisable (accents folded, not dropped)."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "-", folded).strip("-")[:80].rstrip("-") or "file"


def _too_large(tenant: str, size: int, limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"the rendered file takes {size:,} bytes, over the limit of {limit:,} bytes (MOTEUR_FILES_MAX_BYTES)",
        violations=[QuotaViolation(f"tenant:{tenant}", f"files_max_bytes limit of {limit} bytes")],
    )


def _too_large_rows(limit: int) -> ResourceExhausted:
    return ResourceExhausted(f"an XLSX sheet holds at most {limit:,} rows; ask for CSV",
                             violations=[QuotaViolation("xlsx", f"sheet row limit of {limit}")])
