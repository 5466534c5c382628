"""Fixtures of the observability tests: the Prometheus binaries (Debian package `prometheus`, installed by
`make setup`) and the chart's alert rules as a plain rules file."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

REPO = Path(__file__).parents[2]
CHART = REPO / "deploy" / "helm" / "moteur"
DASHBOARDS = CHART / "dashboards"
RULE_TESTS = REPO / "deploy" / "prometheus"


def binary(name: str) -> str:
    """The path of a Prometheus binary; a missing one fails the test (never skips): it is part of the setup."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        pytest.fail(f"`{name}` is not installed: run `make setup` (it installs the Debian package prometheus)")
    return found


def chart_rule_groups() -> list[dict[str, Any]]:
    """The rule groups of the chart's PrometheusRule, rendered with it and the ServiceMonitor enabled (the alerts on
    targets, group moteur.targets, select the jobs the ServiceMonitor names: moteur-<service> in namespace ai)."""
    values = {"prometheusRule": {"enabled": True}, "serviceMonitor": {"enabled": True}}
    rendered = helm_python.Chart.load(CHART).render(values, name="moteur", namespace="ai")
    manifests = [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]
    (rule,) = [m for m in manifests if m["kind"] == "PrometheusRule"]
    return list(rule["spec"]["groups"])


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    """The chart's rule groups as a rules file promtool and prometheus read (`rules.yaml` in a tmp dir)."""
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": chart_rule_groups()}, sort_keys=False))
    return path
