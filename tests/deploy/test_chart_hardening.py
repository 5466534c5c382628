"""The chart's hardened production shape (issue 16, items 2 and 5): egress restricted in production and never to
the instance metadata, the gateway's metrics port internal only, scheduling values with a default spread over
zones and nodes, files rolled out by Recreate on its volume, PDB overrides of 0 honoured, Secrets in the rollout
checksums, the alert webhook in a Secret, rollouts that let calls finish (preStop, per-service drain, grace
period), the bitnamilegacy images of the subcharts, and a values.schema.json that refuses unknown keys and
wrong types."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from test_chart import CHART, LOCAL, PRODUCTION, _by_kind, _render
from test_chart_production import _pod, _validate

from moteur.devstack.stack import SERVICES
from moteur.gateway.settings import GatewaySettings
from moteur.runtime.settings import ServerSettings

DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
METADATA = "169.254.169.254/32"
# Mesh keys given as Secrets: a render then generates none, so that two renders differ only by what changed.
STABLE = {"meshIdentity": {"signingSecret": "mesh-signing", "publicSecret": "mesh-public"}}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def _policies(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n.removeprefix("moteur-"): p["spec"] for n, p in _by_kind(manifests, "NetworkPolicy").items()}


# --- Egress --------------------------------------------------------------------------------------------------


def test_production_restricts_egress_to_the_stores_models_and_allowlisted_hosts_never_the_metadata() -> None:
    manifests = _render(PRODUCTION)
    _validate(manifests)
    policies = _policies(manifests)
    deny = policies["default-deny"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    rules = [(component, rule) for component, spec in policies.items() for rule in spec.get("egress", [])]
    for component, rule in rules:
        if "to" not in rule:  # a rule without `to` reaches every address on its ports: DNS alone may
            assert component == "default-deny" and {p["port"] for p in rule["ports"]} == {53}
            continue
        for peer in rule["to"]:
            block = peer.get("ipBlock")
            if block and block["cidr"] == "0.0.0.0/0":
                assert METADATA in block.get("except", []), (component, rule)
    # Every pod: DNS, the release's pods, MongoDB and Redis; the router the providers (443), tools its hosts (443),
    # memory Milvus in its namespace; the gateway and files nothing more.
    ports = {c: {p["port"] for r in spec.get("egress", []) for p in r.get("ports", [])} for c, spec in policies.items()}
    assert ports["default-deny"] == {53, 27017, 6379}
    assert ports["router"] == {443} and ports["tools"] == {443} and ports["memory"] == {19530}
    assert "egress" not in policies["gateway"] and "egress" not in policies["files"]
    assert policies["router"]["policyTypes"] == ["Ingress", "Egress"]
    assert policies["gateway"]["policyTypes"] == ["Ingress"]
    # The defaults keep egress open (a development cluster): nothing restricted, nothing blocked.
    assert _policies(_render({}))["default-deny"]["policyTypes"] == ["Ingress"]


def test_the_metadata_is_added_to_every_catch_all_ip_block_beside_the_rules_own_exceptions() -> None:
    rule = {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}, {"ipBlock": {"cidr": "::/0"}},
                   {"ipBlock": {"cidr": "192.168.0.0/16"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
    values = {"networkPolicy": {"egress": {"restrict": True, "to": [rule], "services": {"tools": [rule]}}}}
    manifests = _render(values)
    _validate(manifests)
    policies = _policies(manifests)
    for spec in (policies["default-deny"], policies["tools"]):
        (peers,) = [r["to"] for r in spec["egress"] if r.get("ports") == rule["ports"]]
        assert peers == [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", METADATA]}},
                         {"ipBlock": {"cidr": "::/0", "except": ["fd00:ec2::254/128"]}},
                         {"ipBlock": {"cidr": "192.168.0.0/16"}}]  # not a catch-all: left as written
    assert "egress" not in policies["router"]  # another service's rules are not the router's


# --- The metrics port ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [{}, PRODUCTION], ids=["default", "production"])
def test_the_gateway_publishes_only_its_apis_and_its_metrics_stay_in_the_cluster(values: dict[str, Any]) -> None:
    services = _by_kind(_render(values), "Service")
    gateway = services["moteur-gateway"]["spec"]
    assert gateway["type"] == ("LoadBalancer" if values else "ClusterIP")
    assert [(p["name"], p["port"]) for p in gateway["ports"]] == [("grpc", 50051), ("http", 8080)]
    metrics = services["moteur-gateway-metrics"]
    assert metrics["spec"]["type"] == "ClusterIP" and metrics["spec"]["selector"] == gateway["selector"]
    assert [(p["name"], p["port"]) for p in metrics["spec"]["ports"]] == [("metrics", 9090)]
    for name, service in services.items():
        exposed = service["spec"].get("type", "ClusterIP") != "ClusterIP"
        assert not (exposed and any(p["port"] == 9090 for p in service["spec"]["ports"])), name
    # One Service with a metrics port per mesh service (one scrape target per pod), labelled with its job.
    for service in SERVICES:
        with_metrics = [n for n, s in services.items() if s["metadata"]["labels"]["app.kubernetes.io/component"]
                        == service and any(p["name"] == "metrics" for p in s["spec"]["ports"])]
        assert len(with_metrics) == 1, (service, with_metrics)
        assert services[with_metrics[0]]["metadata"]["labels"]["moteur.io/metrics-job"] == f"moteur-{service}"
        if service != "gateway":  # the headless Services stay, gRPC only
            assert [p["port"] for p in services[f"moteur-{service}-headless"]["spec"]["ports"]] == [50051]


# --- Scheduling -----------------------------------------------------------------------------------------------


def test_each_service_spreads_over_zones_and_nodes_by_default_without_ever_staying_pending() -> None:
    manifests = _render(PRODUCTION)
    for service in SERVICES:
        pod = _pod(manifests, service)["spec"]
        selector = {"matchLabels": {"app.kubernetes.io/instance": "moteur", "app.kubernetes.io/component": service}}
        assert pod["topologySpreadConstraints"] == [
            {"labelSelector": selector, "maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway"}
            for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")]
        assert not {"nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets"} & set(pod)


def test_scheduling_values_apply_to_every_service_and_a_services_own_replace_them() -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}}
    toleration = {"key": "dedicated", "operator": "Equal", "value": "ai", "effect": "NoSchedule"}
    own_spread = {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
                  "labelSelector": {"matchLabels": {"team": "ai"}}}
    values = {
        "nodeSelector": {"pool": "general"}, "tolerations": [toleration], "affinity": affinity,
        "priorityClassName": "moteur-high", "imagePullSecrets": ["registry-a", {"name": "registry-b"}],
        "services": {
            "router": {"nodeSelector": {"pool": "cpu-large"}, "priorityClassName": "moteur-critical"},
            "files": {"topologySpreadConstraints": [], "tolerations": []},
            "tools": {"topologySpreadConstraints": [own_spread], "imagePullSecrets": []},
        },
    }
    manifests = _render(values)
    _validate(manifests)
    pods = {s: _pod(manifests, s)["spec"] for s in SERVICES}
    for service, pod in pods.items():
        assert pod["affinity"] == affinity
        if service not in ("router",):
            assert pod["nodeSelector"] == {"pool": "general"} and pod["priorityClassName"] == "moteur-high"
        if service not in ("files",):
            assert pod["tolerations"] == [toleration]
        if service != "tools":
            assert pod["imagePullSecrets"] == [{"name": "registry-a"}, {"name": "registry-b"}]
    assert pods["router"]["nodeSelector"] == {"pool": "cpu-large"}
    assert pods["router"]["priorityClassName"] == "moteur-critical"
    assert "topologySpreadConstraints" not in pods["files"] and "tolerations" not in pods["files"]
    assert pods["tools"]["topologySpreadConstraints"] == [own_spread] and "imagePullSecrets" not in pods["tools"]
    assert len(pods["gateway"]["topologySpreadConstraints"]) == 2


# --- Files: Recreate on its volume, a bounded emptyDir -----------------------------------------------------------


def test_files_on_a_volume_is_recreated_and_its_empty_dir_is_bounded() -> None:
    on_volume = _by_kind(_render(PRODUCTION), "Deployment")
    assert on_volume["moteur-files"]["spec"]["strategy"] == {"type": "Recreate"}
    assert {"name": "files", "persistentVolumeClaim": {"claimName": "moteur-files"}} \
        in on_volume["moteur-files"]["spec"]["template"]["spec"]["volumes"]
    assert all("strategy" not in on_volume[f"moteur-{s}"]["spec"] for s in SERVICES if s != "files")  # rolling
    ephemeral = _by_kind(_render({"files": {"persistence": {"emptyDirSizeLimit": "2Gi"}}}), "Deployment")
    assert "strategy" not in ephemeral["moteur-files"]["spec"]  # nothing to let go of: rolling
    volumes = {v["name"]: v for v in ephemeral["moteur-files"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["files"] == {"name": "files", "emptyDir": {"sizeLimit": "2Gi"}}
    assert volumes["tmp"]["emptyDir"]["sizeLimit"] == "256Mi"


# --- Disruption budgets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "expected"), [
    ({"services": {"gateway": {"pdb": {"maxUnavailable": 0}}}}, {"gateway": {"maxUnavailable": 0}}),
    ({"services": {"gateway": {"pdb": {"minAvailable": 0}}}}, {"gateway": {"minAvailable": 0}}),
    ({"podDisruptionBudget": {"maxUnavailable": 0}}, {s: {"maxUnavailable": 0} for s in SERVICES}),
    ({"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": None}}, {s: {"minAvailable": 1} for s in SERVICES}),
    ({"podDisruptionBudget": {"maxUnavailable": "50%"}}, {s: {"maxUnavailable": "50%"} for s in SERVICES}),
    ({}, {s: {"maxUnavailable": 1} for s in SERVICES}),
], ids=["service-max-0", "service-min-0", "release-max-0", "release-min", "percent", "default"])
def test_a_disruption_budget_renders_the_value_it_is_given_zero_included(
        values: dict[str, Any], expected: dict[str, dict[str, Any]]) -> None:
    budgets = _by_kind(_render(values), "PodDisruptionBudget")
    for service, bound in expected.items():
        spec = budgets[f"moteur-{service}"]["spec"]
        assert {k: v for k, v in spec.items() if k != "selector"} == bound, service
    if "services" in values:  # one service's override leaves the others at the release's budget
        assert budgets["moteur-router"]["spec"]["maxUnavailable"] == 1


# --- Secrets in the rollout checksum; the alert webhook in a Secret ---------------------------------------------


def _annotations(values: dict[str, Any]) -> dict[str, dict[str, str]]:
    deployments = _by_kind(_render(values), "Deployment")
    return {s: deployments[f"moteur-{s}"]["spec"]["template"]["metadata"]["annotations"] for s in SERVICES}


@pytest.mark.parametrize(("change", "rolled"), [
    ({"providerKeys": {"OPENAI_API_KEY": "sk-new"}}, {"router"}),
    ({"providerKeysSecret": "other-provider-keys"}, {"router"}),
    ({"mongodb": {"uri": "mongodb://other:27017/?replicaSet=rs0"}}, set(SERVICES)),
    ({"redis": {"url": "redis://other:6379/0"}}, set(SERVICES)),
    ({"storesExistingSecret": "stores-v2"}, set(SERVICES)),
    ({"gateway": {"alertWebhookUrl": "https://hooks.example.com/t0ken"}}, {"gateway"}),
    ({"files": {"storage": "s3", "s3": {"bucket": "b", "accessKeyId": "AKIA", "secretAccessKey": "new"}}},
     {"files"}),
    ({"meshIdentity": {"signingSecret": "mesh-signing-v2"}}, set(SERVICES)),
], ids=["provider-keys", "provider-keys-secret", "mongodb", "redis", "stores-secret", "alert-webhook", "files-s3",
        "mesh-identity"])
def test_a_changed_secret_rolls_the_pods_that_read_it(change: dict[str, Any], rolled: set[str]) -> None:
    before, after = _annotations(STABLE), _annotations(_merge(STABLE, change))
    assert {s for s in SERVICES if before[s]["checksum/secrets"] != after[s]["checksum/secrets"]} == rolled
    if "files" not in change:  # the settings (ConfigMaps) did not change: that checksum stays
        assert all(before[s]["checksum/config"] == after[s]["checksum/config"] for s in SERVICES)


def test_the_checksum_covers_the_mesh_keys_the_chart_renders_once_per_render() -> None:
    """The generated (and lookup-kept) signing keys: the checksum is of the keys the Secret holds."""
    manifests = _render({})
    secrets = _by_kind(manifests, "Secret")
    keys = {k.removesuffix(".key"): base64.b64decode(v).decode()
            for k, v in secrets["moteur-mesh-signing"]["data"].items()}
    stores = secrets["moteur-stores"]["stringData"]
    inputs = {"alertWebhook": "", "mesh": json.dumps(keys, separators=(",", ":"), sort_keys=True),
              "stores": [stores["mongodb-uri"], stores["redis-url"]]}
    expected = hashlib.sha256(json.dumps(inputs, separators=(",", ":"), sort_keys=True).encode()).hexdigest()
    assert _pod(manifests, "gateway")["metadata"]["annotations"]["checksum/secrets"] == expected


def _env_names(manifests: list[dict[str, Any]], service: str) -> set[str]:
    return {e["name"] for e in _pod(manifests, service)["spec"]["containers"][0]["env"]}


def test_the_alert_webhook_url_is_a_secret_passed_as_env() -> None:
    url = "https://hooks.example.com/services/T0KEN"
    manifests = _render({"gateway": {"alertWebhookUrl": url}})
    assert url not in yaml.safe_dump([m for m in manifests if m["kind"] == "ConfigMap"])
    secret = _by_kind(manifests, "Secret")["moteur-gateway-alerts"]
    assert secret["stringData"] == {"alert-webhook-url": url}
    gateway = _pod(manifests, "gateway")["spec"]["containers"][0]
    ref = {"name": "MOTEUR_ALERT_WEBHOOK_URL",
           "valueFrom": {"secretKeyRef": {"name": "moteur-gateway-alerts", "key": "alert-webhook-url"}}}
    assert ref in gateway["env"]
    assert "alert_webhook_url" in GatewaySettings.model_fields  # what MOTEUR_ALERT_WEBHOOK_URL sets
    for service in SERVICES:
        if service != "gateway":
            assert "MOTEUR_ALERT_WEBHOOK_URL" not in _env_names(manifests, service)
    # A Secret you manage instead; none rendered. Without a URL, no env at all (the setting's default: not sent).
    existing = _render({"gateway": {"alertWebhookUrl": url, "alertWebhookExistingSecret": "alerts"}})
    assert "moteur-gateway-alerts" not in _by_kind(existing, "Secret")
    env = _pod(existing, "gateway")["spec"]["containers"][0]["env"]
    assert {**ref, "valueFrom": {"secretKeyRef": {"name": "alerts", "key": "alert-webhook-url"}}} in env
    for values in ({}, PRODUCTION):
        rendered = _render(values)
        assert "MOTEUR_ALERT_WEBHOOK_URL" not in _env_names(rendered, "gateway")
        assert "MOTEUR_ALERT_WEBHOOK_URL" not in _by_kind(rendered, "ConfigMap")["moteur-gateway"]["data"]


# --- Rollouts that finish calls ---------------------------------------------------------------------------------


def test_a_deleted_pod_pauses_then_drains_as_long_as_its_longest_call_within_its_grace_period() -> None:
    manifests = _render(PRODUCTION)
    configs = _by_kind(manifests, "ConfigMap")
    drains = {s: int(configs[f"moteur-{s}"]["data"]["MOTEUR_DRAIN_SECONDS"]) for s in SERVICES}
    assert drains == {"gateway": 120, "router": 60, "memory": 15, "files": 30, "tools": 30}
    assert drains["gateway"] >= GatewaySettings().tool_loop_timeout_seconds  # the longest chat turn
    registry = yaml.safe_load(configs["moteur-models"]["data"]["models.yaml"])["models"]
    timeouts = [m.get("timeout_seconds", 60) for m in [*registry, *DEFAULTS["router"]["models"]["models"]]]
    assert drains["router"] >= max(timeouts)  # the longest model call (the registry's default: 60 s)
    for service in SERVICES:
        pod = _pod(manifests, service)["spec"]
        (container,) = pod["containers"]
        assert container["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
        assert pod["terminationGracePeriodSeconds"] == 5 + drains[service] + 10
        # The settings read it as the drain (moteur.runtime.server: server.stop(drain_seconds)).
        settings = ServerSettings.model_validate({"drain_seconds": configs[f"moteur-{service}"]["data"]
                                                  ["MOTEUR_DRAIN_SECONDS"]})
        assert settings.drain_seconds == drains[service]
        # Probes as they were: startup, readiness and liveness on the gRPC health service.
        assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(container)


def test_the_grace_period_may_be_set_per_service_but_never_below_pause_and_drain() -> None:
    values = {"preStopSeconds": 3, "drainSeconds": 20, "services": {"tools": {"terminationGracePeriodSeconds": 90},
                                                                    "memory": {"drainSeconds": None}}}
    manifests = _render(values)
    assert _pod(manifests, "tools")["spec"]["terminationGracePeriodSeconds"] == 90
    assert _pod(manifests, "memory")["spec"]["terminationGracePeriodSeconds"] == 3 + 20 + 10  # the release's drain
    assert _by_kind(manifests, "ConfigMap")["moteur-memory"]["data"]["MOTEUR_DRAIN_SECONDS"] == "20"
    assert _pod(manifests, "gateway")["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"] == 3
    with pytest.raises(helm_python.HelmError, match="terminationGracePeriodSeconds"):
        _render({"services": {"gateway": {"terminationGracePeriodSeconds": 60}}})  # < 5 + 120
    no_pause = _pod(_render({"preStopSeconds": 0}), "gateway")["spec"]
    assert "lifecycle" not in no_pause["containers"][0] and no_pause["terminationGracePeriodSeconds"] == 130


# --- The Bitnami subcharts' images ------------------------------------------------------------------------------


def test_the_bitnami_subcharts_pull_from_bitnamilegacy_where_they_are_enabled() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    bitnami = [d["name"] for d in chart["dependencies"] if "bitnamicharts" in d["repository"]]
    assert bitnami == ["mongodb", "redis"]
    local = _merge(DEFAULTS, LOCAL)
    for name in bitnami:
        assert local[name]["enabled"], name  # the local values install them
        assert local[name]["image"]["repository"] == f"bitnamilegacy/{name}"
        # every other Bitnami image the subchart may pull, when its feature is on
        for values in (local[name]["metrics"], local[name]["volumePermissions"]):
            assert values["image"]["repository"].startswith("bitnamilegacy/")
    assert local["redis"]["sentinel"]["image"]["repository"] == "bitnamilegacy/redis-sentinel"
    # A substituted image fails the Bitnami charts' image check without this.
    assert local["global"]["security"]["allowInsecureImages"] is True
    # Milvus (zilliztech) pulls milvusdb/ and minio/ images: no override.
    assert "image" not in local["milvus"]


# --- values.schema.json -----------------------------------------------------------------------------------------

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
BAD_VALUES = """\
services:
  gateway:
    replicas: two            # wrong type
    drainSecond: 120         # unknown key (a typo of drainSeconds)
networkPolicy:
  egress:
    restict: true            # unknown key (a typo of restrict)
"""


def _resolve(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The schema and those it refers to or combines (allOf)."""
    if "$ref" in schema:
        return _resolve(SCHEMA["definitions"][schema["$ref"].rsplit("/", 1)[-1]])
    return [schema, *(s for part in schema.get("allOf", []) for s in _resolve(part))]


def _undeclared(values: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Keys of `values` the schema does not declare, down to the blocks it leaves open."""
    if not isinstance(values, dict):
        return []
    parts = _resolve(schema)
    properties = {k: v for part in parts for k, v in part.get("properties", {}).items()}
    closed = any(part.get("additionalProperties") is False for part in parts)
    missing = []
    for key, value in values.items():
        if key in properties:
            missing += _undeclared(value, properties[key], f"{path}.{key}")
        elif closed:
            missing.append(f"{path}.{key}")
    return missing


@pytest.mark.parametrize("values", [{}, LOCAL, PRODUCTION], ids=["default", "local", "production"])
def test_the_shipped_values_meet_the_schema_which_declares_each_of_their_keys(values: dict[str, Any]) -> None:
    chart = helm_python.Chart.load(CHART)
    assert chart.schema == SCHEMA  # the file the chart ships
    chart.validate_schema(values)
    assert _undeclared(_merge(DEFAULTS, values), SCHEMA) == []
    assert SCHEMA["additionalProperties"] is False


def test_a_values_file_with_an_unknown_key_or_a_wrong_type_fails_to_render_and_to_lint(tmp_path: Path) -> None:
    bad_file = tmp_path / "bad-values.yaml"
    bad_file.write_text(BAD_VALUES)
    bad = helm_python.values_from_yaml(bad_file.read_text())  # as `helm install -f bad-values.yaml` reads it
    with pytest.raises(helm_python.HelmValuesError) as refused:
        helm_python.Chart.load(CHART).render(bad, name="moteur", namespace="ai")
    message = str(refused.value)
    assert "/services/gateway/replicas" in message and "drainSecond" in message and "restict" in message
    report = helm_python.lint(CHART, bad, strict=False, kube_version="v1.31.0")
    assert report["errors"] and "additional properties" in " ".join(report["errors"])


@pytest.mark.parametrize("values", [
    {"services": {"gateway": {"replicas": 2, "replicaz": 3}}},
    {"services": {"scheduler": {"replicas": 1}}},                      # no such service: no Deployment for it
    {"services": {"router": {"serviceType": "LoadBalancer"}}},         # only the gateway may be exposed
    {"services": {"memory": {"autoscaling": {"enabled": True}}}},      # only the gateway and the router scale
    {"drainSeconds": "10"},
    {"preStopSeconds": -1},
    {"podDisruptionBudget": {"maxUnavailable": "one"}},
    {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "Maybe"}]},
    {"imagePullSecrets": [42]},
    {"nodeSelector": {"pool": 1}},
    {"networkPolicy": {"egress": {"to": [{"to": [{"ipBlok": {"cidr": "0.0.0.0/0"}}]}]}}},
    {"networkPolicy": {"egress": {"services": {"scheduler": []}}}},
    {"files": {"persistence": {"sizeLimit": "1Gi"}}},
    {"gateway": {"alertWebhookURL": "https://x"}},
    {"logLevel": "LOUD"},
    {"serviceMonitor": {"interval": 30}},
    {"prometheusRule": {"enabled": "yes"}},
], ids=lambda v: json.dumps(v)[:60])
def test_the_schema_refuses_unknown_keys_and_wrong_types(values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        helm_python.Chart.load(CHART).validate_schema(values)


def test_the_subcharts_blocks_stay_open_for_their_own_values() -> None:
    chart = helm_python.Chart.load(CHART)
    chart.validate_schema({"mongodb": {"persistence": {"size": "20Gi"}}, "redis": {"replica": {"replicaCount": 1}},
                           "milvus": {"proxy": {"replicas": 2}}, "global": {"imageRegistry": "mirror.example.com"}})
    with pytest.raises(helm_python.HelmValuesError):  # their moteur keys are still typed
        chart.validate_schema({"mongodb": {"enabled": "true"}})
