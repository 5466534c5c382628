"""The MongoDB client (PyMongo's async API) every service with documents opens the same way."""

from __future__ import annotations

from collections.abc import Sequence

from pymongo import AsyncMongoClient, InsertOne, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from moteur.runtime.settings import MongoSettings

_ClientWrite = InsertOne | UpdateOne


def connect_mongo(settings: MongoSettings) -> AsyncMongoClient:
    # Short selection timeout: a store that is down must surface as UNAVAILABLE within the caller's
    # patience, not after PyMongo's default 30 s.
    return AsyncMongoClient(
        settings.mongo_uri, serverSelectionTimeoutMS=3000, connectTimeoutMS=2000, tz_aware=True,
        uuidRepresentation="standard",
    )


def database(client: AsyncMongoClient, settings: MongoSettings) -> AsyncDatabase:
    return client[settings.mongo_db]


async def write_together(client: AsyncMongoClient, writes: Sequence[_ClientWrite]) -> None:
    """Send writes to several collections in one round trip (MongoDB 8.0 ``bulkWrite``), in order.

    Not a transaction: a failure part-way leaves the earlier writes applied, which callers order for
    (the messages before the records that point at them).
    """
    if writes:
        await client.bulk_write(list(writes), ordered=True)
