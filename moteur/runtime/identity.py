"""Who a call is for, carried between services in call metadata.

Only the gateway authenticates API keys; it forwards the resolved identity to the other services in
``x-moteur-*`` headers, which they trust because only the mesh can reach them (NetworkPolicy).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from moteur.runtime.errors import Unauthenticated

TENANT_HEADER = "x-moteur-tenant"
USER_HEADER = "x-moteur-user"
TIER_HEADER = "x-moteur-tier"
KEY_HEADER = "x-moteur-key"
REQUEST_ID_HEADER = "x-request-id"
# Sent by the router on its answers: the revision of its model registry, so the gateway re-reads capacities.
MODELS_REVISION_HEADER = "x-moteur-models-revision"


@dataclass(frozen=True, slots=True)
class Identity:
    tenant: str
    user: str
    tier: str
    key_id: str = ""
    admin: bool = False  # may change its tenant's limits; known to the gateway only, never forwarded

    def as_metadata(self) -> list[tuple[str, str]]:
        return [
            (TENANT_HEADER, self.tenant),
            (USER_HEADER, self.user),
            (TIER_HEADER, self.tier),
            (KEY_HEADER, self.key_id),
        ]


def metadata_value(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> str:
    for name, value in metadata or ():
        if name == key:
            return value.decode() if isinstance(value, bytes) else value
    return ""


def mesh_identity(context: grpc.aio.ServicerContext) -> Identity:
    """The identity the gateway forwarded; a call without a tenant never reaches domain code."""
    metadata = context.invocation_metadata()
    tenant = metadata_value(metadata, TENANT_HEADER)
    if not tenant:
        raise Unauthenticated(f"missing {TENANT_HEADER}: internal services are called through the gateway")
    return Identity(
        tenant=tenant,
        user=metadata_value(metadata, USER_HEADER),
        tier=metadata_value(metadata, TIER_HEADER),
        key_id=metadata_value(metadata, KEY_HEADER),
    )
