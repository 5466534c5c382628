"""Function calling: what the tools service and the tool loop cost.

1. ``Invoke`` of a built-in tool (calculator) over gRPC — validation both ways, the call, the audit record
   in SecantusDB — against the same registry called in-process, and the bare function, at concurrency 1.
2. A full tool-loop turn through the gateway with the scripted instant model (``/tool calculator …``: the
   model asks for the tool, the gateway invokes it, persists the round, asks the model again) against a
   turn of the same model that calls no tool. The difference is one round: a second model call, one
   Invoke and one more write.
All in one run on the same machine: the differences and ratios are what matter. With ``BENCH_FLAMES``, py-spy
flame graphs of the gateway, the router, the tools service and the store during the turns with a tool round.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path

import grpc

from bench.chat_path import _drive
from bench.flames import flame_graphs, stack_pids
from bench.keys import bench_key
from bench.stats import Figures
from moteur.devstack.stack import LocalStack, StackOptions
from moteur.runtime.identity import Identity
from moteur.tools.builtins import calculator, register_builtins
from moteur.tools.registry import Registry
from moteur.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, tools_pb2, tools_pb2_grpc

SECONDS_PER_POINT = float(os.environ.get("BENCH_SECONDS", "6"))
ARGUMENTS = json.dumps({"expression": "(17 + 25) * 3 / 7"})
PLAIN = "What is (17 + 25) * 3 / 7?"
WITH_TOOL = f"{PLAIN}\n/tool calculator {ARGUMENTS}"


async def _in_process() -> tuple[Figures, Figures]:
    registry = Registry()
    register_builtins(registry)

    async def function(_: int) -> None:
        await calculator(json.loads(ARGUMENTS))

    async def registered(_: int) -> None:
        outcome = await registry.invoke("calculator", ARGUMENTS)
        assert outcome.ok, outcome

    await _drive(registered, 1, 1.0)
    return (Figures.of("function", 1, *await _drive(function, 1, SECONDS_PER_POINT)),
            Figures.of("registry", 1, *await _drive(registered, 1, SECONDS_PER_POINT)))


async def _over_grpc(address: str, metadata: list[tuple[str, str]]) -> Figures:
    async with grpc.aio.insecure_channel(address) as channel:
        tools = tools_pb2_grpc.ToolsStub(channel)

        async def call(sequence: int) -> None:
            request = tools_pb2.InvokeRequest(call=common_pb2.ToolCall(
                id=f"call_{sequence}", name="calculator", arguments_json=ARGUMENTS))
            result = await tools.Invoke(request, metadata=metadata, timeout=10)
            assert result.ok, result

        await _drive(call, 1, 1.0)
        return Figures.of("Invoke", 1, *await _drive(call, 1, SECONDS_PER_POINT))


async def _turns(address: str, key: str, profiled: dict[str, int]) -> tuple[Figures, Figures]:
    metadata = [("authorization", f"Bearer {key}")]
    async with grpc.aio.insecure_channel(address) as channel:
        gateway = gateway_pb2_grpc.GatewayStub(channel)

        def turn(message: str, rounds: str) -> object:
            async def call(_: int) -> None:
                reply = await gateway.Chat(gateway_pb2.ChatRequest(message=message, model_hint="instant"),
                                           metadata=metadata, timeout=10)
                assert reply.route.entries["tool_rounds"] == rounds, reply.route
            return call

        plain, looped = turn(PLAIN, "0"), turn(WITH_TOOL, "1")
        await _drive(plain, 1, 1.0)
        await _drive(looped, 1, 1.0)
        without = Figures.of("no tool", 1, *await _drive(plain, 1, SECONDS_PER_POINT))
        with flame_graphs("tools", profiled):
            return without, Figures.of("one tool round", 1, *await _drive(looped, 1, SECONDS_PER_POINT))


def main() -> None:
    function, registry = asyncio.run(_in_process())
    with tempfile.TemporaryDirectory(prefix="moteur-bench-") as data_dir:
        options = StackOptions(data_dir=Path(data_dir), model_server=False, service_env={"MOTEUR_LOG_LEVEL": "WARNING"})
        with LocalStack(options) as stack:
            key = asyncio.run(bench_key(stack, "bench", "bench-user"))
            caller = stack.mesh_metadata(Identity("bench", "bench-user", "standard"))
            invoke = asyncio.run(_over_grpc(stack.address("tools"), caller))
            profiled = stack_pids(stack, "gateway", "router", "tools", "mongo")
            plain, looped = asyncio.run(_turns(stack.address("gateway"), key, profiled))
    print("tools: calculator called in-process vs the tools service's Invoke over gRPC (concurrency 1)")
    for figures in (function, registry, invoke):
        print(f"  {figures.name:<10} p50 {figures.p50_ms:7.3f} ms  p99 {figures.p99_ms:7.3f} ms")
    print(f"  Invoke adds p50 {invoke.p50_ms - registry.p50_ms:.3f} ms / p99 {invoke.p99_ms - registry.p99_ms:.3f} ms "
          "over the in-process registry (gRPC hop + audit write)")
    print("tool loop: a gateway Chat turn with the instant model, without and with one round of a tool call")
    for figures in (plain, looped):
        print(f"  {figures.name:<15} p50 {figures.p50_ms:7.3f} ms  p99 {figures.p99_ms:7.3f} ms  "
              f"{figures.throughput:6.0f} turns/s")
    print(f"  one tool round adds p50 {looped.p50_ms - plain.p50_ms:.3f} ms ({looped.p50_ms / plain.p50_ms:.2f}x)")


if __name__ == "__main__":
    main()
