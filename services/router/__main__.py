"""``python -m moteur.router``: the model router."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from moteur.router.orchestrator import ModelRouter
from moteur.router.registry import load_models
from moteur.router.servicer import RouterServicer
from moteur.runtime.server import Registration, ServiceApp, run
from moteur.runtime.settings import RouterSettings
from moteur.v1 import router_pb2, router_pb2_grpc


async def build() -> AsyncIterator[Sequence[Registration]]:
    router = ModelRouter(load_models(RouterSettings().models_file))
    yield [
        Registration(
            router_pb2.DESCRIPTOR.services_by_name["Router"], RouterServicer(router),
            router_pb2_grpc.add_RouterServicer_to_server,
        )
    ]


app = ServiceApp("router", build)

if __name__ == "__main__":
    run(app)
