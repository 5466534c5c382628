"""API keys resolved to an identity on every call (the keys themselves: ``moteur.runtime.api_keys``).

Resolved keys are cached in the gateway process for ``cache_seconds``; revoking a key therefore takes
effect within that time on every replica.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable

import grpc

from moteur.runtime.api_keys import KEY_PREFIX, ApiKey, ApiKeyStore, hash_key
from moteur.runtime.errors import Unauthenticated
from moteur.runtime.identity import Identity, identity_var, metadata_value
from moteur.runtime.mesh_tokens import MeshTokenIssuer


class Authenticator:
    """Turns the API key in call metadata into an :class:`Identity`, with a small bounded cache, and signs it
    for the call: the mesh token every internal call made on the caller's behalf carries."""

    def __init__(self, store: ApiKeyStore, issuer: MeshTokenIssuer, cache_seconds: float = 30.0,
                 cache_size: int = 10_000) -> None:
        self._store = store
        self._issuer = issuer
        self._cache_seconds = cache_seconds
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[float, ApiKey]] = OrderedDict()

    async def authenticate(self, context: grpc.aio.ServicerContext) -> Identity:
        key = await self._key(context)
        identity = self._issuer.sign(key.identity)
        identity_var.set(identity)  # the request's log line names its tenant and user
        return identity

    async def _key(self, context: grpc.aio.ServicerContext) -> ApiKey:
        # Cached by hash, so plaintext keys are not kept in memory longer than the call.
        key_hash = hash_key(_key_from_metadata(context.invocation_metadata()))
        now = time.monotonic()
        cached = self._cache.get(key_hash)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = await self._store.find(key_hash)
        if key is None:
            raise Unauthenticated("API key not recognised (revoked, mistyped or from another deployment)")
        self._cache[key_hash] = (now + self._cache_seconds, key)
        self._cache.move_to_end(key_hash)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return key


def _key_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    header = metadata_value(metadata, "authorization")
    key = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    key = key or metadata_value(metadata, "x-api-key").strip()
    if not key:
        raise Unauthenticated("missing API key: send metadata 'authorization: Bearer <key>' (moteur keys create)")
    if not key.startswith(KEY_PREFIX):
        raise Unauthenticated(f"malformed API key: moteur keys start with {KEY_PREFIX!r}")
    return key
