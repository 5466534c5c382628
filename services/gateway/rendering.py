"""Chat answers rendered into files by the files service (ChatRequest.output_format).

The template is checked before the model is called, so a misspelt template costs no tokens. The file is
rendered after the answer and before the turn's write, so the persisted answer carries its file; when
rendering fails the answer is persisted without it and the caller gets the files service's status with
where the answer is (see :class:`RenderFailed`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import cast

import structlog
from google.protobuf import any_pb2

from moteur.gateway.metrics import CHAT_FILES
from moteur.runtime.channels import call_service
from moteur.runtime.errors import InvalidArgument, MoteurError, NotFound
from moteur.runtime.identity import Identity
from moteur.v1 import common_pb2, files_pb2, files_pb2_grpc

log = structlog.get_logger("moteur.gateway.files")


def format_name(value: int) -> str:
    return common_pb2.FileFormat.Name(value).removeprefix("FILE_FORMAT_").lower()


class FileRenderer:
    def __init__(self, stub: files_pb2_grpc.FilesStub, call_timeout: float) -> None:
        self.stub = stub
        self._call_timeout = call_timeout

    async def check(self, identity: Identity, file_format: int, template: str) -> None:
        """Refuse, before any model call, a template the files service has not for this format."""
        if not template:
            return
        request = files_pb2.ListTemplatesRequest(format=cast(common_pb2.FileFormat, file_format))
        listed = await call_service(self.stub.ListTemplates, request, "files", identity, self._call_timeout)
        names = sorted(t.name for t in listed.templates)
        if template not in names:
            raise NotFound(f"template {template!r} does not render {format_name(file_format)}; templates that "
                           f"do: {', '.join(names) or 'none'}")

    async def render(self, identity: Identity, request: files_pb2.RenderRequest) -> files_pb2.FileInfo:
        started = time.perf_counter()
        try:
            info = await call_service(self.stub.Render, request, "files", identity, self._call_timeout)
        except MoteurError as exc:
            CHAT_FILES.labels(format_name(request.format), exc.code.name).inc()
            raise
        CHAT_FILES.labels(format_name(request.format), "ok").inc()
        log.info("chat.file_rendered", file_id=info.ref.file_id, format=format_name(request.format),
                 bytes=info.ref.size_bytes, ms=round((time.perf_counter() - started) * 1000), note=info.note)
        return info


class RenderFailed(MoteurError):
    """The answer is persisted; its file could not be made. Carries the files service's status and details."""

    def __init__(self, cause: MoteurError, session_id: str, message_id: str) -> None:
        super().__init__(f"the answer is saved (session {session_id}, message {message_id}) but could not be "
                         f"rendered into a file: {cause.message}")
        self.code = cause.code
        self._cause = cause

    def details(self) -> Sequence[any_pb2.Any]:
        return self._cause.details()


def file_ref(info: files_pb2.FileInfo) -> dict[str, object]:
    ref = info.ref
    return {"file_id": ref.file_id, "name": ref.name, "mime_type": ref.mime_type, "size_bytes": ref.size_bytes,
            "sha256": ref.sha256}


def check_format(value: int, template: str) -> int:
    if template and not value:
        raise InvalidArgument("output_template", "needs an output_format: the format to render the answer in")
    return value
