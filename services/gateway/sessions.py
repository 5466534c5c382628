"""Sessions and their messages in MongoDB, always scoped by tenant (and by user for user keys).

Layout: ``messages`` holds every message (paged reads, never lost); each ``sessions`` document also
keeps its newest :data:`RECENT_MESSAGES` messages in ``recent``, so that a chat turn reads the session and
its history in one indexed lookup instead of a range scan over a long conversation.

A chat turn's writes are returned as operations (:meth:`SessionStore.turn_writes`) rather than executed,
so the conversation can send them with the turn's other writes in one round trip (see
:func:`moteur.runtime.mongo.write_together`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from moteur.runtime.errors import InvalidArgument, NotFound
from moteur.runtime.ids import is_valid_id, new_id
from moteur.runtime.mongo import Insert, StoreWrite, Update, insert_new

if TYPE_CHECKING:
    from moteur.gateway.turns import PendingTurn

RECENT_MESSAGES = 50
Role = Literal["user", "assistant", "system", "tool"]


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose sessions a caller may touch: a tenant, and a user unless the key is a service key."""

    tenant: str
    user: str | None  # None: any user of the tenant

    def filter(self, **extra: Any) -> dict[str, Any]:
        query = {"tenant": self.tenant, **extra}
        if self.user is not None:
            query["user"] = self.user
        return query


@dataclass(slots=True)
class StoredMessage:
    id: str
    role: Role
    content: str  # tool messages: what the model read (the result's JSON, or its error)
    created_at: datetime
    model: str = ""
    usage: dict[str, int] = field(default_factory=dict)
    # assistant messages that asked for tools: [{"id", "name", "arguments_json"}]
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    # tool messages: the ToolResult fields (call_id, ok, content_json, error_code, error_message, …)
    tool_result: dict[str, Any] = field(default_factory=dict)
    # answers rendered into a file: the FileRef fields (file_id, name, mime_type, size_bytes, sha256)
    file: dict[str, Any] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        doc = {"_id": self.id, "role": self.role, "content": self.content, "created_at": self.created_at,
               "model": self.model, "usage": self.usage}
        if self.tool_calls:
            doc["tool_calls"] = self.tool_calls
        if self.tool_result:
            doc["tool_result"] = self.tool_result
        if self.file:
            doc["file"] = self.file
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> StoredMessage:
        return cls(doc["_id"], doc["role"], doc["content"], doc["created_at"], doc.get("model", ""),
                   doc.get("usage") or {}, doc.get("tool_calls") or [], doc.get("tool_result") or {},
                   doc.get("file") or {})


@dataclass(slots=True)
class Session:
    id: str
    tenant: str
    user: str
    title: str
    created_at: datetime
    updated_at: datetime
    message_count: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    recent: list[StoredMessage] = field(default_factory=list)
    stored: bool = True  # False: created for this turn, written with the turn's messages
    # A turn waiting for the caller's tool results, or None.
    pending: PendingTurn | None = None

    def to_doc(self) -> dict[str, Any]:
        return {"_id": self.id, "tenant": self.tenant, "user": self.user, "title": self.title,
                "created_at": self.created_at, "updated_at": self.updated_at, "message_count": self.message_count,
                "metadata": self.metadata, "recent": [m.to_doc() for m in self.recent]}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Session:
        # Imported here: moteur.gateway.turns imports this module (StoredMessage, Session).
        from moteur.gateway.turns import PendingTurn

        pending = doc.get("pending")
        return cls(
            doc["_id"], doc["tenant"], doc["user"], doc.get("title", ""), doc["created_at"], doc["updated_at"],
            doc.get("message_count", 0), doc.get("metadata") or {},
            [StoredMessage.from_doc(m) for m in doc.get("recent", [])],
            pending=PendingTurn.from_doc(pending) if pending is not None else None,
        )


def new_message(
    role: Role, content: str, model: str = "", usage: dict[str, int] | None = None,
    tool_calls: list[dict[str, str]] | None = None, tool_result: dict[str, Any] | None = None,
) -> StoredMessage:
    return StoredMessage(new_id(), role, content, datetime.now(UTC), model, usage or {}, tool_calls or [],
                         tool_result or {})


def parse_session_id(value: str, field_name: str = "session_id") -> str:
    if not is_valid_id(value):
        raise InvalidArgument(
            field_name, f"{value[:40]!r} is not a session id (26-character ULID as returned by CreateSession)"
        )
    return value.upper()


class SessionStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self._sessions = db["sessions"]
        self._messages = db["messages"]

    async def ensure_indexes(self) -> None:
        await self._sessions.create_index([("tenant", 1), ("user", 1), ("_id", DESCENDING)])
        await self._messages.create_index([("tenant", 1), ("session_id", 1), ("_id", 1)])

    @staticmethod
    def new(tenant: str, user: str, title: str = "", metadata: dict[str, str] | None = None) -> Session:
        """A session not yet stored: :meth:`turn_writes` stores it with its first messages."""
        now = datetime.now(UTC)
        return Session(new_id(), tenant, user, title, now, now, 0, metadata or {}, stored=False)

    async def create(self, tenant: str, user: str, title: str = "", metadata: dict[str, str] | None = None) -> Session:
        session = self.new(tenant, user, title, metadata)
        await insert_new(self._sessions, session.to_doc())
        session.stored = True
        return session

    async def get(self, scope: Scope, session_id: str) -> Session:
        doc = await self._sessions.find_one(scope.filter(_id=session_id))
        if doc is None:
            raise NotFound(f"session {session_id} not found")
        return Session.from_doc(doc)

    def turn_writes(
        self, session: Session, messages: Sequence[StoredMessage], pending: PendingTurn | None = None
    ) -> list[StoreWrite]:
        """The writes that persist ``messages`` in ``session`` (and the session itself when new), and set
        the session's pending turn to ``pending`` (None: no turn waits any more)."""
        docs = [m.to_doc() for m in messages]
        writes: list[StoreWrite] = [
            Insert(self._messages.full_name, {**d, "tenant": session.tenant, "session_id": session.id,
                                              "user": session.user})
            for d in docs
        ]
        if not session.stored:
            session.recent, session.message_count = list(messages), len(messages)
            session.updated_at = messages[-1].created_at
            doc = session.to_doc()
            if pending is not None:
                doc["pending"] = pending.to_doc()
            writes.append(Insert(self._sessions.full_name, doc))
            return writes
        update: dict[str, Any] = {
            "$push": {"recent": {"$each": docs, "$slice": -RECENT_MESSAGES}},
            "$inc": {"message_count": len(docs)},
            "$set": {"updated_at": messages[-1].created_at},
        }
        if pending is not None:
            update["$set"]["pending"] = pending.to_doc()
        elif session.pending is not None:
            update["$unset"] = {"pending": ""}
        # Applied once: a second sending of the same turn finds its last message in the window already.
        writes.append(Update(self._sessions.full_name,
                             {"_id": session.id, "tenant": session.tenant, "recent._id": {"$ne": docs[-1]["_id"]}},
                             update))
        return writes

    async def claim_pending(self, scope: Scope, session_id: str, pending_id: str, lease_seconds: float) -> bool:
        """Take the session's pending turn for ``lease_seconds`` (one SubmitToolResults at a time); a lease
        left by a crashed gateway expires and the turn can be taken again."""
        now = datetime.now(UTC)
        result = await self._sessions.update_one(
            scope.filter(_id=session_id, **{"pending.id": pending_id, "pending.lease_until": {"$lt": now}}),
            {"$set": {"pending.lease_until": now + timedelta(seconds=lease_seconds)}},
        )
        return result.modified_count == 1

    async def release_pending(self, scope: Scope, session_id: str, pending_id: str) -> None:
        """Give a pending turn back after a failed continuation: the caller may submit again."""
        await self._sessions.update_one(scope.filter(_id=session_id, **{"pending.id": pending_id}),
                                        {"$set": {"pending.lease_until": datetime.now(UTC)}})

    async def messages(
        self, scope: Scope, session_id: str, page_size: int, after_id: str = ""
    ) -> tuple[list[StoredMessage], str]:
        """Oldest first, ``page_size`` at a time; returns the page and the next page's cursor ('' at the end)."""
        query = scope.filter(session_id=session_id)
        if after_id:
            query["_id"] = {"$gt": after_id}
        docs = await self._messages.find(query).sort("_id", 1).limit(page_size + 1).to_list()
        page = [StoredMessage.from_doc(d) for d in docs[:page_size]]
        return page, (page[-1].id if len(docs) > page_size else "")

    async def list(self, scope: Scope, page_size: int, before_id: str = "") -> tuple[list[Session], str]:
        """Newest first; returns the page and the next page's cursor ('' at the end)."""
        query = scope.filter()
        if before_id:
            query["_id"] = {"$lt": before_id}
        docs = await self._sessions.find(query, {"recent": 0}).sort("_id", -1).limit(page_size + 1).to_list()
        page = [Session.from_doc(d) for d in docs[:page_size]]
        return page, (page[-1].id if len(docs) > page_size else "")

    async def delete(self, scope: Scope, session_id: str) -> int:
        """Delete a session and its messages; returns how many messages went with it."""
        result = await self._sessions.delete_one(scope.filter(_id=session_id))
        if result.deleted_count == 0:
            raise NotFound(f"session {session_id} not found")
        deleted = await self._messages.delete_many({"tenant": scope.tenant, "session_id": session_id})
        return deleted.deleted_count
