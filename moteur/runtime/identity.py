"""Who a call is for, as the services of the mesh know it.

Only the gateway authenticates API keys. It then mints a signed mesh token for the call (see
:mod:`moteur.runtime.mesh_tokens`) that every internal call carries in :data:`TOKEN_HEADER`; each internal
service checks it in its server interceptor and takes the identity from the checked token only. Headers
that merely *say* who the caller is prove nothing and are never read.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field

import grpc

from moteur.runtime.errors import Unauthenticated

TOKEN_HEADER = "x-moteur-identity"
REQUEST_ID_HEADER = "x-request-id"
# Sent by the router on its answers: the revision of its model registry, so the gateway re-reads capacities.
MODELS_REVISION_HEADER = "x-moteur-models-revision"

# What an identity may do inside the mesh, one scope per kind of internal RPC (see each service's
# ``ServiceApp.scopes``). A user's call holds all of them but templates.write, which admin keys add.
SCOPE_MODELS = "models.use"          # Router: Complete, StreamComplete, ListModels, CountTokens
SCOPE_MEMORY_READ = "memory.read"    # Memory: Search, ListMemories…
SCOPE_MEMORY_WRITE = "memory.write"  # Memory: Upsert, Delete, Extract, Forget…
SCOPE_EMBED = "memory.embed"         # Memory: Embed (no tenant data involved)
SCOPE_FILES_READ = "files.read"      # Files: GetFile, ListFiles, ListTemplates
SCOPE_FILES_WRITE = "files.write"    # Files: Render, DeleteFile
SCOPE_TEMPLATES_WRITE = "templates.write"  # Files: PutTemplate (admin keys only)
SCOPE_TOOLS = "tools.use"            # Tools: ListTools, Invoke
USER_SCOPES = frozenset({SCOPE_MODELS, SCOPE_MEMORY_READ, SCOPE_MEMORY_WRITE, SCOPE_EMBED, SCOPE_FILES_READ,
                         SCOPE_FILES_WRITE, SCOPE_TOOLS})
ADMIN_SCOPES = USER_SCOPES | {SCOPE_TEMPLATES_WRITE}
# An Identity made without scopes: __post_init__ gives it USER_SCOPES, or ADMIN_SCOPES for an admin.
_DEFAULT_SCOPES = frozenset({"(the default scopes)"})


@dataclass(frozen=True, slots=True)
class Identity:
    tenant: str  # empty only for a service's own identity (e.g. the router embedding its route examples)
    user: str
    tier: str
    key_id: str = ""
    admin: bool = False  # may change its tenant's limits and templates
    # Left out: what a user's call holds, with templates.write for an admin (the gateway's callers)
    scopes: frozenset[str] = _DEFAULT_SCOPES
    request_id: str = ""
    # The signed mesh token that proves all of the above to the other services; forwarded unchanged when a
    # service calls another on this identity's behalf. Empty until the gateway (or a service, for its own
    # background work) signs it.
    token: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.scopes is _DEFAULT_SCOPES:
            object.__setattr__(self, "scopes", ADMIN_SCOPES if self.admin else USER_SCOPES)

    def as_metadata(self) -> list[tuple[str, str]]:
        """The metadata that carries this identity on a call to another service: its token, nothing else."""
        if not self.token:
            raise RuntimeError("an unsigned identity cannot call the mesh; sign it with a MeshTokenIssuer")
        return [(TOKEN_HEADER, self.token)]


# The identity of the call being served, once proven: by the mesh token (internal services, in the server
# interceptor) or by the API key (the gateway, in its authenticator). Read by request log lines.
identity_var: ContextVar[Identity | None] = ContextVar("identity", default=None)


def metadata_value(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> str:
    for name, value in metadata or ():
        if name == key:
            return value.decode() if isinstance(value, bytes) else value
    return ""


def mesh_identity(context: grpc.aio.ServicerContext | None = None) -> Identity:
    """The identity the server interceptor proved from the call's mesh token (``context`` is unused: the
    proof never comes from the call's headers as such)."""
    identity = identity_var.get()
    if identity is None:
        raise Unauthenticated("no verified mesh identity: internal services are called through the gateway")
    return identity
