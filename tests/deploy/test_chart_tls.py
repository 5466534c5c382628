"""The chart with TLS between services: certificates mounted and named for moteur.runtime.tls, probes on
the plaintext health port, and the gateway (the public API) not asking its callers for certificates."""

from __future__ import annotations

from test_chart import _by_kind, _render

from moteur.devstack.stack import SERVICES

TLS = {"tls": {"enabled": True, "secretName": "moteur-mesh-tls"}}


def test_with_tls_every_service_serves_it_and_probes_the_plaintext_health_port() -> None:
    manifests = _render(TLS)
    config_maps, deployments = _by_kind(manifests, "ConfigMap"), _by_kind(manifests, "Deployment")
    for service in SERVICES:
        env = config_maps[f"moteur-{service}"]["data"]
        assert env["MOTEUR_TLS_CERT_FILE"] == "/var/run/moteur/tls/tls.crt" and env["MOTEUR_HEALTH_PORT"] == "50060"
        assert ("MOTEUR_TLS_REQUIRE_CLIENT_CERT" in env) == (service == "gateway")
        container = deployments[f"moteur-{service}"]["spec"]["template"]["spec"]["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == 50060, (service, probe)


def test_without_tls_probes_use_the_service_port() -> None:
    container = _by_kind(_render({}), "Deployment")["moteur-router"]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["grpc"]["port"] == 50051
