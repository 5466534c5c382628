"""Channels to the other services of the mesh, and the metadata every outgoing call carries.

Retries: gRPC already retries transparently when a call never left this process (e.g. the peer is
restarting). On top of that the channel's service config retries UNAVAILABLE for the idempotent read
methods listed below; model calls are not retried here because the router does its own retries and
fallbacks, and a second attempt would double a slow, paid call.
"""

from __future__ import annotations

import json

import grpc

from moteur.runtime.context import request_id_var
from moteur.runtime.identity import REQUEST_ID_HEADER, Identity
from moteur.runtime.tracing import inject_context

_IDEMPOTENT_READS = [
    {"service": "moteur.v1.Router", "method": "ListModels"},
    {"service": "moteur.v1.Memory", "method": "Embed"},
    {"service": "moteur.v1.Memory", "method": "Search"},
    {"service": "moteur.v1.Files", "method": "GetFile"},
    {"service": "moteur.v1.Files", "method": "ListFiles"},
    {"service": "moteur.v1.Files", "method": "ListTemplates"},
    {"service": "moteur.v1.Tools", "method": "ListTools"},
]

SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": _IDEMPOTENT_READS,
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def open_channel(address: str, max_message_bytes: int = 8 * 1024 * 1024) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        address,
        options=[
            ("grpc.service_config", SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
        ],
    )


def mesh_metadata(identity: Identity) -> list[tuple[str, str]]:
    """Identity, request id and trace context for a call from one service to another."""
    return [*identity.as_metadata(), (REQUEST_ID_HEADER, request_id_var.get()), *inject_context()]
