"""The MongoDB client (PyMongo's async API) every service with documents opens the same way."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from pymongo import AsyncMongoClient, InsertOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ClientBulkWriteException

from moteur.runtime.settings import MongoSettings

ClientWrite = InsertOne | UpdateOne


def connect_mongo(settings: MongoSettings) -> AsyncMongoClient:
    # Short selection timeout: a store that is down must surface as UNAVAILABLE within the caller's
    # patience, not after PyMongo's default 30 s. The connect timeout is also the heartbeat's: at 2 s, a store
    # busy for 2 s (large documents being written) failed its heartbeat, and PyMongo then cancelled every
    # operation in flight (AutoReconnect, so UNAVAILABLE); 10 s rides through such a stall.
    return AsyncMongoClient(
        settings.mongo_uri, serverSelectionTimeoutMS=3000, connectTimeoutMS=10_000, tz_aware=True,
        uuidRepresentation="standard",
    )


def database(client: AsyncMongoClient, settings: MongoSettings) -> AsyncDatabase:
    return client[settings.mongo_db]


@dataclass(frozen=True, slots=True)
class Insert:
    """Insert ``document``, whose ``_id`` is fresh. Finding that ``_id`` there already counts as done: it is this
    write, sent before (PyMongo sends a write again when its acknowledgement was lost, and a store that does not
    remember the first attempt, as SecantusDB after a kill -9, then answers a duplicate key)."""

    namespace: str  # "database.collection"
    document: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Update:
    """Update the one document ``filter`` matches. Callers guard the filter so that sending it again changes
    nothing (a turn's window update matches only while the turn's last message is not in it yet)."""

    namespace: str
    filter: Mapping[str, Any]
    update: Mapping[str, Any]


StoreWrite = Insert | Update
DUPLICATE_KEY = 11000


async def insert_new(collection: AsyncCollection, document: Mapping[str, Any]) -> None:
    """``insert_one`` of a document with a fresh ``_id``, safe to send again (see :class:`Insert`)."""
    await collection.update_one({"_id": document["_id"]}, {"$setOnInsert": _without_id(document)}, upsert=True)


def _without_id(document: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != "_id"}


def _client_write(write: StoreWrite) -> ClientWrite:
    if isinstance(write, Insert):
        return InsertOne(dict(write.document), namespace=write.namespace)
    return UpdateOne(dict(write.filter), dict(write.update), namespace=write.namespace)


async def write_together(client: AsyncMongoClient, writes: Sequence[StoreWrite]) -> None:
    """Send writes to several collections in one round trip (MongoDB 8.0 ``bulkWrite``), in order.

    Not a transaction: a failure part-way leaves the earlier writes applied, which callers order for
    (the messages before the records that point at them), and raises ``ClientBulkWriteException``. Every write
    is idempotent (:class:`Insert`, guarded :class:`Update`), so the whole can be sent again.
    """
    failed = await write_in_order(client, writes)
    if failed is not None:
        raise failed[1]


async def write_in_order(
    client: AsyncMongoClient, writes: Sequence[StoreWrite]
) -> tuple[int, ClientBulkWriteException] | None:
    """:func:`write_together`, returning the failing write's index and error instead of raising them (None:
    all landed). An insert that finds its ``_id`` taken is one that landed before: the writes after it are sent
    on. Raises when the failure is not one write's (a connection lost, a write concern error)."""
    start = 0
    while start < len(writes):
        try:
            await client.bulk_write([_client_write(w) for w in writes[start:]], ordered=True)
            return None
        except ClientBulkWriteException as exc:
            failed = first_write_error(exc)
            if failed is None:
                raise
            index = start + int(failed["idx"])
            if failed.get("code") != DUPLICATE_KEY or not isinstance(writes[index], Insert):
                return index, exc
            start = index + 1
    return None


def first_write_error(exc: ClientBulkWriteException) -> Mapping[str, Any] | None:
    """The failing write of an ordered bulk write (the server's error document, ``idx`` relative to the
    writes sent), or None when the failure is not one write's (a connection lost, a write concern error)."""
    if exc.write_concern_errors:
        return None
    errors = cast(list[Mapping[str, Any]], exc.write_errors or [])  # PyMongo types them as WriteError
    return min(errors, key=lambda error: int(error["idx"]), default=None)
