"""Mesh tokens: short-lived signed identities that every internal call carries, so that no caller can act as
a tenant it is not by merely saying so.

A token is a JWT signed with Ed25519 (EdDSA). It holds the tenant (``ten``), the user (``sub``), the tier,
the API key id (``key``), the scopes (``scope``, space-separated), the request id (``rid``), who signed it
(``iss``), the services it may be shown to (``aud``) and when it expires (``exp``): with the caller's
deadline, never later than a cap.

Keys: each signing service holds one Ed25519 private key (PKCS#8 PEM); every service holds the public keys
it trusts in one directory, one PEM file each (a public key or a certificate carrying one), named
``<issuer>.pem`` or ``<issuer>.<anything>.pem`` — the file name says which issuer the key speaks for. A key's
id (``kid``) is the SHA-256 thumbprint of its public key, so two keys of one issuer can be trusted at once
during a rotation without naming them. Only the gateway may speak for tenants; another issuer (the router,
for its own background work) may only sign the scopes :data:`SERVICE_ISSUER_SCOPES` grants it.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import jwt
from cachetools import LRUCache
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from moteur.runtime.context import request_id_var, time_remaining
from moteur.runtime.errors import Unauthenticated
from moteur.runtime.identity import SCOPE_EMBED, Identity
from moteur.runtime.settings import MeshAuthSettings

GATEWAY_ISSUER = "gateway"
INTERNAL_SERVICES = frozenset({"router", "memory", "files", "tools"})
# What a signer other than the gateway may grant: its own background calls, never a tenant's data.
SERVICE_ISSUER_SCOPES: Mapping[str, frozenset[str]] = {"router": frozenset({SCOPE_EMBED})}
_ALGORITHM = "EdDSA"
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]


def key_id(public_key: Ed25519PublicKey) -> str:
    """The key's thumbprint: base64url of the SHA-256 of its raw 32 bytes, cut to 16 characters."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).decode()[:16]


class MeshTokenIssuer:
    """Signs identities for the calls a service makes: the gateway for its callers, a service for itself."""

    def __init__(self, issuer: str, private_key: Ed25519PrivateKey, max_seconds: float = 300.0) -> None:
        self.issuer = issuer
        self._key = private_key
        self._kid = key_id(private_key.public_key())
        self._max_seconds = max_seconds

    @classmethod
    def from_settings(cls, issuer: str, settings: MeshAuthSettings | None = None) -> MeshTokenIssuer:
        settings = settings or MeshAuthSettings()
        if settings.mesh_signing_key_file is None:
            raise RuntimeError(f"the {issuer} service needs MOTEUR_MESH_SIGNING_KEY_FILE to sign mesh tokens "
                               "(make run writes one to .data/mesh-keys)")
        return cls.from_pem_file(issuer, settings.mesh_signing_key_file, settings.mesh_token_max_seconds)

    @classmethod
    def from_pem_file(cls, issuer: str, path: Path, max_seconds: float = 300.0) -> MeshTokenIssuer:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: the mesh signing key must be Ed25519 (PKCS#8 PEM)")
        return cls(issuer, key, max_seconds)

    def sign(self, identity: Identity, audience: Collection[str] = INTERNAL_SERVICES,
             seconds: float | None = None) -> Identity:
        """``identity`` with a token that proves it to ``audience`` until the call's deadline (or ``seconds``
        from now), at most the cap."""
        remaining = time_remaining() if seconds is None else seconds
        lifetime = self._max_seconds if remaining is None else max(1.0, min(remaining, self._max_seconds))
        now = int(time.time())
        request_id = identity.request_id or request_id_var.get()
        claims = {
            "iss": self.issuer, "aud": sorted(audience), "sub": identity.user, "ten": identity.tenant,
            "tier": identity.tier, "key": identity.key_id, "adm": identity.admin,
            "scope": " ".join(sorted(identity.scopes)), "rid": request_id,
            # rounded up: a deadline a fraction of a second away must not make an already-expired token
            "iat": now, "exp": now + int(lifetime) + 1,
        }
        token = jwt.encode(claims, self._key, algorithm=_ALGORITHM, headers={"kid": self._kid})
        return replace(identity, request_id=request_id, token=token)


@dataclass(frozen=True, slots=True)
class TrustedKey:
    issuer: str
    public_key: Ed25519PublicKey


class MeshTokenVerifier:
    """Checks the tokens shown to one service (``audience``). Verified tokens are remembered until they
    expire, so a token forwarded several times in one turn is checked once."""

    def __init__(self, keys: Mapping[str, TrustedKey], audience: str, leeway_seconds: float = 5.0,
                 cache_size: int = 4096) -> None:
        if not keys:
            raise ValueError("no trusted mesh public keys: every internal call would be refused")
        self._keys = dict(keys)
        self._audience = audience
        self._leeway = leeway_seconds
        self._verified: LRUCache[str, tuple[float, Identity]] = LRUCache(cache_size)

    @classmethod
    def from_directory(cls, directory: Path, audience: str, leeway_seconds: float = 5.0) -> MeshTokenVerifier:
        return cls(load_trusted_keys(directory), audience, leeway_seconds)

    def verify(self, token: str) -> Identity:
        """The identity ``token`` proves, or :class:`Unauthenticated` saying why not."""
        cached = self._verified.get(token)
        if cached is not None and cached[0] + self._leeway > time.time():
            return cached[1]
        identity, expires = self._verify(token)
        self._verified[token] = (expires, identity)
        return identity

    def _verify(self, token: str) -> tuple[Identity, float]:
        try:
            kid = jwt.get_unverified_header(token).get("kid", "")
        except jwt.InvalidTokenError:
            raise Unauthenticated("malformed mesh token: internal services are called through the gateway") \
                from None
        trusted = self._keys.get(kid) if isinstance(kid, str) else None
        if trusted is None:
            raise Unauthenticated("mesh token signed by an unknown key (not in this service's trusted keys)")
        try:
            claims = jwt.decode(token, trusted.public_key, algorithms=[_ALGORITHM], audience=self._audience,
                                issuer=trusted.issuer, leeway=self._leeway, options={"require": _REQUIRED_CLAIMS})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("mesh token expired: its caller's deadline has passed") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"mesh token not meant for the {self._audience} service") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid mesh token ({type(exc).__name__})") from None
        scopes = frozenset(str(claims.get("scope", "")).split())
        tenant = str(claims.get("ten", ""))
        if trusted.issuer != GATEWAY_ISSUER and (tenant or not scopes <= SERVICE_ISSUER_SCOPES.get(
                trusted.issuer, frozenset())):
            raise Unauthenticated(f"mesh token of {trusted.issuer!r} claims more than that service may grant")
        identity = Identity(
            tenant=tenant, user=str(claims["sub"]), tier=str(claims.get("tier", "")),
            key_id=str(claims.get("key", "")), admin=bool(claims.get("adm", False)), scopes=scopes,
            request_id=str(claims.get("rid", "")), token=token,
        )
        return identity, float(claims["exp"])


def load_trusted_keys(directory: Path) -> dict[str, TrustedKey]:
    """Every ``<issuer>[.<name>].pem`` in ``directory``, by key id (hidden files — Kubernetes' ``..data`` — are
    skipped)."""
    keys: dict[str, TrustedKey] = {}
    for path in sorted(directory.glob("*.pem")):
        if path.name.startswith("."):
            continue
        public_key = _public_key(path.read_bytes(), path)
        keys[key_id(public_key)] = TrustedKey(path.name.split(".", 1)[0], public_key)
    return keys


def _public_key(pem: bytes, path: Path) -> Ed25519PublicKey:
    key = x509.load_pem_x509_certificate(pem).public_key() if b"CERTIFICATE" in pem \
        else serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: mesh keys must be Ed25519")
    return key


def write_key_pair(directory: Path, issuer: str) -> Path:
    """A new signing key for ``issuer`` (``<issuer>.key``, mode 600) and its public key beside it
    (``public/<issuer>.pem``), unless one exists; returns the private key's path."""
    private_path = directory / f"{issuer}.key"
    public_dir = directory / "public"
    public_dir.mkdir(parents=True, exist_ok=True)
    if not private_path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        private_path.touch(mode=0o600)
        private_path.write_bytes(pem)
        (public_dir / f"{issuer}.pem").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path
