"""The chart's monitoring for a cluster with the Prometheus Operator (kube-prometheus-stack): an optional
ServiceMonitor scraping every mesh service, extra labels for the Prometheus's selectors, target alerts on the jobs
the ServiceMonitor names, and dashboards whose uids and titles are unique per release, filtered by namespace."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python
import pytest
import yaml
from test_chart import CHART, _by_kind, _render

from moteur.devstack.stack import SERVICES

KPS = {"release": "kube-prometheus-stack"}
MONITORED = {"serviceMonitor": {"enabled": True, "labels": KPS}, "prometheusRule": {"enabled": True, "labels": KPS}}


def _render_release(name: str, namespace: str, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rendered = helm_python.Chart.load(CHART).render(values or {}, name=name, namespace=namespace)
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels, matchExpressions with In) selects these labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _dashboards(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The dashboards shipped in ConfigMaps for the Grafana sidecar, by file name."""
    return {file: json.loads(text) for m in manifests
            if m["kind"] == "ConfigMap" and m["metadata"]["labels"].get("grafana_dashboard") == "1"
            for file, text in m["data"].items()}


def test_no_servicemonitor_unless_enabled() -> None:
    assert not [m for m in _render({}) if m["kind"] == "ServiceMonitor"]
    assert not [m for m in _render({"prometheusRule": {"enabled": True}}) if m["kind"] == "ServiceMonitor"]


def test_the_servicemonitor_scrapes_the_metrics_port_of_every_mesh_service_and_carries_the_labels() -> None:
    manifests = _render({"serviceMonitor": {"enabled": True, "labels": KPS, "interval": "15s",
                                            "scrapeTimeout": "5s"}})
    (monitor,) = [m for m in manifests if m["kind"] == "ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["metadata"]["labels"]["app.kubernetes.io/instance"] == "moteur"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["interval"] == "15s" and endpoint["scrapeTimeout"] == "5s"
    # The Services it selects that have a port named metrics: one per mesh service, on 9090, whose job (its label
    # jobLabel names, else the Service's name) is <fullname>-<service>. The model server exports no metrics.
    scraped = {name: service for name, service in _by_kind(manifests, "Service").items()
               if _selects(monitor["spec"]["selector"], service["metadata"]["labels"])
               and any(port["name"] == "metrics" for port in service["spec"]["ports"])}
    jobs = sorted(s["metadata"]["labels"].get(monitor["spec"]["jobLabel"], name) for name, s in scraped.items())
    assert jobs == sorted(f"moteur-{service}" for service in SERVICES)
    assert all({"name": "metrics", "port": 9090, "targetPort": "metrics"} in s["spec"]["ports"]
               for s in scraped.values())
    assert not _selects(monitor["spec"]["selector"], _by_kind(manifests, "Service")["moteur-model-server"]
                        ["metadata"]["labels"])


def test_the_prometheusrule_carries_the_extra_labels() -> None:
    (rule,) = [m for m in _render(MONITORED) if m["kind"] == "PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["labels"]["app.kubernetes.io/name"] == "moteur"


def test_the_target_alerts_select_the_jobs_the_servicemonitor_names_and_only_with_it() -> None:
    (rule,) = [m for m in _render_release("prod", "ai", MONITORED) if m["kind"] == "PrometheusRule"]
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if g["name"] == "moteur.targets"]
    (down,) = [r for r in alerts if r["alert"] == "MoteurTargetDown"]
    jobs = re.search(r'job=~"([^"]+)"', down["expr"]).group(1)
    assert 'namespace="ai"' in down["expr"]
    # With a ServiceMonitor, each target's job is its Service's name: <fullname>-<service>.
    assert all(re.fullmatch(jobs, f"prod-moteur-{service}") for service in SERVICES)
    assert not re.fullmatch(jobs, "prod-moteur-model-server")
    absent = sorted(r["expr"] for r in alerts if r["alert"] == "MoteurMetricsAbsent")
    assert absent == sorted(f'absent(up{{namespace="ai",job="prod-moteur-{service}"}})' for service in SERVICES)

    (without,) = [m for m in _render({"prometheusRule": {"enabled": True}}) if m["kind"] == "PrometheusRule"]
    assert "moteur.targets" not in {g["name"] for g in without["spec"]["groups"]}


def test_dashboard_uids_and_titles_are_unique_per_release() -> None:
    releases = [("moteur", "ai"), ("moteur", "staging"), ("acme", "ai")]
    rendered = {release: _dashboards(_render_release(*release)) for release in releases}
    for (name, namespace), dashboards in rendered.items():
        assert set(dashboards) == {"admission.json", "files.json", "memory.json", "models.json", "overview.json",
                                   "tools.json"}
        for file, dashboard in dashboards.items():
            assert name in dashboard["uid"] and namespace in dashboard["uid"], (file, dashboard["uid"])
            assert f"({namespace}/{name})" in dashboard["title"]
    uids = [d["uid"] for dashboards in rendered.values() for d in dashboards.values()]
    titles = [d["title"] for dashboards in rendered.values() for d in dashboards.values()]
    assert len(set(uids)) == len(uids) == 18 and len(set(titles)) == len(titles)


def test_long_release_names_keep_uids_grafana_accepts_and_apart() -> None:
    # Grafana refuses a uid longer than 40 characters; the long ones still differ by release.
    long = "customer-support-assistant-moteur-blue"
    uids = {(namespace, d["uid"]) for namespace in ("team-alpha-production", "team-alpha-productio")
            for d in _dashboards(_render_release(long, namespace)).values()}
    assert len({uid for _, uid in uids}) == 12
    assert all(len(uid) <= 40 and re.fullmatch(r"[a-z0-9-]+", uid) for _, uid in uids)


@pytest.mark.parametrize("namespace", ["ai", "staging"])
def test_dashboards_filter_every_query_by_a_namespace_variable_set_to_the_release_namespace(namespace: str) -> None:
    for file, dashboard in _dashboards(_render_release("moteur", namespace)).items():
        (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "namespace"]
        assert variable["query"] == "label_values(moteur_rpc_requests_total, namespace)"
        assert variable["includeAll"] and variable["allValue"] == ".*"  # All also matches series without the label
        assert variable["current"]["value"] == [namespace], file
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                metrics = re.findall(r"\bmoteur_\w+(?:\{[^}]*\})?", target["expr"])
                assert metrics and all('{namespace=~"$namespace"' in m for m in metrics), (file, target["expr"])
