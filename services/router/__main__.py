"""``python -m moteur.router``: the model router."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from moteur.router.orchestrator import ModelRouter
from moteur.router.registry import load_models
from moteur.router.reload import watch
from moteur.router.routes import Embed
from moteur.router.servicer import RouterServicer
from moteur.router.settings import RouterSettings
from moteur.runtime.channels import call_service, open_channel
from moteur.runtime.identity import SCOPE_EMBED, SCOPE_MODELS, Identity
from moteur.runtime.mesh_tokens import MeshTokenIssuer
from moteur.runtime.server import Registration, ServiceApp, run
from moteur.runtime.settings import MeshSettings
from moteur.runtime.tasks import cancel_and_wait
from moteur.v1 import memory_pb2, memory_pb2_grpc, router_pb2, router_pb2_grpc

# The router's own calls (embedding route examples) belong to no tenant: it signs them itself, with the one
# scope its key may grant (see moteur.runtime.mesh_tokens.SERVICE_ISSUER_SCOPES).
ROUTER_IDENTITY = Identity(tenant="", user="service:router", tier="", scopes=frozenset({SCOPE_EMBED}))


def memory_embedder(stub: memory_pb2_grpc.MemoryStub, issuer: MeshTokenIssuer) -> Embed:
    async def embed(texts: Sequence[str]) -> list[list[float]]:
        identity = issuer.sign(ROUTER_IDENTITY, audience={"memory"}, seconds=10)
        # The classifier's examples and requests alike as E5 queries (moteur.router.routes.EMBED_AS_QUERY).
        request = memory_pb2.EmbedRequest(texts=list(texts), query=True)
        response = await call_service(stub.Embed, request, "memory", identity, timeout=5)
        return [list(e.values) for e in response.embeddings]

    return embed


async def build() -> AsyncIterator[Sequence[Registration]]:
    settings = RouterSettings()
    memory_channel = open_channel(MeshSettings().memory_addr)
    config, revision = load_models(settings.models_file)
    router = ModelRouter(config, revision, memory_embedder(memory_pb2_grpc.MemoryStub(memory_channel),
                                                                MeshTokenIssuer.from_settings("router")))
    watcher = asyncio.create_task(watch(router, settings.models_file))
    try:
        yield [
            Registration(
                router_pb2.DESCRIPTOR.services_by_name["Router"], RouterServicer(router),
                router_pb2_grpc.add_RouterServicer_to_server,
            )
        ]
    finally:
        await cancel_and_wait(watcher)
        await memory_channel.close()


app = ServiceApp("router", build, scopes={
    "Complete": SCOPE_MODELS, "StreamComplete": SCOPE_MODELS, "ListModels": SCOPE_MODELS,
})

if __name__ == "__main__":
    run(app)
