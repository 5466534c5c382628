"""The admission queue through gRPC: a gateway replica with room for one turn at a time per pool. Every
turn here names the paced model, so they all share its pool (turns for other models queue apart)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from moteur.client import AsyncMoteurClient, MoteurClientError
from moteur.v1 import gateway_pb2, gateway_pb2_grpc

SLOW = {"model_hint": "paced"}  # answers after 0.8 s


@pytest.fixture
async def narrow_gateway(stack):
    process, address = stack.extra_gateway(
        "gateway-narrow", MOTEUR_QUEUE_CAPACITY="1", MOTEUR_QUEUE_MAX_QUEUED="2",
        MOTEUR_QUEUE_CRITICAL_SHARE="0", MOTEUR_DRAIN_SECONDS="10",
    )
    process.start()
    yield process, address
    process.stop()


async def test_turns_wait_for_the_model_report_their_wait_and_overflow_is_shed(narrow_gateway, alice) -> None:
    _, address = narrow_gateway
    metadata = [("authorization", f"Bearer {alice.key}")]
    async with grpc.aio.insecure_channel(address) as channel, AsyncMoteurClient(address, alice.key) as client:
        gateway = gateway_pb2_grpc.GatewayStub(channel)
        first = asyncio.create_task(client.chat("Describe a lighthouse.", **SLOW))
        await asyncio.sleep(0.2)
        queued = [gateway.Chat(gateway_pb2.ChatRequest(message=f"queued {i}", model_hint="paced"),
                               metadata=metadata) for i in range(2)]
        await asyncio.sleep(0.2)
        with pytest.raises(MoteurClientError) as shed:
            await client.chat("no room", **SLOW)
        assert shed.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full" in shed.value.message and shed.value.retry_after_seconds > 0

        await first
        for call in queued:
            await call
            waited = float(dict(await call.trailing_metadata())["x-moteur-queue-wait-ms"])
            assert waited > 100  # it waited behind the slow turn


async def test_a_draining_gateway_finishes_the_turn_in_flight_and_hands_back_the_queued_ones(
    narrow_gateway, alice
) -> None:
    process, address = narrow_gateway
    async with AsyncMoteurClient(address, alice.key) as client:
        in_flight = asyncio.create_task(client.chat("Describe a lighthouse.", **SLOW))
        await asyncio.sleep(0.2)
        waiting = asyncio.create_task(client.chat("waiting", **SLOW))
        await asyncio.sleep(0.2)
        stopping = asyncio.get_running_loop().run_in_executor(None, process.stop)
        with pytest.raises(MoteurClientError) as handed_back:
            await waiting
        answer = await in_flight
        await stopping
    assert handed_back.value.code is grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in handed_back.value.message
    assert answer.message.content
