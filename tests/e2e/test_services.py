"""Every service of the mesh is up, healthy, reflectable and measured."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from moteur.devstack.models import CHAT_MODEL
from moteur.devstack.stack import SERVICES
from moteur.runtime.identity import Identity
from moteur.v1 import router_pb2, router_pb2_grpc
from tests.mesh import signed

PROTO_SERVICE = {"gateway": "moteur.v1.Gateway", "router": "moteur.v1.Router", "memory": "moteur.v1.Memory",
                 "files": "moteur.v1.Files", "tools": "moteur.v1.Tools"}
MESH_IDENTITY = Identity(tenant="acme", user="alice", tier="standard")


@pytest.mark.parametrize("service", SERVICES)
async def test_each_service_is_healthy_and_lists_its_api_by_reflection(stack, service: str) -> None:
    async with grpc.aio.insecure_channel(stack.address(service)) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=PROTO_SERVICE[service]), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = [r async for r in reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {PROTO_SERVICE[service], "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_exposes_prometheus_metrics(stack, service: str) -> None:
    url = f"http://127.0.0.1:{stack.ports[f'{service}-metrics']}/metrics"
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    assert "moteur_rpc_duration_seconds" in body


async def test_the_router_lists_its_models(stack) -> None:
    async with grpc.aio.insecure_channel(stack.address("router")) as channel:
        models = await router_pb2_grpc.RouterStub(channel).ListModels(
            router_pb2.ListModelsRequest(), metadata=signed(MESH_IDENTITY), timeout=5
        )
    assert models.default_model == CHAT_MODEL
    assert {CHAT_MODEL, "instant"} <= {m.name for m in models.models}


async def test_internal_services_refuse_calls_without_the_gateways_identity(stack) -> None:
    async with grpc.aio.insecure_channel(stack.address("router")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await router_pb2_grpc.RouterStub(channel).Complete(router_pb2.CompleteRequest(), timeout=5)
    assert error.value.code() is grpc.StatusCode.UNAUTHENTICATED
