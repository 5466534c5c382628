"""The chart's production shape: every service unprivileged with probes on its gRPC health service, resources
and its own ServiceAccount; disruption budgets; autoscaling for the gateway and the router; NetworkPolicies
that let only the gateway be reached from outside the mesh; rollouts when a ConfigMap changes; TLS and the
stores as options; the local values for one node; the images built from the one Dockerfile."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_chart import CHART, DEPENDENCIES, KUBERNETES_VERSION, LOCAL, PRODUCTION, _by_kind, _render

from moteur.devstack.stack import SERVICES

ROOT = CHART.parents[2]
# Who calls whom inside the mesh (the only ingress an internal service accepts on its gRPC port).
CALLERS = {
    "router": {"gateway", "memory", "files"},
    "memory": {"gateway", "router", "tools"},
    "files": {"gateway", "tools"},
    "tools": {"gateway"},
    "model-server": {"router"},
}


def _pod(manifests: list[dict[str, Any]], service: str) -> dict[str, Any]:
    return _by_kind(manifests, "Deployment")[f"moteur-{service}"]["spec"]["template"]


def _validate(manifests: list[dict[str, Any]]) -> None:
    for manifest in manifests:
        if not manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def _checksums(values: dict[str, Any]) -> dict[str, str]:
    deployments = _by_kind(_render(values), "Deployment")
    return {s: deployments[f"moteur-{s}"]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for s in SERVICES}


def test_each_service_is_probed_on_its_health_service_with_resources_and_its_own_account() -> None:
    manifests = _render(PRODUCTION)
    accounts = _by_kind(manifests, "ServiceAccount")
    for service in SERVICES:
        pod = _pod(manifests, service)["spec"]
        (container,) = pod["containers"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            # production runs mutual TLS: probes go to the plaintext port that serves only health
            assert container[probe]["grpc"] == {"port": 50060}, (service, probe)
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert pod["serviceAccountName"] == f"moteur-{service}"
        assert accounts[f"moteur-{service}"]["automountServiceAccountToken"] is False
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"]}}
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    # Memory loads its embedding model before serving: the most generous start.
    startup = {s: _pod(manifests, s)["spec"]["containers"][0]["startupProbe"] for s in SERVICES}
    budget = {s: p["periodSeconds"] * p["failureThreshold"] for s, p in startup.items()}
    assert budget["memory"] == max(budget.values()) >= 300


def test_every_component_has_a_disruption_budget_that_never_blocks_a_drain() -> None:
    budgets = _by_kind(_render(PRODUCTION), "PodDisruptionBudget")
    assert set(budgets) == {f"moteur-{s}" for s in SERVICES}
    for service in SERVICES:
        spec = budgets[f"moteur-{service}"]["spec"]
        assert spec["maxUnavailable"] == 1
        assert spec["selector"]["matchLabels"]["app.kubernetes.io/component"] == service
    custom = _by_kind(_render({"services": {"gateway": {"pdb": {"minAvailable": 2}}}}), "PodDisruptionBudget")
    assert custom["moteur-gateway"]["spec"] == {"minAvailable": 2, "selector": {"matchLabels": {
        "app.kubernetes.io/instance": "moteur", "app.kubernetes.io/component": "gateway"}}}
    assert "moteur-model-server" in custom  # the local model server too, when it is on


def test_the_gateway_and_the_router_scale_on_cpu_and_the_gateway_on_its_queue_depth() -> None:
    manifests = _render(PRODUCTION)
    autoscalers = _by_kind(manifests, "HorizontalPodAutoscaler")
    assert set(autoscalers) == {"moteur-gateway", "moteur-router"}
    for name, hpa in autoscalers.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert "replicas" not in _by_kind(manifests, "Deployment")[name]["spec"]  # the HPA owns them
    (queue,) = [m for m in autoscalers["moteur-gateway"]["spec"]["metrics"] if m["type"] == "Pods"]
    assert queue["pods"]["metric"]["name"] == "moteur_queue_depth"
    assert [m["type"] for m in autoscalers["moteur-router"]["spec"]["metrics"]] == ["Resource"]
    # Each gateway dispatches 1/maxReplicas of the models' capacity: never more than the models take.
    settings = _by_kind(manifests, "ConfigMap")["moteur-gateway"]["data"]
    assert settings["MOTEUR_QUEUE_REPLICAS"] == str(autoscalers["moteur-gateway"]["spec"]["maxReplicas"])
    # Without autoscaling the Deployments keep their replicas.
    deployments = _by_kind(_render({}), "Deployment")
    assert deployments["moteur-gateway"]["spec"]["replicas"] == 2
    assert _by_kind(_render({}), "HorizontalPodAutoscaler") == {}


def _ingress(manifests: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {n.removeprefix("moteur-"): p["spec"].get("ingress", [])
            for n, p in _by_kind(manifests, "NetworkPolicy").items()}


def test_only_the_gateway_is_reachable_from_outside_the_mesh() -> None:
    manifests = _render(PRODUCTION)
    policies = _by_kind(manifests, "NetworkPolicy")
    deny = policies["moteur-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny  # egress restricted in production
    assert deny["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "moteur",
                                                  "app.kubernetes.io/instance": "moteur"}
    ingress = _ingress(manifests)
    assert set(ingress) == {"default-deny", *SERVICES}
    for component, rules in ingress.items():
        for rule in rules:
            ports = {p["port"] for p in rule["ports"]}
            if ports == {9090}:  # metrics: Prometheus's namespace only
                assert rule["from"] == [{"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": "monitoring"}}}]
            elif component == "gateway":
                assert ports == {50051, 8080} and "from" not in rule  # the public API: gRPC and HTTP
            else:
                assert ports == {50051}
                peers = rule["from"]
                assert all(set(p) == {"podSelector"} for p in peers), component  # no namespace, no ipBlock
                callers = {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in peers}
                assert callers == CALLERS[component]
    # The gateway may be limited to chosen clients.
    clients = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}]
    (public, _) = _ingress(_render({"networkPolicy": {"gatewayFrom": clients}}))["gateway"]
    assert public["from"] == clients
    # The local model server answers the router only.
    (model_server,) = _ingress(_render({}))["model-server"]
    assert {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in model_server["from"]} \
        == {"router"} and model_server["ports"] == [{"port": 8080, "protocol": "TCP"}]


def test_egress_can_be_restricted_to_dns_the_release_and_chosen_destinations() -> None:
    providers = {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
    values = {"networkPolicy": {"egress": {"restrict": True, "to": [providers]}}}
    manifests = _render(values)
    deny = _by_kind(manifests, "NetworkPolicy")["moteur-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert deny["egress"][0]["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    assert deny["egress"][1] == {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "moteur"}}}]}
    # a catch-all ipBlock never reaches the instance metadata (test_chart_hardening)
    metadata = ["169.254.169.254/32"]
    assert deny["egress"][2] == {**providers, "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": metadata}}]}
    _validate(manifests)


@pytest.mark.parametrize(("change", "rolled"), [
    ({"router": {"models": {"routes": [{"name": "chat", "candidates": ["smollm2"], "system_prompt": "Be brief."}]}}},
     {"router"}),
    ({"gateway": {"tiers": {"free": {"weight": 3}}}}, {"gateway"}),
    ({"tools": {"policy": {"defaults": {"allow": ["calculator"]}}}}, {"tools"}),
    ({"files": {"retentionDays": 7}}, {"files"}),
    ({"logLevel": "DEBUG"}, set(SERVICES)),
], ids=["models", "tiers", "tool-policy", "files-settings", "every-service-setting"])
def test_a_changed_config_map_rolls_the_pods_that_read_it(change: dict[str, Any], rolled: set[str]) -> None:
    before, after = _checksums({}), _checksums(change)
    assert {s for s in SERVICES if before[s] != after[s]} == rolled


def test_tls_between_services_mounts_the_certificates_and_names_them_in_the_settings() -> None:
    manifests = _render({"tls": {"enabled": True, "secretName": "moteur-mesh-tls"}})
    _validate(manifests)
    for service in SERVICES:
        pod = _pod(manifests, service)["spec"]
        assert {"name": "tls", "secret": {"secretName": "moteur-mesh-tls"}} in pod["volumes"]
        assert {"name": "tls", "mountPath": "/var/run/moteur/tls", "readOnly": True} \
            in pod["containers"][0]["volumeMounts"]
        settings = _by_kind(manifests, "ConfigMap")[f"moteur-{service}"]["data"]
        assert settings["MOTEUR_TLS_CERT_FILE"] == "/var/run/moteur/tls/tls.crt"
        assert settings["MOTEUR_TLS_KEY_FILE"] == "/var/run/moteur/tls/tls.key"
        assert settings["MOTEUR_TLS_CA_FILE"] == "/var/run/moteur/tls/ca.crt"
    assert "MOTEUR_TLS_CERT_FILE" not in _by_kind(_render({}), "ConfigMap")["moteur-gateway"]["data"]


def test_the_stores_are_optional_dependencies_or_external_addresses() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    declared = {d["name"]: d["condition"] for d in chart["dependencies"]}
    assert declared == {name: f"{name}.enabled" for name in DEPENDENCIES}
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert not any(defaults[name]["enabled"] for name in DEPENDENCIES)
    external = _render({"milvus": {"uri": "http://milvus.db:19530"}})
    assert _by_kind(external, "Secret")["moteur-stores"]["stringData"] == {
        "mongodb-uri": "mongodb://mongodb:27017/?replicaSet=rs0", "redis-url": "redis://redis:6379/0"}
    assert _by_kind(external, "ConfigMap")["moteur-memory"]["data"]["MOTEUR_MILVUS_URI"] == "http://milvus.db:19530"
    # Enabled (the subcharts themselves need `helm dependency build`): the addresses become the release's own.
    in_release = _render({"mongodb": {"enabled": True, "auth": {"passwords": ["p@ss"]}},
                          "redis": {"enabled": True, "auth": {"password": "r3d"}}, "milvus": {"enabled": True}})
    _validate(in_release)
    stores = _by_kind(in_release, "Secret")["moteur-stores"]["stringData"]
    assert stores["mongodb-uri"] == ("mongodb://moteur:p%40ss@moteur-mongodb-0.moteur-mongodb-headless:27017,"
                                     "moteur-mongodb-1.moteur-mongodb-headless:27017,"
                                     "moteur-mongodb-2.moteur-mongodb-headless:27017/moteur?replicaSet=rs0")
    assert stores["redis-url"] == "redis://:r3d@moteur-redis-master:6379/0"
    assert _by_kind(in_release, "ConfigMap")["moteur-memory"]["data"]["MOTEUR_MILVUS_URI"] == "http://moteur-milvus:19530"


def test_the_local_values_fit_one_node() -> None:
    manifests = _render(LOCAL)
    deployments = _by_kind(manifests, "Deployment")
    assert {d["spec"]["replicas"] for d in deployments.values()} == {1}
    assert "moteur-model-server" in deployments
    assert _by_kind(manifests, "HorizontalPodAutoscaler") == {} and _by_kind(manifests, "PodDisruptionBudget") == {}
    stores = _by_kind(manifests, "Secret")["moteur-stores"]["stringData"]
    assert stores == {"mongodb-uri": "mongodb://moteur-mongodb-0.moteur-mongodb-headless:27017/moteur?replicaSet=rs0",
                      "redis-url": "redis://moteur-redis-master:6379/0"}


def test_skaffold_deploys_the_local_values_in_dev_and_the_production_values_in_prod() -> None:
    skaffold = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    profiles = {p["name"]: p for p in skaffold["profiles"]}
    for profile, values in (("dev", "values-local.yaml"), ("prod", "values-production.yaml")):
        (patch,) = [p for p in profiles[profile]["patches"] if p["path"].endswith("/valuesFiles")]
        assert [ROOT / f for f in patch["value"]] == [CHART / values]
    assert profiles["prod"]["build"]["local"]["push"] is True


def _container_engine() -> tuple[str | None, str]:
    """The first engine that answers (a docker CLI without its daemon does not), and what was looked at."""
    seen = []
    for engine in ("docker", "podman", "buildah"):
        if shutil.which(engine) is None:
            continue
        probe = subprocess.run([engine, "info"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return engine, ""
        error = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        seen.append(f"{engine} is installed but `{engine} info` fails: {error}")
    return None, "; ".join(seen) or "none of docker, podman, buildah is installed"


@pytest.mark.parametrize("target", [*SERVICES, "model-server"])
def test_the_images_build_from_the_one_dockerfile(target: str) -> None:
    engine, why = _container_engine()
    if engine is None:
        pytest.skip(f"no container engine on this machine: {why}; the images are not built here")
    args = ["--target", "model-server"] if target == "model-server" else ["--build-arg", f"SERVICE={target}"]
    command = [engine, "bud" if engine == "buildah" else "build", *args, "-t", f"moteur-{target}:test",
               "-f", str(ROOT / "Dockerfile"), str(ROOT)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-4000:]


def test_the_dockerfile_runs_services_as_the_user_the_chart_expects() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "useradd --uid 10001" in dockerfile and dockerfile.count("USER 10001") == 2
    assert _pod(_render({}), "gateway")["spec"]["securityContext"]["runAsUser"] == 10001


def test_every_value_in_values_yaml_is_documented() -> None:
    """Each top-level key of values.yaml has a comment on its line or just above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    for index, line in enumerate(lines):
        if line and not line.startswith(("#", " ")):
            above = lines[index - 1] if index else ""
            assert "#" in line or above.startswith("#") or above.strip().startswith("#"), line
    assert Path(CHART / "values-local.yaml").exists()
