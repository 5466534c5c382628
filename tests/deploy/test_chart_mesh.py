"""The chart's mesh identity: keys generated on install, each service trusting the public keys, only the
gateway and the router holding a signing key (their own), and the keys really sign and verify."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from moteur.devstack.stack import SERVICES
from moteur.runtime.identity import Identity
from moteur.runtime.mesh_tokens import MeshTokenIssuer, MeshTokenVerifier, load_trusted_keys

CHART = Path(__file__).parents[2] / "deploy" / "helm" / "moteur"
PRODUCTION = yaml.safe_load((CHART / "values-production.yaml").read_text())


def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
    rendered = helm_python.Chart.load(CHART).render(values, name="moteur", namespace="ai")
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]


def _secret(manifests: list[dict[str, Any]], name: str) -> dict[str, bytes]:
    secret = next(m for m in manifests if m["kind"] == "Secret" and m["metadata"]["name"] == name)
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def _pods(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"].removeprefix("moteur-"): m["spec"]["template"]["spec"]
            for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"].removeprefix("moteur-")
            in SERVICES}


def test_generated_keys_sign_tokens_every_service_accepts(tmp_path: Path) -> None:
    manifests = _render({})
    signing, public = _secret(manifests, "moteur-mesh-signing"), _secret(manifests, "moteur-mesh-public")
    assert set(signing) == {"gateway.key", "router.key"} and set(public) == {"gateway.pem", "router.pem"}
    for name, pem in public.items():
        (tmp_path / name).write_bytes(pem)
    (tmp_path / "gateway.key").write_bytes(signing["gateway.key"])
    token = MeshTokenIssuer.from_pem_file("gateway", tmp_path / "gateway.key").sign(
        Identity("acme", "alice", "standard"), seconds=30).token
    assert MeshTokenVerifier(load_trusted_keys(tmp_path), "memory").verify(token).tenant == "acme"


@pytest.mark.parametrize("values", [{}, PRODUCTION], ids=["default", "production"])
def test_every_service_trusts_the_public_keys_and_only_signers_hold_their_own_key(values: dict[str, Any]) -> None:
    for service, pod in _pods(_render(values)).items():
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["MOTEUR_MESH_KEYS_DIR"] == "/var/run/moteur/mesh/public"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["mesh-public"]["secret"]["secretName"] == "moteur-mesh-public"
        if service in ("gateway", "router"):
            assert env["MOTEUR_MESH_SIGNING_KEY_FILE"] == f"/var/run/moteur/mesh/signing/{service}.key"
            assert volumes["mesh-signing"]["secret"]["items"] == [{"key": f"{service}.key", "path": f"{service}.key"}]
        else:
            assert "MOTEUR_MESH_SIGNING_KEY_FILE" not in env and "mesh-signing" not in volumes


def test_given_secrets_are_used_and_none_is_generated() -> None:
    manifests = _render({"meshIdentity": {"signingSecret": "vault-mesh-signing", "publicSecret": "vault-mesh-public"}})
    assert not [m for m in manifests if m["kind"] == "Secret" and "mesh" in m["metadata"]["name"]]
    gateway = _pods(manifests)["gateway"]
    assert {v["name"]: v["secret"]["secretName"] for v in gateway["volumes"] if "secret" in v} \
        .items() >= {"mesh-public": "vault-mesh-public", "mesh-signing": "vault-mesh-signing"}.items()


def test_production_turns_mutual_tls_on() -> None:
    assert PRODUCTION["tls"] == {"enabled": True, "secretName": "moteur-mesh-tls"}
