"""What a caller may see of the mesh's models: the same list for the gRPC and the HTTP API."""

from __future__ import annotations

from moteur.runtime.channels import call_service
from moteur.runtime.context import outgoing_timeout
from moteur.runtime.identity import Identity
from moteur.v1 import router_pb2, router_pb2_grpc


async def visible_models(router: router_pb2_grpc.RouterStub, identity: Identity) -> router_pb2.ListModelsResponse:
    """The models ``identity``'s tier may name in model_hint; the mesh's internal capacities are not its business."""
    listed = await call_service(router.ListModels, router_pb2.ListModelsRequest(), "router", identity,
                                outgoing_timeout(10.0))
    visible = [m for m in listed.models if not m.tiers or identity.tier in m.tiers]
    for model in visible:
        model.ClearField("tiers")
    return router_pb2.ListModelsResponse(
        models=visible, default_model=listed.default_model, routes=listed.routes, revision=listed.revision
    )
