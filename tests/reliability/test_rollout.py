"""A rollout under load: one of two gateway replicas gets SIGTERM while streams it serves are halfway through.
It drains: every turn in flight finishes (or fails with a clear status), and the turns started meanwhile go to
the other replica — as a Deployment's rolling update does with a drain as long as the longest turn."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from moteur.client.requests import auth_metadata
from moteur.devstack.stack import LocalStack, StackOptions
from moteur.v1 import gateway_pb2, gateway_pb2_grpc
from tests.waiting import metric_sum

pytestmark = pytest.mark.timeout(180)

STREAMS = 12
LATER_TURNS = 12
# A stream of about 3 s: the first word at once, then one every 0.3 s.
SLOW_STREAM = {"name": "slow-stream", "provider": "instant", "simulated_word_ms": 300, "max_concurrency": 64}
CLEAR = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def _served(metrics_port: int, method: str) -> float:
    return metric_sum(metrics_port, "moteur_rpc_requests_total", method=method, service="gateway", code="OK")


@pytest.fixture(scope="module")
def two_gateways(tmp_path_factory: pytest.TempPathFactory):
    options = StackOptions(data_dir=tmp_path_factory.mktemp("rollout"), model_server=False, fact_extractor="rules",
                           extra_models=[SLOW_STREAM])
    with LocalStack(options) as stack:
        leaving, address = stack.extra_gateway("gateway-leaving", MOTEUR_DRAIN_SECONDS="30")
        leaving.start()
        yield stack, leaving, address


async def _stream(stub: gateway_pb2_grpc.GatewayStub, metadata: list[tuple[str, str]], text: str,
                  halfway: asyncio.Event) -> tuple[str, int]:
    """("finished", deltas) or (the status code's name, deltas) of one streamed turn."""
    deltas = 0
    try:
        async for event in stub.ChatStream(gateway_pb2.ChatRequest(message=text, model_hint="slow-stream",
                                                                   use_memory=False), metadata=metadata, timeout=60):
            if event.WhichOneof("event") == "delta":
                deltas += 1
                if deltas == 2:
                    halfway.set()
            if event.WhichOneof("event") == "final":
                return "finished", deltas
    except grpc.aio.AioRpcError as error:
        assert error.code() in CLEAR and error.details(), f"an unclear failure: {error.code()} {error.details()!r}"
        return error.code().name, deltas
    return "ended without a final event", deltas


async def test_a_gateway_stopped_mid_stream_finishes_its_turns_and_new_turns_go_to_the_other(
        two_gateways, own_keys) -> None:
    stack, leaving, leaving_address = two_gateways
    keys = await own_keys(stack)
    try:
        key, _ = await keys.client("rollout", "ada", "service")
        metadata = auth_metadata(key)
        staying_metrics = stack.ports["gateway-metrics"]
        # A client balancing over both replicas, as it would behind a headless Service.
        target = f"ipv4:{stack.address('gateway')},{leaving_address}"
        async with grpc.aio.insecure_channel(target, options=[("grpc.service_config", ROUND_ROBIN)]) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            await channel.channel_ready()
            streams_before = _served(staying_metrics, "ChatStream")
            halfway = [asyncio.Event() for _ in range(STREAMS)]
            streams = [asyncio.create_task(_stream(stub, metadata, f"stream {i} of the rollout under load", h))
                       for i, h in enumerate(halfway)]
            await asyncio.wait_for(asyncio.gather(*(h.wait() for h in halfway)), 30)  # every stream is halfway

            stopping = asyncio.create_task(asyncio.to_thread(leaving.stop, 45))  # SIGTERM, then wait for the exit
            await asyncio.sleep(0.5)
            chats_before = _served(staying_metrics, "Chat")
            later = await asyncio.gather(*(stub.Chat(gateway_pb2.ChatRequest(
                message=f"turn {i} during the rollout", model_hint="instant", use_memory=False),
                metadata=metadata, timeout=30) for i in range(LATER_TURNS)), return_exceptions=True)
            outcomes = await asyncio.gather(*streams)
            await stopping

        failed = [o for o in later if isinstance(o, BaseException)]
        assert not failed, f"turns started during the rollout failed: {failed[:3]}"
        assert _served(staying_metrics, "Chat") - chats_before == LATER_TURNS  # all went to the other replica
        on_leaving = STREAMS - (_served(staying_metrics, "ChatStream") - streams_before)
        assert on_leaving >= 2  # round_robin sent the leaving replica its share of the streams
        finished = [deltas for outcome, deltas in outcomes if outcome == "finished"]
        assert len(finished) == STREAMS, f"outcomes: {outcomes}"  # the drain (30 s) outlasts every stream (~3 s)
        assert leaving.exit_code == 0
        print(f"rollout: {STREAMS} streams in flight ({on_leaving:.0f} on the stopped replica): "
              f"{len(finished)} finished, {STREAMS - len(finished)} failed; {LATER_TURNS} turns started meanwhile "
              "all answered by the other replica")
    finally:
        await keys.close()
