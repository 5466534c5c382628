"""API keys at rest: created by operators, stored hashed in MongoDB's ``api_keys`` collection.

A key is ``mot_`` followed by 32 random bytes (URL-safe base64). It has 256 bits of entropy, so a plain
SHA-256 is the right hash: a slow password hash would only add latency to every request without making
a random 256-bit secret any harder to guess. Only the hash is stored; the plaintext is shown once.

The store lives in the shared runtime because the gateway (which resolves a key on every call, see
``moteur.gateway.auth``), the CLI (``moteur keys``) and the local stack (its development key) all write it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from moteur.runtime.errors import InvalidArgument
from moteur.runtime.identity import Identity
from moteur.runtime.ids import new_id
from moteur.runtime.mongo import insert_new

KEY_PREFIX = "mot_"
TIERS = ("free", "standard", "pro", "enterprise", "service")


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    tenant: str
    user: str  # empty: a service key, which may act for any user of its tenant
    tier: str
    name: str
    created_at: datetime
    admin: bool = False

    @property
    def identity(self) -> Identity:
        return Identity(tenant=self.tenant, user=self.user, tier=self.tier, key_id=self.key_id, admin=self.admin)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


class ApiKeyStore:
    """The ``api_keys`` collection: one document per key, found by the hash of its secret."""

    def __init__(self, db: AsyncDatabase) -> None:
        self._keys = db["api_keys"]

    async def ensure_indexes(self) -> None:
        await self._keys.create_index("hash", unique=True)
        await self._keys.create_index([("tenant", 1), ("_id", 1)])

    async def create(
        self, tenant: str, user: str = "", tier: str = "standard", name: str = "", admin: bool = False
    ) -> tuple[str, ApiKey]:
        """A new key; returns its plaintext (shown once, never stored) and its record."""
        # Both travel between services in gRPC metadata (ASCII) and are stored in 64 and 128-byte columns.
        if not tenant or len(tenant) > 64 or not tenant.isascii() or not tenant.isprintable():
            raise InvalidArgument("tenant", "1 to 64 printable ASCII characters")
        if len(user) > 128 or not user.isascii() or not user.isprintable():
            raise InvalidArgument("user", "at most 128 printable ASCII characters")
        if tier not in TIERS:
            raise InvalidArgument("tier", f"one of {', '.join(TIERS)}")
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(new_id(), tenant, user, tier, name, datetime.now(UTC), admin)
        await insert_new(self._keys,
            {"_id": key.key_id, "hash": hash_key(plaintext), "tenant": tenant, "user": user, "tier": tier,
             "name": name, "created_at": key.created_at, "revoked": False, "admin": admin}
        )
        return plaintext, key

    async def find(self, key_hash: str) -> ApiKey | None:
        doc = await self._keys.find_one({"hash": key_hash, "revoked": False})
        return None if doc is None else _from_doc(doc)

    async def list(self, tenant: str) -> list[ApiKey]:
        return [_from_doc(d) async for d in self._keys.find({"tenant": tenant, "revoked": False}).sort("_id", 1)]

    async def exists(self, tenant: str, key_id: str) -> bool:
        return await self._keys.find_one({"_id": key_id, "tenant": tenant}, {"_id": 1}) is not None

    async def revoke(self, tenant: str, key_id: str) -> bool:
        result = await self._keys.update_one({"_id": key_id, "tenant": tenant}, {"$set": {"revoked": True}})
        return result.modified_count == 1


def _from_doc(doc: Mapping[str, Any]) -> ApiKey:
    return ApiKey(doc["_id"], doc["tenant"], doc["user"], doc["tier"], doc.get("name", ""), doc["created_at"],
                  doc.get("admin", False))
