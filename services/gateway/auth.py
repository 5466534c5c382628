"""API keys resolved to an identity on every call (the keys themselves: ``moteur.runtime.api_keys``).

Resolved keys are cached in the gateway process for ``cache_seconds``; revoking a key therefore takes
effect within that time on every replica.
"""

from __future__ import annotations

import time
from collections import OrderedDict

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
        metadata = context.invocation_metadata()
        return await self.authenticate_key(api_key(metadata_value(metadata, "authorization"),
                                                   metadata_value(metadata, "x-api-key")))

    async def authenticate_key(self, plaintext: str) -> Identity:
        """The identity of a key found by :func:`api_key` (in gRPC metadata or HTTP headers alike)."""
        key = await self._key(plaintext)
        identity = self._issuer.sign(key.identity)
        identity_var.set(identity)  # the request's log line names its tenant and user
        return identity

    async def _key(self, plaintext: str) -> ApiKey:
        # Cached by hash, so plaintext keys are not kept in memory longer than the call.
        key_hash = hash_key(plaintext)
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


def api_key(authorization: str, x_api_key: str = "") -> str:
    """The API key a call shows, from its ``authorization: Bearer <key>`` (or ``x-api-key``) header."""
    key = authorization.removeprefix("Bearer ").strip() if authorization.startswith("Bearer ") else ""
    key = key or x_api_key.strip()
    if not key:
        raise Unauthenticated("missing API key: send the header 'authorization: Bearer <key>' (moteur keys create)")
    if not key.startswith(KEY_PREFIX):
        raise Unauthenticated(f"malformed API key: moteur keys start with {KEY_PREFIX!r}")
    return key
