"""What a caller may use: the registry seen through the tenant policy and the tools' tiers.

A caller sees the built-ins its tenant's allowlist matches and its tenant's own MCP tools, minus those its
tier may not use, and has as many calls in flight as its tenant's limit. A tool it may not use does not
exist for it: the servicer answers NOT_FOUND exactly as for an unknown name, so tenants never learn about
each other's tools. Applying a new policy also brings
the MCP servers in line with it (the target of :func:`moteur.runtime.reload.reload`).
"""

from __future__ import annotations

from moteur.tools.mcp import McpServers
from moteur.tools.policy import ToolsPolicy
from moteur.tools.registry import Caller, Registry, ToolSpec


class ToolAccess:
    def __init__(self, registry: Registry, mcp_servers: McpServers, policy: ToolsPolicy, revision: str,
                 max_calls_per_tenant: int = 32) -> None:
        self._registry = registry
        self._mcp = mcp_servers
        self._max_calls_per_tenant = max_calls_per_tenant  # a tenant's, unless its policy says otherwise
        self._policy, self._revision = ToolsPolicy(), ""
        self.apply(policy, revision)

    @property
    def revision(self) -> str:
        return self._revision

    def apply(self, policy: ToolsPolicy, revision: str) -> None:
        self._policy, self._revision = policy, revision
        self._mcp.apply(policy.mcp_servers())

    def tools_for(self, caller: Caller) -> list[ToolSpec]:
        return sorted((s for s in self._registry.specs(caller.tenant) if self._permits(caller, s)),
                      key=lambda s: s.name)

    def lookup(self, caller: Caller, name: str) -> ToolSpec | None:
        spec = self._registry.get(name, caller.tenant)
        return spec if spec is not None and self._permits(caller, spec) else None

    def max_concurrent_calls(self, tenant: str) -> int:
        """How many tool calls ``tenant`` may have in flight, under the policy in force."""
        return self._policy.max_concurrent_calls(tenant, self._max_calls_per_tenant)

    def _permits(self, caller: Caller, spec: ToolSpec) -> bool:
        # The registry only hands out built-ins and the caller's own tenant's tools.
        mine = spec.source != "builtin" or self._policy.allows_builtin(caller.tenant, spec.name)
        return mine and spec.allows_tier(caller.tier)
