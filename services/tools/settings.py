"""The tools service's settings, read from its environment (prefix ``MOTEUR_``). What every service reads is
in ``moteur.runtime.settings``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from moteur.runtime.settings import MoteurSettings


class ToolsSettings(MoteurSettings):
    tools_file: Path = Field(
        Path("config/tools.yaml"), description="Tool policy per tenant and MCP servers (YAML), reloaded on change."
    )
    http_allowlist: list[str] = Field(
        default_factory=list, description="Hosts http_get may fetch (JSON list; '*.example.org' for subdomains)."
    )
    http_trusted_hosts: list[str] = Field(
        default_factory=list, description="Allowlisted hosts whose private addresses are trusted (internal APIs)."
    )
    mcp_refresh_seconds: float = Field(
        10.0, gt=0, description="How often each MCP server's tools are listed again (a dead connection or a "
        "changed tool list is noticed within this)."
    )
    max_tool_calls_per_tenant: int = Field(
        32, gt=0, description="Tool calls one tenant may have in flight, every tool together; more are answered "
        "'tenant_busy' at once. A tenant's max_concurrent_calls in the tools policy overrides it."
    )
