"""The tools service's own metrics: calls per tool and outcome, their duration, calls refused or abandoned and
those in flight, MCP servers and policy reloads.

No metric here is labelled by tenant for calls: tenants are unbounded, so who was refused is in the log line
(``tool.refused``, ``tool.abandoned``), not in a label."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from moteur.runtime.metrics import LATENCY_BUCKETS

TOOL_CALLS = Counter("moteur_tool_calls_total", "Tool calls, by tool and outcome (ok or the error code).",
                     ["tool", "outcome"])
TOOL_LATENCY = Histogram("moteur_tool_call_duration_seconds", "Time of one tool call.", ["tool"],
                         buckets=LATENCY_BUCKETS)
TOOL_CALLS_REFUSED = Counter(
    "moteur_tool_calls_refused_total", "Tool calls refused before they ran, by reason: tenant_limit (the tenant "
    "had its most calls in flight), tool_limit (the tenant had the tool's most), deadline (the caller had no time "
    "left).", ["reason"])
TOOL_CALLS_ABANDONED = Counter(
    "moteur_tool_calls_abandoned_total", "Tool calls stopped before they finished, by reason: deadline (the "
    "caller's deadline passed), cancelled (the caller went away).", ["reason"])
TOOL_CALLS_IN_FLIGHT = Gauge("moteur_tool_calls_in_flight", "Tool calls running now, every tenant's together.")

MCP_STATES = ("connecting", "ready", "failed")
MCP_SERVERS = Gauge("moteur_mcp_servers", "Configured MCP servers: 1 for the state each is in (connecting, ready, "
                    "failed).", ["tenant", "server", "state"])
MCP_CONNECTS = Counter("moteur_mcp_connects_total", "Connections made to an MCP server and its tools listed: more "
                       "than one means it reconnected.", ["tenant", "server"])
MCP_TOOLS = Gauge("moteur_mcp_tools", "Tools an MCP server lists into the registry.", ["tenant", "server"])
TOOLS_CONFIG_RELOADS = Counter("moteur_tools_config_reloads_total",
                               "Tool policy reloads, by outcome (ok, refused: the previous policy stays).", ["outcome"])
