"""The chart's part for the tools service: its policy ships as a ConfigMap it can load, mounted where
MOTEUR_TOOLS_FILE says, and is the repository's example."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from test_chart import PRODUCTION, SECURITY_VOLUMES, _by_kind, _render, _volume_names

from moteur.tools.policy import ToolsPolicy, load_policy

EXAMPLE = Path(__file__).parents[2] / "config" / "tools.yaml"


@pytest.mark.parametrize("values", [{}, PRODUCTION], ids=["default", "production"])
def test_the_tools_service_mounts_a_policy_it_can_load(values: dict[str, Any]) -> None:
    manifests = _render(values)
    shipped = _by_kind(manifests, "ConfigMap")["moteur-tool-policy"]["data"]["tools.yaml"]
    assert ToolsPolicy.model_validate(yaml.safe_load(shipped)) == load_policy(EXAMPLE)[0]
    tools = _by_kind(manifests, "Deployment")["moteur-tools"]["spec"]["template"]["spec"]
    assert {"name": "tool-policy", "configMap": {"name": "moteur-tool-policy"}} in tools["volumes"]
    assert _volume_names(tools) == {"tmp", "tool-policy"}
    mounts = [m for m in tools["containers"][0]["volumeMounts"] if m["name"] not in SECURITY_VOLUMES]
    assert mounts == [{"name": "tmp", "mountPath": "/tmp"},
                      {"name": "tool-policy", "mountPath": "/etc/moteur", "readOnly": True}]
    assert _by_kind(manifests, "ConfigMap")["moteur-tools"]["data"]["MOTEUR_TOOLS_FILE"] == "/etc/moteur/tools.yaml"


def test_a_tenants_mcp_servers_set_in_values_reach_the_policy() -> None:
    server = {"name": "crm", "transport": "http", "url": "http://crm-mcp:8000/mcp", "timeout_ms": 5000}
    values = {"tools": {"policy": {"defaults": {"allow": ["calculator"]},
                                   "tenants": {"acme": {"mcp_servers": [server]}}}}}
    shipped = _by_kind(_render(values), "ConfigMap")["moteur-tool-policy"]["data"]["tools.yaml"]
    policy = ToolsPolicy.model_validate(yaml.safe_load(shipped))
    assert policy.mcp_servers()["acme", "crm"].url == server["url"]
