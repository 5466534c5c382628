"""What the mesh identity costs an internal call.

Four servers in this process answer the same trivial RPC (Tools.ListTools, an empty list), measured in
alternating rounds at concurrency 1 because this machine's speed drifts: a bare grpc.aio server; the same
behind moteur's server interceptor without the mesh guard (logs, metrics, spans, decoding: the floor every
service already paid); with the guard and one token reused (as a turn forwards its token to several calls:
the verification is cached); and with the guard and a new token per call (signed by the caller, verified
uncached). The figures that matter are the differences and ratios of the same run; the sign and verify costs
alone are timed in a loop. With ``BENCH_FLAMES``, a py-spy flame graph of this process (the four servers and
their caller) during the rounds.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.flames import THIS_PROCESS, flame_graphs
from bench.stats import Figures
from moteur.runtime.identity import SCOPE_TOOLS, Identity
from moteur.runtime.interceptors import MeshGuard, ObservabilityInterceptor
from moteur.runtime.mesh_tokens import MeshTokenIssuer, MeshTokenVerifier, TrustedKey, key_id
from moteur.v1 import tools_pb2, tools_pb2_grpc

ROUNDS = 6
CALLS_PER_ROUND = 400
CALLER = Identity("bench", "bench-user", "standard")


class _Empty(tools_pb2_grpc.ToolsServicer):
    async def ListTools(self, request: tools_pb2.ListToolsRequest, context: object) -> tools_pb2.ListToolsResponse:
        return tools_pb2.ListToolsResponse()


async def _server(interceptors: list[grpc.aio.ServerInterceptor]) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=interceptors)
    tools_pb2_grpc.add_ToolsServicer_to_server(_Empty(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _timed(function: Callable[[], object], count: int = 2000) -> float:
    """Microseconds per call."""
    started = time.perf_counter()
    for _ in range(count):
        function()
    return (time.perf_counter() - started) / count * 1e6


async def _measure() -> tuple[dict[str, Figures], dict[str, float]]:
    key = Ed25519PrivateKey.generate()
    issuer = MeshTokenIssuer("gateway", key)
    trusted = {key_id(key.public_key()): TrustedKey("gateway", key.public_key())}
    guard = MeshGuard("tools", MeshTokenVerifier(trusted, "tools"), {"ListTools": SCOPE_TOOLS, "Invoke": SCOPE_TOOLS})
    servers = {
        "bare grpc.aio": await _server([]),
        "interceptor, no guard": await _server([ObservabilityInterceptor("tools")]),
        "guard, token reused": await _server([ObservabilityInterceptor("tools", guard)]),
        "guard, new token per call": await _server([ObservabilityInterceptor("tools", guard)]),
    }
    reused = issuer.sign(CALLER, seconds=3600).as_metadata()
    metadata: dict[str, Callable[[], list[tuple[str, str]]]] = {
        "bare grpc.aio": list, "interceptor, no guard": list, "guard, token reused": lambda: reused,
        "guard, new token per call": lambda: issuer.sign(CALLER, seconds=60).as_metadata(),
    }
    latencies: dict[str, list[float]] = {name: [] for name in servers}
    elapsed = dict.fromkeys(servers, 0.0)
    channels = {name: grpc.aio.insecure_channel(address) for name, (_, address) in servers.items()}
    try:
        calls: dict[str, Callable[[], Awaitable[object]]] = {}
        for name, channel in channels.items():
            stub = tools_pb2_grpc.ToolsStub(channel)
            calls[name] = lambda stub=stub, name=name: stub.ListTools(
                tools_pb2.ListToolsRequest(), metadata=metadata[name](), timeout=5)
            await calls[name]()  # connected and warm
        with flame_graphs("mesh_identity", {THIS_PROCESS: os.getpid()}):
            for _ in range(ROUNDS):
                for name, call in calls.items():
                    round_started = time.perf_counter()
                    for _ in range(CALLS_PER_ROUND):
                        started = time.perf_counter()
                        await call()
                        latencies[name].append(time.perf_counter() - started)
                    elapsed[name] += time.perf_counter() - round_started
    finally:
        for channel in channels.values():
            await channel.close()
        for server, _ in servers.values():
            await server.stop(0)
    token = issuer.sign(CALLER, seconds=3600).token
    cold = MeshTokenVerifier(trusted, "tools", cache_size=1)
    alone = {
        "sign (µs)": _timed(lambda: issuer.sign(CALLER, seconds=60)),
        "verify uncached (µs)": _timed(lambda: cold._verify(token)),
        "verify cached (µs)": _timed(lambda: guard.verifier.verify(token)),
    }
    return {name: Figures.of(name, 1, values, elapsed[name]) for name, values in latencies.items()}, alone


def main() -> dict[str, Figures]:
    figures, alone = asyncio.run(_measure())
    bare = figures["bare grpc.aio"].p50_ms
    floor = figures["interceptor, no guard"].p50_ms
    print("\nmesh identity: one internal unary call at concurrency 1, alternating rounds")
    print(f"{'server':<28}{'p50 ms':>9}{'p99 ms':>9}{'x bare':>9}{'+ms over no guard':>20}")
    for name, f in figures.items():
        print(f"{name:<28}{f.p50_ms:>9.3f}{f.p99_ms:>9.3f}{f.p50_ms / bare:>9.2f}{f.p50_ms - floor:>20.3f}")
    print("alone: " + ", ".join(f"{name} {value:.1f}" for name, value in alone.items()))
    return figures


if __name__ == "__main__":
    main()
