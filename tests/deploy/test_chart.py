"""The Helm chart: lints, renders offline (helm-python-sdk, no helm binary) for the default and a
production-like configuration, and every manifest is valid against the Kubernetes schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from moteur.devstack.stack import SERVICES
from moteur.gateway.limits import TiersConfig, load_tiers
from moteur.memory.settings import MemorySettings
from moteur.router.registry import ModelsConfig

CHART = Path(__file__).parents[2] / "deploy" / "helm" / "moteur"
KUBERNETES_VERSION = "1.31"
# The stores the chart may install as dependencies: `helm dependency build` needs the network, so offline the
# charts are absent (lint says so) and the chart renders them disabled, or only their addresses when enabled.
DEPENDENCIES = ["mongodb", "redis", "milvus"]
LOCAL = yaml.safe_load((CHART / "values-local.yaml").read_text())
PRODUCTION = yaml.safe_load((CHART / "values-production.yaml").read_text())
# Production with the secrets given inline instead of existing Secrets: they must land in Secrets only.
INLINE_SECRETS = {
    **PRODUCTION,
    "storesExistingSecret": "",
    "mongodb": {"uri": "mongodb://moteur:s3cret@mongo-0.mongo,mongo-1.mongo/?replicaSet=rs0"},
    "providerKeysSecret": "",
    "providerKeys": {"OPENAI_API_KEY": "sk-test-not-real"},
}


def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
    rendered = helm_python.Chart.load(CHART).render(values, name="moteur", namespace="ai")
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]


def _by_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


# Every pod's mesh identity and TLS volumes, tested in test_chart_mesh and test_chart_tls.
SECURITY_VOLUMES = frozenset({"mesh-public", "mesh-signing", "tls"})


def _volume_names(pod: dict[str, Any]) -> set[str]:
    """The pod's own volumes, beside the security ones every pod has."""
    return {v["name"] for v in pod["volumes"]} - SECURITY_VOLUMES


@pytest.mark.parametrize("values", [{}, LOCAL, PRODUCTION], ids=["default", "local", "production"])
def test_the_chart_lints_without_errors(values: dict[str, Any]) -> None:
    report = helm_python.lint(CHART, values, strict=False, kube_version=f"v{KUBERNETES_VERSION}.0")
    assert report["errors"] == []
    missing = f"chart directory is missing these dependencies: {','.join(DEPENDENCIES)}"
    assert [m["error"] for m in report["messages"] if m["severity"] >= 2] in ([], [missing])


@pytest.mark.parametrize("values", [{}, LOCAL, PRODUCTION], ids=["default", "local", "production"])
def test_every_rendered_manifest_is_valid_kubernetes(values: dict[str, Any]) -> None:
    manifests = _render(values)
    assert manifests
    for manifest in manifests:
        if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # Prometheus Operator CRDs: not in the Kubernetes schemas
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("values", [{}, PRODUCTION], ids=["default", "production"])
def test_each_service_has_a_deployment_a_service_and_its_settings(values: dict[str, Any]) -> None:
    manifests = _render(values)
    deployments, services, configs = (_by_kind(manifests, k) for k in ("Deployment", "Service", "ConfigMap"))
    for service in SERVICES:
        name = f"moteur-{service}"
        assert name in services and name in configs
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        tls = bool(values.get("tls", {}).get("enabled"))
        probe_port = 50060 if tls else 50051  # TLS: the plaintext health port
        if service == "gateway" and not tls:  # its HTTP API turns unready as gRPC does, on drain
            assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        else:
            assert container["readinessProbe"]["grpc"] == {"port": probe_port}
        assert container["livenessProbe"]["grpc"] == {"port": probe_port}
        assert {"configMapRef": {"name": name}} in container["envFrom"]
        # The mesh calls every pod in turn: the headless Service's name resolves to all of them.
        assert configs[name]["data"]["MOTEUR_ROUTER_ADDR"] == "dns:///moteur-router-headless:50051"
        if service != "gateway":
            headless = services[f"{name}-headless"]["spec"]
            assert headless["clusterIP"] == "None" and headless["selector"] == services[name]["spec"]["selector"]
            assert [p["port"] for p in headless["ports"]] == [50051]
    assert "moteur-gateway-headless" not in services
    gateway_type = services["moteur-gateway"]["spec"]["type"]
    assert gateway_type == ("LoadBalancer" if values else "ClusterIP")
    assert all(services[f"moteur-{s}"]["spec"]["type"] == "ClusterIP" for s in SERVICES if s != "gateway")


@pytest.mark.parametrize("values", [{}, PRODUCTION], ids=["default", "production"])
def test_the_router_mounts_a_model_registry_it_can_load(values: dict[str, Any]) -> None:
    manifests = _render(values)
    registry = _by_kind(manifests, "ConfigMap")["moteur-models"]["data"]["models.yaml"]
    config = ModelsConfig.model_validate(yaml.safe_load(registry))
    router = _by_kind(manifests, "Deployment")["moteur-router"]["spec"]["template"]["spec"]
    assert _volume_names(router) == {"tmp", "models"}
    assert {"name": "models", "configMap": {"name": "moteur-models"}} in router["volumes"]
    gateway = _by_kind(manifests, "ConfigMap")["moteur-gateway"]["data"]
    scaling = values.get("services", {}).get("gateway", {}).get("autoscaling", {})
    replicas = values.get("services", {}).get("gateway", {}).get("replicas", 2)
    assert gateway["MOTEUR_QUEUE_REPLICAS"] == str(scaling["maxReplicas"] if scaling.get("enabled") else replicas)
    if not values:
        assert config.get("qwen2.5-coder-1.5b").base_url == "http://moteur-model-server:8080/v1"
        assert "moteur-model-server" in _by_kind(manifests, "Deployment")


def test_secrets_stay_out_of_config_maps() -> None:
    manifests = _render(INLINE_SECRETS)
    configs = yaml.safe_dump([m for m in manifests if m["kind"] == "ConfigMap"])
    assert "s3cret" not in configs and "sk-test-not-real" not in configs
    secrets = _by_kind(manifests, "Secret")
    assert secrets["moteur-stores"]["stringData"]["mongodb-uri"] == INLINE_SECRETS["mongodb"]["uri"]
    router = _by_kind(manifests, "Deployment")["moteur-router"]["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "moteur-provider-keys"}} in router["envFrom"]


def test_production_takes_provider_keys_and_store_addresses_from_existing_secrets() -> None:
    manifests = _render(PRODUCTION)
    assert set(_by_kind(manifests, "Secret")) == {"moteur-mesh-signing", "moteur-mesh-public"}  # generated keys
    for deployment in _by_kind(manifests, "Deployment").values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
        assert refs == {"MOTEUR_MONGO_URI": {"name": "moteur-stores", "key": "mongodb-uri"},
                        "MOTEUR_REDIS_URL": {"name": "moteur-stores", "key": "redis-url"}}
    router = _by_kind(manifests, "Deployment")["moteur-router"]["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "moteur-provider-keys"}} in router["envFrom"]


def test_images_follow_the_repository_pattern_or_a_full_override() -> None:
    deployments = _by_kind(_render(PRODUCTION), "Deployment")
    image = deployments["moteur-gateway"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example.com/ai/moteur-gateway:1.2.3"
    overridden = _by_kind(_render({"services": {"router": {"image": "local/router:abc"}}}), "Deployment")
    assert overridden["moteur-router"]["spec"]["template"]["spec"]["containers"][0]["image"] == "local/router:abc"


def test_skaffold_builds_every_image_the_chart_deploys() -> None:
    skaffold = yaml.safe_load((CHART.parents[2] / "skaffold.yaml").read_text())
    built = {a["image"] for a in skaffold["build"]["artifacts"]}
    assert built == {f"moteur-{s}" for s in SERVICES} | {"moteur-model-server"}
    release = skaffold["deploy"]["helm"]["releases"][0]
    assert Path(CHART.parents[2] / release["chartPath"]) == CHART
    assert set(release["setValueTemplates"]) == {f"services.{s}.image" for s in SERVICES} | {"modelServer.image"}


@pytest.mark.parametrize("values", [{}, PRODUCTION], ids=["default", "production"])
def test_the_gateway_mounts_tiers_it_can_load(values: dict[str, Any]) -> None:
    manifests = _render(values)
    shipped = _by_kind(manifests, "ConfigMap")["moteur-tiers"]["data"]["tiers.yaml"]
    tiers = TiersConfig.model_validate(yaml.safe_load(shipped))
    assert tiers == load_tiers(CHART.parents[2] / "config" / "tiers.yaml")  # the chart ships the repo's example
    gateway = _by_kind(manifests, "Deployment")["moteur-gateway"]["spec"]["template"]["spec"]
    assert _volume_names(gateway) == {"tmp", "tiers"}
    assert {"name": "tiers", "configMap": {"name": "moteur-tiers"}} in gateway["volumes"]
    assert _by_kind(manifests, "ConfigMap")["moteur-gateway"]["data"]["MOTEUR_TIERS_FILE"] == "/etc/moteur/tiers.yaml"


def test_the_prometheus_rule_covers_quota_alerts() -> None:
    (rule,) = [m for m in _render(PRODUCTION) if m["kind"] == "PrometheusRule"]
    names = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"MoteurQuotaThresholdReached", "MoteurLimiterRedisUnavailable"} <= names


def test_dashboards_ship_as_configmaps_and_query_metrics_moteur_exports() -> None:
    import json
    import re

    from prometheus_client import REGISTRY

    # Imported for their side effect: each module registers its service's metrics.
    import moteur.files.metrics
    import moteur.gateway.metrics
    import moteur.memory.metrics
    import moteur.router.metrics
    import moteur.runtime.group_commit
    import moteur.tools.metrics  # noqa: F401 (the name `moteur` is bound, unused)

    exported = {metric.name for metric in REGISTRY.collect()}
    configs = [m for m in _render({}) if m["kind"] == "ConfigMap" and m["metadata"]["labels"].get("grafana_dashboard")]
    assert configs
    for config in configs:
        for text in config["data"].values():
            dashboard = json.loads(text)
            for panel in dashboard["panels"]:
                for target in panel["targets"]:
                    names = set(re.findall(r"\b(moteur_[a-z_]+?)(?:_bucket|_total|_sum|_count)?\b", target["expr"]))
                    assert names and names <= exported, (panel["title"], names - exported)


def test_the_memory_service_gets_settings_it_can_load_for_its_milvus_index(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _by_kind(_render({}), "ConfigMap")["moteur-memory"]["data"]
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    memory = MemorySettings()
    assert memory.milvus_index_type == "HNSW" and memory.milvus_index_params == {"M": 16, "efConstruction": 200}
    assert memory.milvus_search_params == {"ef": 64} and memory.milvus_uri.startswith("http")


@pytest.mark.parametrize("enabled", [True, False], ids=["http", "no-http"])
def test_the_gateway_publishes_its_http_api_when_enabled(enabled: bool) -> None:
    manifests = _render({"gateway": {"http": {"enabled": enabled, "port": 8181}}})
    container = _by_kind(manifests, "Deployment")["moteur-gateway"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    service_ports = {p["name"]: p["port"] for p in _by_kind(manifests, "Service")["moteur-gateway"]["spec"]["ports"]}
    policy = _by_kind(manifests, "NetworkPolicy")["moteur-gateway"]["spec"]["ingress"][0]
    if enabled:
        assert {"name": "http", "containerPort": 8181} in container["ports"]
        assert env["MOTEUR_HTTP_PORT"] == "8181" and service_ports["http"] == 8181
        assert {"port": 8181, "protocol": "TCP"} in policy["ports"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    else:
        assert "http" not in {p["name"] for p in container["ports"]} and "http" not in service_ports
        assert env["MOTEUR_HTTP_PORT"] == "0" and len(policy["ports"]) == 1
        assert container["readinessProbe"]["grpc"] == {"port": 50051}
    assert service_ports["grpc"] == 50051
