"""Files the answers were rendered into, and the templates that render them.

A user key reaches its own files only (another user's file answers NOT_FOUND); storing a template needs an
admin key.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from moteur.gateway.api import convert
from moteur.gateway.api.rpc import Context, admin_only, authenticated
from moteur.gateway.auth import Authenticator
from moteur.runtime.channels import call_service, stream_service
from moteur.runtime.context import outgoing_timeout
from moteur.runtime.errors import NotFound
from moteur.runtime.identity import Identity
from moteur.v1 import files_pb2, files_pb2_grpc


class FileRpcs:
    def __init__(self, auth: Authenticator, files: files_pb2_grpc.FilesStub) -> None:
        self.auth = auth
        self._files = files

    @authenticated
    async def ListFiles(self, request: files_pb2.ListFilesRequest, identity: Identity,
                        context: Context) -> files_pb2.ListFilesResponse:
        return await call_service(self._files.ListFiles, convert.acting(identity, request), "files", identity,
                                  outgoing_timeout(10.0))  # a user key lists its own files only

    @authenticated
    async def GetFile(self, request: files_pb2.GetFileRequest, identity: Identity,
                      context: Context) -> AsyncIterator[files_pb2.FileChunk]:
        async for chunk in self._chunks(identity, request.file_id):
            yield chunk

    @authenticated
    async def DeleteFile(self, request: files_pb2.DeleteFileRequest, identity: Identity,
                         context: Context) -> files_pb2.DeleteFileResponse:
        if identity.user:  # a user key deletes its own files only: read the owner first
            async for _ in self._chunks(identity, request.file_id):
                break
        return await call_service(self._files.DeleteFile, request, "files", identity, outgoing_timeout(10.0))

    async def _chunks(self, identity: Identity, file_id: str) -> AsyncIterator[files_pb2.FileChunk]:
        """The file's chunks from the files service; another user's file is NOT_FOUND for a user key."""
        chunks = stream_service(self._files.GetFile, files_pb2.GetFileRequest(file_id=file_id), "files", identity,
                                outgoing_timeout(300.0))
        async with contextlib.aclosing(chunks):
            first = True
            async for chunk in chunks:
                if first and identity.user and chunk.info.user_id != identity.user:
                    raise NotFound(f"file {file_id} not found")
                first = False
                yield chunk

    @authenticated
    async def ListTemplates(self, request: files_pb2.ListTemplatesRequest, identity: Identity,
                            context: Context) -> files_pb2.ListTemplatesResponse:
        return await call_service(self._files.ListTemplates, request, "files", identity, outgoing_timeout(10.0))

    @admin_only("storing a template")
    async def PutTemplate(self, request: files_pb2.PutTemplateRequest, identity: Identity,
                          context: Context) -> files_pb2.TemplateInfo:
        return await call_service(self._files.PutTemplate, request, "files", identity, outgoing_timeout(30.0))
