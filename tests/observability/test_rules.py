"""The chart's alert rules are valid Prometheus rules and each alert fires as its unit test expects."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

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


def test_every_alert_has_a_unit_test_that_expects_it_to_fire() -> None:
    alerts = {rule["alert"] for group in chart_rule_groups() for rule in group["rules"] if "alert" in rule}
    fired: set[str] = set()
    for path in RULE_TESTS.glob("*.test.yaml"):
        for test in yaml.safe_load(path.read_text())["tests"]:
            fired |= {case["alertname"] for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert alerts - fired == set(), "alerts without a unit test that fires them"
