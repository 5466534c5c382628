"""The MongoDB client (PyMongo's async API) every service with documents opens the same way."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pymongo import AsyncMongoClient, InsertOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

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


def insert_once(document: Mapping[str, Any], namespace: str) -> UpdateOne:
    """Insert ``document`` unless its ``_id`` is there already: the write can be sent again.

    PyMongo retries a write whose acknowledgement was lost (the store restarted mid-call). A plain insert
    that had landed then fails on its duplicate ``_id`` (a store that does not remember the first attempt,
    as SecantusDB after a kill -9), and the whole turn with it."""
    return UpdateOne({"_id": document["_id"]}, {"$setOnInsert": _without_id(document)}, upsert=True,
                     namespace=namespace)


async def insert_new(collection: AsyncCollection, document: Mapping[str, Any]) -> None:
    """``insert_one`` of a document with a fresh ``_id``, safe to send again (see :func:`insert_once`)."""
    await collection.update_one({"_id": document["_id"]}, {"$setOnInsert": _without_id(document)}, upsert=True)


def _without_id(document: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != "_id"}


async def write_together(client: AsyncMongoClient, writes: Sequence[ClientWrite]) -> None:
    """Send writes to several collections in one round trip (MongoDB 8.0 ``bulkWrite``), in order.

    Not a transaction: a failure part-way leaves the earlier writes applied, which callers order for
    (the messages before the records that point at them). Callers make each write idempotent
    (:func:`insert_once`, guarded updates), so that the whole can be sent again.
    """
    if writes:
        await client.bulk_write(list(writes), ordered=True)
