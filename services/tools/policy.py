"""Which tools each tenant may use, and the MCP servers each tenant brings (``MOTEUR_TOOLS_FILE``).

Validated whole at load (an invalid file on reload is refused and the previous policy stays, see
:mod:`moteur.runtime.reload`). A tenant's ``allow`` list of glob patterns replaces the default one; the
tools of its own MCP servers are always its own to use, and no other tenant's.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from moteur.runtime.reload import load_yaml

MCP_SEPARATOR = "__"  # an MCP tool is named <server>__<tool>


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class McpServerConfig(_Strict):
    name: str = Field(pattern=r"^[a-z0-9-]{1,32}$")
    transport: Literal["stdio", "http"]
    command: list[str] = Field(default_factory=list)  # stdio: the program and its arguments
    env: dict[str, str] = Field(default_factory=dict)  # stdio: added to a minimal default environment
    url: str = Field("", pattern=r"^(https?://.+)?$")  # http: the streamable HTTP endpoint
    headers: dict[str, str] = Field(default_factory=dict)  # http: sent with every request
    timeout_ms: int = Field(10_000, gt=0, le=300_000)  # per call of one of its tools
    max_concurrency: int = Field(8, gt=0, le=1_000)  # calls in flight per tool
    tiers: list[str] = Field(default_factory=list)  # tiers that may use its tools; empty: every tier

    @model_validator(mode="after")
    def _transport_needs(self) -> McpServerConfig:
        if self.transport == "stdio" and not self.command:
            raise ValueError(f"MCP server {self.name!r}: transport 'stdio' needs a 'command'")
        if self.transport == "http" and not self.url:
            raise ValueError(f"MCP server {self.name!r}: transport 'http' needs a 'url'")
        return self


class TenantPolicy(_Strict):
    allow: list[str] | None = None  # glob patterns of built-in tool names; None: the defaults
    mcp_servers: list[McpServerConfig] = Field(default_factory=list)
    # Its tool calls in flight, every tool together; None: the service's MOTEUR_MAX_TOOL_CALLS_PER_TENANT
    max_concurrent_calls: int | None = Field(None, gt=0, le=10_000)

    @model_validator(mode="after")
    def _unique_servers(self) -> TenantPolicy:
        names = [s.name for s in self.mcp_servers]
        if len(names) != len(set(names)):
            raise ValueError(f"MCP server names must be unique within a tenant: {names}")
        return self


class Defaults(_Strict):
    allow: list[str] = Field(default_factory=list)


class ToolsPolicy(_Strict):
    defaults: Defaults = Field(default_factory=Defaults)
    tenants: dict[str, TenantPolicy] = Field(default_factory=dict)

    def allowed_patterns(self, tenant: str) -> list[str]:
        own = self.tenants.get(tenant)
        return own.allow if own is not None and own.allow is not None else self.defaults.allow

    def allows_builtin(self, tenant: str, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.allowed_patterns(tenant))

    def max_concurrent_calls(self, tenant: str, default: int) -> int:
        """The tenant's most tool calls in flight: its own setting, else ``default`` (the service's)."""
        own = self.tenants.get(tenant)
        return own.max_concurrent_calls if own is not None and own.max_concurrent_calls is not None else default

    def mcp_servers(self) -> dict[tuple[str, str], McpServerConfig]:
        """Every configured MCP server, keyed by (tenant, server name)."""
        return {(tenant, s.name): s for tenant, policy in self.tenants.items() for s in policy.mcp_servers}


def load_policy(path: Path) -> tuple[ToolsPolicy, str]:
    return load_yaml(path, ToolsPolicy)
