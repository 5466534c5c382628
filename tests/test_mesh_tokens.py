"""Mesh tokens alone: what a verifier accepts, and why it refuses the rest."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from moteur.runtime.errors import Unauthenticated
from moteur.runtime.identity import SCOPE_EMBED, SCOPE_MEMORY_READ, Identity
from moteur.runtime.mesh_tokens import (
    MeshTokenIssuer,
    MeshTokenVerifier,
    TrustedKey,
    key_id,
    load_trusted_keys,
    write_key_pair,
)

ALICE = Identity("acme", "alice", "standard", key_id="01KEY")


@pytest.fixture
def gateway_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def verifier(*trusted: tuple[str, Ed25519PrivateKey], audience: str = "memory") -> MeshTokenVerifier:
    keys = {key_id(k.public_key()): TrustedKey(issuer, k.public_key()) for issuer, k in trusted}
    return MeshTokenVerifier(keys, audience, leeway_seconds=1)


def test_a_signed_identity_is_proven_with_everything_it_holds(gateway_key: Ed25519PrivateKey) -> None:
    signed = MeshTokenIssuer("gateway", gateway_key).sign(ALICE, seconds=30)
    proven = verifier(("gateway", gateway_key)).verify(signed.token)
    assert (proven.tenant, proven.user, proven.tier, proven.key_id, proven.scopes) == \
        ("acme", "alice", "standard", "01KEY", ALICE.scopes)


def test_the_token_expires_with_the_deadline_and_never_later_than_the_cap(gateway_key: Ed25519PrivateKey) -> None:
    issuer = MeshTokenIssuer("gateway", gateway_key, max_seconds=60)
    for seconds, most in ((5, 7), (3600, 62)):
        claims = jwt.decode(issuer.sign(ALICE, seconds=seconds).token, options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] <= most


def test_an_expired_token_is_refused(gateway_key: Ed25519PrivateKey) -> None:
    now = int(time.time())
    token = jwt.encode({"iss": "gateway", "aud": ["memory"], "sub": "alice", "ten": "acme", "iat": now - 60,
                        "exp": now - 30}, gateway_key, algorithm="EdDSA",
                       headers={"kid": key_id(gateway_key.public_key())})
    with pytest.raises(Unauthenticated, match="expired"):
        verifier(("gateway", gateway_key)).verify(token)


def test_a_token_signed_by_another_key_is_refused_even_under_the_right_key_id(
        gateway_key: Ed25519PrivateKey) -> None:
    forged = MeshTokenIssuer("gateway", Ed25519PrivateKey.generate()).sign(ALICE, seconds=30).token
    header = jwt.get_unverified_header(forged)
    with pytest.raises(Unauthenticated, match="unknown key"):
        verifier(("gateway", gateway_key)).verify(forged)
    # The same forgery claiming the trusted key's id: the signature gives it away.
    now = int(time.time())
    claims = {"iss": "gateway", "aud": ["memory"], "sub": "alice", "ten": "acme", "iat": now, "exp": now + 30}
    impostor = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA",
                          headers={**header, "kid": key_id(gateway_key.public_key())})
    with pytest.raises(Unauthenticated, match="InvalidSignature"):
        verifier(("gateway", gateway_key)).verify(impostor)


def test_a_token_for_another_service_is_refused(gateway_key: Ed25519PrivateKey) -> None:
    token = MeshTokenIssuer("gateway", gateway_key).sign(ALICE, audience={"router"}, seconds=30).token
    with pytest.raises(Unauthenticated, match="not meant for the memory service"):
        verifier(("gateway", gateway_key)).verify(token)


def test_a_service_key_cannot_speak_for_a_tenant_or_beyond_its_scopes(gateway_key: Ed25519PrivateKey) -> None:
    router_key = Ed25519PrivateKey.generate()
    router = MeshTokenIssuer("router", router_key)
    trusted = verifier(("gateway", gateway_key), ("router", router_key))
    own = Identity("", "service:router", "", scopes=frozenset({SCOPE_EMBED}))
    assert trusted.verify(router.sign(own, seconds=30).token).scopes == {SCOPE_EMBED}
    for claimed in (ALICE, Identity("", "service:router", "", scopes=frozenset({SCOPE_MEMORY_READ}))):
        with pytest.raises(Unauthenticated, match="more than that service may grant"):
            trusted.verify(router.sign(claimed, seconds=30).token)


def test_garbage_is_refused_clearly(gateway_key: Ed25519PrivateKey) -> None:
    for token in ("", "not-a-jwt", "a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."):
        with pytest.raises(Unauthenticated):
            verifier(("gateway", gateway_key)).verify(token)


def test_keys_written_for_make_run_are_trusted_by_file_name_and_survive_a_second_run(tmp_path: Path) -> None:
    signing = write_key_pair(tmp_path, "gateway")
    first = signing.read_bytes()
    assert write_key_pair(tmp_path, "gateway").read_bytes() == first  # kept: running services still trust it
    assert signing.stat().st_mode & 0o077 == 0
    trusted = load_trusted_keys(tmp_path / "public")
    assert [k.issuer for k in trusted.values()] == ["gateway"]
    token = MeshTokenIssuer.from_pem_file("gateway", signing).sign(ALICE, seconds=30).token
    assert MeshTokenVerifier(trusted, "files").verify(token).tenant == "acme"


def test_during_a_rotation_both_keys_of_an_issuer_are_trusted(tmp_path: Path) -> None:
    old, new = write_key_pair(tmp_path / "old", "gateway"), write_key_pair(tmp_path / "new", "gateway")
    public = tmp_path / "trusted"
    public.mkdir()
    (public / "gateway.pem").write_bytes((tmp_path / "old" / "public" / "gateway.pem").read_bytes())
    (public / "gateway.next.pem").write_bytes((tmp_path / "new" / "public" / "gateway.pem").read_bytes())
    trusted = MeshTokenVerifier.from_directory(public, "tools")
    for key in (old, new):
        assert trusted.verify(MeshTokenIssuer.from_pem_file("gateway", key).sign(ALICE, seconds=30).token).user \
            == "alice"
