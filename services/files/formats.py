"""The file formats the service renders: their names, extensions, MIME types and default templates."""

from __future__ import annotations

from dataclasses import dataclass

from moteur.v1 import common_pb2


@dataclass(frozen=True, slots=True)
class Format:
    name: str  # "pdf", "csv", …: metric labels, stored metadata, messages
    proto: common_pb2.FileFormat
    extension: str
    mime_type: str
    default_template: str
    tabular: bool = False  # its content is rows (CSV, XLSX), not a document

    @property
    def document(self) -> bool:
        """Rendered from a Markdown or HTML document (a template's output), not from rows or data."""
        return self.name in {"pdf", "html", "markdown", "docx"}


FORMATS = {f.proto: f for f in (
    Format("pdf", common_pb2.FILE_FORMAT_PDF, "pdf", "application/pdf", "report"),
    Format("csv", common_pb2.FILE_FORMAT_CSV, "csv", "text/csv; charset=utf-8", "table", tabular=True),
    Format("json", common_pb2.FILE_FORMAT_JSON, "json", "application/json", "table"),
    Format("markdown", common_pb2.FILE_FORMAT_MARKDOWN, "md", "text/markdown; charset=utf-8", "report"),
    Format("html", common_pb2.FILE_FORMAT_HTML, "html", "text/html; charset=utf-8", "report"),
    Format("xlsx", common_pb2.FILE_FORMAT_XLSX, "xlsx",
           "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "table", tabular=True),
    Format("docx", common_pb2.FILE_FORMAT_DOCX, "docx",
           "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "report"),
)}
BY_NAME = {f.name: f for f in FORMATS.values()}
DOCUMENT_FORMATS = frozenset(f.name for f in FORMATS.values() if f.document)
HTML_FORMATS = frozenset({"html", "pdf"})  # a template for these only may write HTML instead of Markdown
