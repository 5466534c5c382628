"""Balanced calls across replicas: a gateway whose router address names three router replicas (a static list,
as a headless Service's name resolves to every pod) spreads its model calls evenly over them, and a replica
stopped and started again gets calls back at once; a mesh channel to three memory replicas spreads Embed calls
the same way (each replica on a Milvus Lite file of its own: Embed reads no store)."""

from __future__ import annotations

import asyncio
import time

import pytest

from moteur.devstack.processes import ManagedProcess
from moteur.devstack.stack import LocalStack, StackOptions
from moteur.runtime.channels import open_channel
from moteur.runtime.identity import Identity
from moteur.v1 import memory_pb2, memory_pb2_grpc
from tests.waiting import metric_sum

pytestmark = pytest.mark.timeout(180)

REPLICAS = 3
CALLS = 90


def _answered(metrics_port: int, service: str = "router", method: str = "Complete") -> float:
    """Calls of ``method`` a replica has answered, from its /metrics."""
    return metric_sum(metrics_port, "moteur_rpc_requests_total", service=service, method=method)


def _completes(metrics_port: int) -> float:
    return _answered(metrics_port)


@pytest.fixture(scope="module")
def balanced(tmp_path_factory: pytest.TempPathFactory):
    """A stack, two more routers, and a gateway whose router address lists all three."""
    options = StackOptions(data_dir=tmp_path_factory.mktemp("balanced"), model_server=False, fact_extractor="rules")
    with LocalStack(options) as stack:
        routers: list[tuple[ManagedProcess | None, int, str]] = [
            (None, stack.ports["router-metrics"], stack.address("router"))]
        for i in range(2, REPLICAS + 1):
            process, address = stack.extra_service("router", f"router-{i}")
            process.start()
            routers.append((process, int(process.env["MOTEUR_METRICS_PORT"]), address))
        targets = ",".join(address for _, _, address in routers)
        gateway, gateway_address = stack.extra_gateway("gateway-balanced", MOTEUR_ROUTER_ADDR=f"ipv4:{targets}")
        gateway.start()
        yield stack, routers, gateway_address


async def _chat(keys, address: str, count: int) -> None:
    client = keys.on(address, keys.key)
    for i in range(count):
        await client.chat(f"ping {i}", model_hint="instant", use_memory=False)


@pytest.fixture(scope="module")
async def keys(balanced, own_keys):
    made = await own_keys(balanced[0])
    made.key, _ = await made.client("balanced", "ada", "service")
    yield made
    await made.close()


async def test_model_calls_spread_evenly_over_the_router_replicas(balanced, keys) -> None:
    _, routers, address = balanced
    before = [_completes(port) for _, port, _ in routers]
    await _chat(keys, address, CALLS)
    served = [_completes(port) - b for (_, port, _), b in zip(routers, before, strict=True)]
    assert sum(served) == CALLS
    even = CALLS / REPLICAS
    assert all(abs(s - even) <= 0.2 * even for s in served), f"calls per replica: {served}"


async def test_a_replica_stopped_and_started_again_gets_calls_back(balanced, keys) -> None:
    _, routers, address = balanced
    process, port, _ = routers[1]
    assert process is not None
    process.stop()
    await _chat(keys, address, 10)  # answered by the two others, none lost
    await asyncio.to_thread(process.start)
    before, deadline = _completes(port), time.monotonic() + 10
    while _completes(port) == before:
        assert time.monotonic() < deadline, "the restarted replica got no call within 10 s"
        await _chat(keys, address, 3)


async def test_embed_calls_spread_evenly_over_the_memory_replicas(balanced) -> None:
    stack = balanced[0]
    replicas = [(stack.ports["memory-metrics"], stack.address("memory"))]
    for i in range(2, REPLICAS + 1):
        process, address = stack.extra_service("memory", f"memory-{i}",
                                               MOTEUR_MILVUS_URI=str(stack.data_dir / f"milvus-{i}.db"))
        await asyncio.to_thread(process.start)
        replicas.append((int(process.env["MOTEUR_METRICS_PORT"]), address))
    before = [_answered(port, "memory", "Embed") for port, _ in replicas]
    metadata = stack.mesh_metadata(Identity("balanced", "ada", "internal"))
    channel = open_channel("ipv4:" + ",".join(address for _, address in replicas))
    try:
        memory = memory_pb2_grpc.MemoryStub(channel)
        for i in range(CALLS):
            await memory.Embed(memory_pb2.EmbedRequest(texts=[f"sentence {i}"], query=True), metadata=metadata,
                               timeout=30)
    finally:
        await channel.close()
    served = [_answered(port, "memory", "Embed") - b for (port, _), b in zip(replicas, before, strict=True)]
    even = CALLS / REPLICAS
    assert sum(served) == CALLS and all(abs(s - even) <= 0.2 * even for s in served), f"calls per replica: {served}"
