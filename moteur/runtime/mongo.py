"""The MongoDB client (PyMongo's async API) every service with documents opens the same way."""

from __future__ import annotations

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from moteur.runtime.settings import MongoSettings


def connect_mongo(settings: MongoSettings) -> AsyncMongoClient:
    # Short selection timeout: a store that is down must surface as UNAVAILABLE within the caller's
    # patience, not after PyMongo's default 30 s.
    return AsyncMongoClient(
        settings.mongo_uri, serverSelectionTimeoutMS=3000, connectTimeoutMS=2000, tz_aware=True,
        uuidRepresentation="standard",
    )


def database(client: AsyncMongoClient, settings: MongoSettings) -> AsyncDatabase:
    return client[settings.mongo_db]
