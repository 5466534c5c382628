"""The chart's alert rules are valid Prometheus rules and each alert fires as its unit test expects."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.observability.conftest import RULE_TESTS, binary, chart_rule_groups


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_alert_rules_pass_promtool_check(rules_file: Path) -> None:
    checked = _promtool("check", "rules", str(rules_file), cwd=rules_file.parent)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alert_rules_pass_their_unit_tests(rules_file: Path) -> None:
    # The unit tests name `rules.yaml`: copied beside the rendered rules, they test what the chart ships.
    tests = [shutil.copy(path, rules_file.parent) for path in sorted(RULE_TESTS.glob("*.test.yaml"))]
    assert tests
    tested = _promtool("test", "rules", *map(str, tests), cwd=rules_file.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in chart_rule_groups() for rule in group["rules"] if "alert" in rule]


def _cases() -> list[dict[str, Any]]:
    """Every alert_rule_test case of the unit tests."""
    return [
        case
        for path in sorted(RULE_TESTS.glob("*.test.yaml"))
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]


def test_every_alert_has_a_unit_test_that_expects_it_to_fire() -> None:
    fired = {case["alertname"] for case in _cases() if case.get("exp_alerts")}
    assert {rule["alert"] for rule in _alerts()} - fired == set(), "alerts without a unit test that fires them"


def test_every_alert_has_a_unit_test_that_expects_it_not_to_fire() -> None:
    quiet = {case["alertname"] for case in _cases() if not case.get("exp_alerts")}
    assert {rule["alert"] for rule in _alerts()} - quiet == set(), "alerts without a unit test where they stay quiet"


def test_every_alert_is_per_namespace() -> None:
    # Every aggregation keeps the namespace (two releases in two namespaces never merge), and absent(), which
    # keeps no label but its selector's equality matchers, matches namespace="...".
    for rule in _alerts():
        expr = rule["expr"]
        assert "without" not in expr, rule["alert"]
        groupings = re.findall(r"\bby \(([^)]*)\)", expr)
        assert groupings or "absent(" in expr, (rule["alert"], "not aggregated by namespace")
        assert all("namespace" in g.split(", ") for g in groupings), (rule["alert"], groupings)
        assert all(re.match(r'\w+\{namespace="', a) for a in re.findall(r"absent\((.*?)\)", expr)), rule["alert"]
    unscoped = [
        case["alertname"]
        for case in _cases()
        for alert in case.get("exp_alerts") or []
        if "namespace" not in alert["exp_labels"]
    ]
    assert unscoped == [], "unit tests expecting an alert without its namespace"
