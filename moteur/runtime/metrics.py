"""Prometheus metrics shared by every service, served on their own port (``/metrics``).

Metric objects are process-wide by Prometheus' design; labels carry the service and method so one
dashboard covers the whole mesh.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# Buckets from 0.5 ms to 2 min: gateway overhead lives in the low milliseconds, model calls in seconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
)

RPC_REQUESTS = Counter(
    "moteur_rpc_requests_total", "RPCs handled, by final status code.", ["service", "method", "code"]
)
RPC_LATENCY = Histogram(
    "moteur_rpc_duration_seconds", "Time to handle an RPC, streams until their last message, by final status.",
    ["service", "method", "code"], buckets=LATENCY_BUCKETS,
)
RPC_IN_FLIGHT = Gauge("moteur_rpc_in_flight", "RPCs being handled now.", ["service", "method"])
MESH_AUTH_REFUSED = Counter(
    "moteur_mesh_auth_refused_total",
    "Internal calls refused before any handler: no mesh token, an invalid one (forged, expired, another key or "
    "audience), or one without the method's scope.", ["service", "reason"],
)


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Start the /metrics HTTP endpoint in a daemon thread; port 0 disables it."""
    if port:
        start_http_server(port, addr=host)
