"""File metadata and tenant templates in MongoDB: collections ``files`` and ``file_templates``.

Expiry is enforced by reads (an expired file is never served) and by the sweeper, which deletes the bytes
before the metadata. No TTL index: MongoDB deleting the metadata on its own would orphan the bytes it
points to, and SecantusDB does not run TTL monitors anyway.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from typing import Any

from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from moteur.files.templates import Template
from moteur.runtime.mongo import insert_new


@dataclass(frozen=True)
class FileRecord:
    id: str  # ULID: pages sort by it, newest first
    tenant: str
    user: str
    session: str
    name: str  # with its extension
    format: str
    mime_type: str
    size: int
    sha256: str
    template: str
    note: str
    storage_key: str
    created_at: datetime.datetime
    expires_at: datetime.datetime

    def document(self) -> dict[str, Any]:
        fields = asdict(self)
        return {"_id": fields.pop("id"), **fields}

    @classmethod
    def of(cls, document: dict[str, Any]) -> FileRecord:
        fields = dict(document)
        return cls(id=fields.pop("_id"), **fields)


class FileStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self._files = db["files"]

    async def ensure_indexes(self) -> None:
        await self._files.create_index([("tenant", 1), ("user", 1), ("_id", DESCENDING)])
        await self._files.create_index([("tenant", 1), ("session", 1), ("_id", DESCENDING)])
        await self._files.create_index([("expires_at", 1)])

    async def insert(self, record: FileRecord) -> None:
        await insert_new(self._files, record.document())

    async def get(self, tenant: str, file_id: str, user: str, now: datetime.datetime) -> FileRecord | None:
        """The tenant's file, if ``user`` (when set) owns it and it has not expired."""
        query: dict[str, Any] = {"_id": file_id, "tenant": tenant, "expires_at": {"$gt": now}}
        if user:
            query["user"] = user
        document = await self._files.find_one(query)
        return FileRecord.of(document) if document else None

    async def page(self, tenant: str, user: str, session: str, limit: int, before: str,
                   now: datetime.datetime) -> list[FileRecord]:
        query: dict[str, Any] = {"tenant": tenant, "expires_at": {"$gt": now}}
        if user:
            query["user"] = user
        if session:
            query["session"] = session
        if before:
            query["_id"] = {"$lt": before}
        cursor = self._files.find(query).sort("_id", DESCENDING).limit(limit)
        return [FileRecord.of(d) async for d in cursor]

    async def remove(self, file_id: str) -> bool:
        return (await self._files.delete_one({"_id": file_id})).deleted_count == 1

    async def expired(self, now: datetime.datetime, limit: int) -> list[FileRecord]:
        cursor = self._files.find({"expires_at": {"$lte": now}}).sort("expires_at", 1).limit(limit)
        return [FileRecord.of(d) async for d in cursor]


class TemplateStore:
    """Each tenant's own templates, keyed by tenant and name."""

    def __init__(self, db: AsyncDatabase) -> None:
        self._templates = db["file_templates"]

    async def ensure_indexes(self) -> None:
        await self._templates.create_index([("tenant", 1), ("name", 1)])

    async def get(self, tenant: str, name: str) -> Template | None:
        document = await self._templates.find_one({"_id": f"{tenant}/{name}"})
        return _template(document) if document else None

    async def of_tenant(self, tenant: str) -> list[Template]:
        return [_template(d) async for d in self._templates.find({"tenant": tenant}).sort("name", 1)]

    async def put(self, tenant: str, template: Template) -> None:
        await self._templates.replace_one(
            {"_id": f"{tenant}/{template.name}"},
            {"tenant": tenant, "name": template.name, "formats": sorted(template.formats),
             "source": template.source, "description": template.description,
             "updated_at": datetime.datetime.now(datetime.UTC)},
            upsert=True,
        )


def _template(document: dict[str, Any]) -> Template:
    return Template(document["name"], frozenset(document["formats"]), document["source"], document["description"])
