"""Where the bytes of files live: a directory on one machine, or S3-compatible object storage in a cluster.

Both read a file in chunks, one chunk in memory at a time, so streaming a large file keeps memory flat.
Their blocking calls (file I/O, boto3) run in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from moteur.files.settings import FilesSettings
from moteur.runtime.errors import NotFound

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client


class Storage(Protocol):
    async def put(self, key: str, content: bytes) -> None: ...

    def read(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        """The bytes in chunks of at most ``chunk_size``; NotFound when the key holds nothing."""
        ...

    async def delete(self, key: str) -> None:
        """Idempotent: deleting what is not there is not an error."""
        ...


class DirectoryStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"storage key {key!r} leaves the files directory")
        return path

    async def put(self, key: str, content: bytes) -> None:
        await asyncio.to_thread(self._write, self._path(key), content)

    @staticmethod
    def _write(path: Path, content: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside then renamed: a reader never sees half a file, a crash leaves no partial one.
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
        try:
            with os.fdopen(descriptor, "wb") as out:
                out.write(content)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    async def read(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        try:
            handle = await asyncio.to_thread(self._path(key).open, "rb")
        except FileNotFoundError as exc:
            raise NotFound("the file's content is gone (deleted or expired)") from exc
        try:
            while chunk := await asyncio.to_thread(handle.read, chunk_size):
                yield chunk
        finally:
            handle.close()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)


class S3Storage:
    """S3 or any S3-compatible store (MinIO, Ceph, moto): one object per file under a prefix."""

    def __init__(self, settings: FilesSettings) -> None:
        import boto3  # only the s3 backend needs it at import time

        # The keys named in the settings, or None: boto3's own chain (a role, ~/.aws) finds credentials.
        key_id = os.environ.get(settings.files_s3_access_key_env) if settings.files_s3_access_key_env else None
        self._client: S3Client = boto3.client(
            "s3", endpoint_url=settings.files_s3_endpoint or None, region_name=settings.files_s3_region,
            aws_access_key_id=key_id or None,
            aws_secret_access_key=os.environ.get(settings.files_s3_secret_key_env, "") if key_id else None,
        )
        self.bucket = settings.files_s3_bucket
        self.prefix = settings.files_s3_prefix

    async def put(self, key: str, content: bytes) -> None:
        await asyncio.to_thread(self._client.put_object, Bucket=self.bucket, Key=self.prefix + key, Body=content)

    async def read(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        try:
            answer = await asyncio.to_thread(self._client.get_object, Bucket=self.bucket, Key=self.prefix + key)
        except self._client.exceptions.NoSuchKey as exc:
            raise NotFound("the file's content is gone (deleted or expired)") from exc
        body = answer["Body"]
        try:
            while chunk := await asyncio.to_thread(body.read, chunk_size):
                yield chunk
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._client.delete_object, Bucket=self.bucket, Key=self.prefix + key)


def open_storage(settings: FilesSettings) -> Storage:
    if settings.files_storage == "s3":
        if not settings.files_s3_bucket:
            raise ValueError("MOTEUR_FILES_S3_BUCKET is required with MOTEUR_FILES_STORAGE=s3")
        return S3Storage(settings)
    return DirectoryStorage(settings.files_dir)
