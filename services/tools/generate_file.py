"""``generate_file``: the model turns content into a file (PDF, CSV, XLSX, …) through the files service,
for the caller's tenant, user and session; the result names the file, which the caller fetches with
Gateway.GetFile. A failure of the files service is a result the model reads, not a failed call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2

from moteur.runtime.channels import call_service
from moteur.runtime.errors import MoteurError
from moteur.runtime.identity import mesh_identity
from moteur.tools.registry import ToolError, ToolSpec, current_caller
from moteur.v1 import common_pb2, files_pb2, files_pb2_grpc

FORMATS = {"pdf": common_pb2.FILE_FORMAT_PDF, "csv": common_pb2.FILE_FORMAT_CSV,
           "json": common_pb2.FILE_FORMAT_JSON, "markdown": common_pb2.FILE_FORMAT_MARKDOWN,
           "html": common_pb2.FILE_FORMAT_HTML, "xlsx": common_pb2.FILE_FORMAT_XLSX,
           "docx": common_pb2.FILE_FORMAT_DOCX}


class GenerateFile:
    def __init__(self, files: files_pb2_grpc.FilesStub, timeout_seconds: float = 30.0) -> None:
        self._files = files
        self._timeout = timeout_seconds

    def spec(self) -> ToolSpec:
        return ToolSpec(
            "generate_file",
            "Render content into a file the user can download: a report (pdf, docx, html, markdown) from "
            "Markdown text, or a table (csv, xlsx, json) from rows. Returns the file's id and name.",
            {"type": "object", "properties": {
                "format": {"type": "string", "enum": list(FORMATS)},
                "content": {"type": "string", "maxLength": 200_000, "description": "Markdown text"},
                "rows": {"type": "array", "maxItems": 10_000, "items": {"type": "object"},
                         "description": "table rows, one object per row"},
                "title": {"type": "string", "maxLength": 200},
                "template": {"type": "string", "maxLength": 64},
            }, "required": ["format"], "additionalProperties": False, "anyOf": [
                {"required": ["content"]}, {"required": ["rows"]}]},
            {"type": "object", "properties": {
                "file_id": {"type": "string"}, "name": {"type": "string"}, "mime_type": {"type": "string"},
                "size_bytes": {"type": "integer"}, "note": {"type": "string"},
            }, "required": ["file_id", "name", "mime_type", "size_bytes"]},
            timeout_ms=round(self._timeout * 1000) + 500, side_effects=True, max_concurrency=8,
        )

    async def __call__(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        caller = current_caller()
        request = files_pb2.RenderRequest(
            format=FORMATS[arguments["format"]], template=arguments.get("template", ""),
            markdown=arguments.get("content", ""), title=arguments.get("title", ""),
            user_id=caller.user, session_id=caller.session_id,
        )
        if "rows" in arguments:
            data = struct_pb2.Struct()
            data.update({"rows": arguments["rows"]})
            request.data.CopyFrom(data)
        try:
            info = await call_service(self._files.Render, request, "files",
                                      mesh_identity(), self._timeout)
        except MoteurError as exc:
            raise ToolError(_code(exc), f"the file could not be made: {exc.message}") from None
        result = {"file_id": info.ref.file_id, "name": info.ref.name, "mime_type": info.ref.mime_type,
                  "size_bytes": info.ref.size_bytes}
        return result | ({"note": info.note} if info.note else {})


def _code(error: MoteurError) -> str:
    return {"UNAVAILABLE": "unavailable", "DEADLINE_EXCEEDED": "timeout", "RESOURCE_EXHAUSTED": "too_large",
            "NOT_FOUND": "unknown_template"}.get(error.code.name, "invalid_content")
