"""moteur.v1.Files over gRPC: protobuf in, domain calls, protobuf out. The logic is in FileService."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import json_format

from moteur.files.formats import BY_NAME, FORMATS, Format
from moteur.files.metrics import FILES_STREAMED_BYTES
from moteur.files.service import FileService, Owner, RenderInput
from moteur.files.store import FileRecord
from moteur.files.tables import AskModel
from moteur.files.templates import Template, describe_schema
from moteur.runtime.errors import InvalidArgument
from moteur.runtime.identity import Identity, mesh_identity
from moteur.runtime.ids import is_valid_id
from moteur.v1 import common_pb2, files_pb2, files_pb2_grpc

DEFAULT_PAGE, MAX_PAGE = 20, 100


# Characters XML 1.0 cannot hold (DOCX, XLSX and HTML are XML or near it): dropped from what is rendered, as
# they carry nothing a reader could see.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_safe(value: Any) -> Any:
    if isinstance(value, str):
        return _NOT_XML.sub("", value)
    if isinstance(value, dict):
        return {_NOT_XML.sub("", str(k)): _xml_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_xml_safe(v) for v in value]
    return value


class FilesServicer(files_pb2_grpc.FilesServicer):
    def __init__(self, files: FileService, ask_model_for: Callable[[Identity], AskModel] | None) -> None:
        self._files = files
        self._ask_model_for = ask_model_for  # the model call for tables, made on behalf of the caller

    async def Render(self, request: files_pb2.RenderRequest, context: grpc.aio.ServicerContext) -> files_pb2.FileInfo:
        identity = mesh_identity(context)
        owner = _owner(identity, request.user_id, request.session_id)
        data = _xml_safe(_data(request)) if request.HasField("data") else {}
        render = RenderInput(_format(request.format, "format"), request.template, _xml_safe(request.markdown), data,
                             _xml_safe(request.name), _xml_safe(request.title))
        ask = self._ask_model_for(identity) if self._ask_model_for else None
        return _info(await self._files.render(owner, render, ask))

    async def GetFile(
        self, request: files_pb2.GetFileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[files_pb2.FileChunk]:
        record = await self._files.find(_owner(mesh_identity(context)), _file_id(request.file_id))
        first = True
        async for chunk in self._files.content(record):
            FILES_STREAMED_BYTES.inc(len(chunk))
            yield files_pb2.FileChunk(info=_info(record), data=chunk) if first else files_pb2.FileChunk(data=chunk)
            first = False
        if first:  # an empty file: its info all the same
            yield files_pb2.FileChunk(info=_info(record))

    async def ListFiles(
        self, request: files_pb2.ListFilesRequest, context: grpc.aio.ServicerContext
    ) -> files_pb2.ListFilesResponse:
        owner = _owner(mesh_identity(context), request.user_id, request.session_id)
        if request.page_size < 0:
            raise InvalidArgument("page_size", "0 (the default, 20) to 100")
        limit = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        if request.page_token and not is_valid_id(request.page_token):
            raise InvalidArgument("page_token", "use the next_page_token of the previous page")
        records = await self._files.page(owner, limit, request.page_token)
        token = records[-1].id if len(records) == limit else ""
        return files_pb2.ListFilesResponse(files=[_info(r) for r in records], next_page_token=token)

    async def DeleteFile(
        self, request: files_pb2.DeleteFileRequest, context: grpc.aio.ServicerContext
    ) -> files_pb2.DeleteFileResponse:
        await self._files.delete(_owner(mesh_identity(context)), _file_id(request.file_id))
        return files_pb2.DeleteFileResponse()

    async def ListTemplates(
        self, request: files_pb2.ListTemplatesRequest, context: grpc.aio.ServicerContext
    ) -> files_pb2.ListTemplatesResponse:
        identity = mesh_identity(context)
        fmt = _format(request.format, "format") if request.format else None
        return files_pb2.ListTemplatesResponse(
            templates=[_template_info(t) for t in await self._files.templates(identity.tenant, fmt)])

    async def PutTemplate(
        self, request: files_pb2.PutTemplateRequest, context: grpc.aio.ServicerContext
    ) -> files_pb2.TemplateInfo:
        identity = mesh_identity(context)
        formats = frozenset(_format(f, "formats").name for f in request.formats)
        template = Template(request.name, formats, request.source, request.description)
        return _template_info(await self._files.put_template(identity.tenant, template))


def _owner(identity: Identity, user_id: str = "", session_id: str = "") -> Owner:
    """A user's key acts for its own user only; a service key for any user of its tenant, or all of them."""
    if user_id and identity.user and user_id != identity.user:
        raise InvalidArgument("user_id", "a user's key acts for that user only; leave it empty or name them")
    return Owner(identity.tenant, user_id or identity.user, session_id)


def _integral(value: Any) -> Any:
    """Struct holds every number as a double: 3.0 comes back as 3, as the caller most likely wrote it."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _format(value: common_pb2.FileFormat, field: str) -> Format:
    fmt = FORMATS.get(value)
    if fmt is None:
        raise InvalidArgument(field, f"one of {', '.join(sorted(BY_NAME))} (FILE_FORMAT_*); got {value}")
    return fmt


def _file_id(value: str) -> str:
    if not is_valid_id(value):
        raise InvalidArgument("file_id", "a file id (26-character ULID) as Render or ListFiles returned it")
    return value


def _info(record: FileRecord) -> files_pb2.FileInfo:
    info = files_pb2.FileInfo(
        ref=common_pb2.FileRef(file_id=record.id, name=record.name, mime_type=record.mime_type,
                               size_bytes=record.size, sha256=record.sha256),
        tenant_id=record.tenant, user_id=record.user, session_id=record.session, template=record.template,
        format=BY_NAME[record.format].proto, note=record.note,
    )
    info.created_at.FromDatetime(record.created_at)
    info.expires_at.FromDatetime(record.expires_at)
    return info


def _template_info(template: Template) -> files_pb2.TemplateInfo:
    return files_pb2.TemplateInfo(
        name=template.name, formats=sorted(BY_NAME[f].proto for f in template.formats),
        description=template.description, built_in=template.built_in, data_schema_json=describe_schema(template),
    )


def _data(request: files_pb2.RenderRequest) -> dict[str, object]:
    """The data as JSON; a number JSON cannot hold (NaN, infinity) is the caller's mistake."""
    try:
        return _integral(json_format.MessageToDict(request.data))
    except ValueError as exc:
        raise InvalidArgument("data", f"is not JSON data: {exc}") from None
