"""Time to first token: the gateway's ChatStream against the router's StreamComplete called directly.

Issue 18's target: the first token through the gateway at most 3 ms after the direct first token. Both run
against the same instant model, which waits FIRST_TOKEN_MS and then streams one word every WORD_MS (a stream
that lasts, as a model's does), in alternating slices of one run (gateway, direct, direct, gateway, …) so
that the drift of this shared machine weighs on both alike.

The gateway's path: auth, admission (limits in Redis, the fair queue), the session read (a new session every
TURNS_PER_SESSION turns), then the router's stream. The direct call carries a mesh token of its own (the
gateway signs one per turn, and the router verifies each new token once) and a prompt as long as the
gateway's (the session's earlier turns), so the difference is what the gateway adds before the first token.
Every stream is read to its end: the gateway persists the turn after the last token, and that work competes
with the next turns' first tokens, as it would in service.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import grpc

from bench.flames import flame_graphs, stack_pids
from bench.keys import bench_key
from bench.stats import Figures
from moteur.devstack.stack import LocalStack, StackOptions
from moteur.runtime.identity import Identity
from moteur.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, router_pb2, router_pb2_grpc

CONCURRENCY = (1, 8)
SECONDS_PER_POINT = float(os.environ.get("BENCH_SECONDS", "8"))  # per side and concurrency, over all slices
ROUNDS = 4  # alternating slices per side and concurrency (ABBA order)
TARGET_MS = 3.0
FIRST_TOKEN_MS = 5
WORD_MS = 1
MODEL = "instant-stream"
BENCH_CALLER = Identity("bench", "bench-user", "service")
TURNS_PER_SESSION = 10
PAYLOAD = "What is the capital of France? Answer in one word."
ANSWER = f"instant answer to: {PAYLOAD}"  # what the instant model answers, for the direct call's history
STREAMING_MODEL: dict[str, object] = {
    "name": MODEL, "provider": "instant", "context_window": 8192, "max_concurrency": 64,
    "simulated_latency_ms": FIRST_TOKEN_MS, "simulated_word_ms": WORD_MS,
}


class Timed(NamedTuple):
    """One call, in seconds from its start."""

    first: float  # the first token
    last: float  # the stream's last event
    started: float = 0.0  # the gateway's ChatStarted (before the router is called); 0 for a direct call


@dataclass
class Side:
    """One path's calls over all its slices."""

    name: str
    calls: list[Timed] = field(default_factory=list)
    seconds: float = 0.0

    def figures(self, concurrency: int, what: str = "first") -> Figures:
        return Figures.of(self.name, concurrency, [getattr(c, what) for c in self.calls], self.seconds)


Call = Callable[[int, int], Awaitable[Timed]]  # (worker, its turn number) -> timings


async def _slice(call: Call, side: Side, concurrency: int, seconds: float, turns: dict[int, int]) -> None:
    """``concurrency`` callers for ``seconds``; each carries its turn count in its session across slices."""
    stop_at = time.perf_counter() + seconds

    async def worker(worker_id: int) -> None:
        while time.perf_counter() < stop_at:
            turn = turns.get(worker_id, 0)
            side.calls.append(await call(worker_id, turn))
            turns[worker_id] = turn + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    side.seconds += time.perf_counter() - started


def _gateway_caller(channel: grpc.aio.Channel, key: str) -> Call:
    gateway = gateway_pb2_grpc.GatewayStub(channel)
    metadata = [("authorization", f"Bearer {key}")]
    sessions: dict[int, str] = {}

    async def call(worker: int, turn: int) -> Timed:
        session_id = "" if turn % TURNS_PER_SESSION == 0 else sessions[worker]
        request = gateway_pb2.ChatRequest(session_id=session_id, message=PAYLOAD, model_hint=MODEL)
        started = time.perf_counter()
        opened = first = 0.0
        async for event in gateway.ChatStream(request, metadata=metadata, timeout=10):
            if event.HasField("started"):
                opened = time.perf_counter() - started
                sessions[worker] = event.started.session_id
            elif event.HasField("delta") and not first:
                first = time.perf_counter() - started
        assert first, "the gateway's stream ended without a token"
        return Timed(first, time.perf_counter() - started, opened)

    return call


def _direct_caller(channel: grpc.aio.Channel, stack: LocalStack) -> Call:
    router = router_pb2_grpc.RouterStub(channel)
    issuer = stack.mesh_issuer()

    async def call(worker: int, turn: int) -> Timed:
        # A token of its own, as the gateway signs for each turn: the router checks each new token once.
        metadata = issuer.sign(replace(BENCH_CALLER, request_id=uuid.uuid4().hex), seconds=10).as_metadata()
        history = [router_pb2.PromptMessage(role=role, content=text) for _ in range(turn % TURNS_PER_SESSION)
                   for role, text in ((common_pb2.ROLE_USER, PAYLOAD), (common_pb2.ROLE_ASSISTANT, ANSWER))]
        request = router_pb2.CompleteRequest(
            messages=[*history, router_pb2.PromptMessage(role=common_pb2.ROLE_USER, content=PAYLOAD)],
            model_hint=MODEL,
        )
        started = time.perf_counter()
        first = 0.0
        async for event in router.StreamComplete(request, metadata=metadata, timeout=10):
            if event.HasField("delta") and not first:
                first = time.perf_counter() - started
        assert first, "the router's stream ended without a token"
        return Timed(first, time.perf_counter() - started)

    return call


async def _measure(stack: LocalStack, key: str) -> list[tuple[Side, Side, int]]:
    """Per concurrency, the gateway's and the direct calls, in ROUNDS alternating slices each; py-spy flame
    graphs of the gateway and the router at concurrency 1 (with BENCH_FLAMES)."""
    slice_seconds = SECONDS_PER_POINT / ROUNDS
    async with (grpc.aio.insecure_channel(stack.address("gateway")) as gateway_channel,
                grpc.aio.insecure_channel(stack.address("router")) as router_channel):
        paths = {"gateway": _gateway_caller(gateway_channel, key), "direct": _direct_caller(router_channel, stack)}
        turns: dict[str, dict[int, int]] = {name: {} for name in paths}
        for name, call in paths.items():  # warm-up: connections, caches, the router's first route
            await _slice(call, Side(name), 1, 1.0, turns[name])
        results = []
        for concurrency in CONCURRENCY:
            sides = {name: Side(name) for name in paths}
            profiled = stack_pids(stack, "gateway", "router") if concurrency == 1 else {}
            with flame_graphs("streaming", profiled):
                for round_ in range(ROUNDS):
                    for name in (list(paths) if round_ % 2 == 0 else list(reversed(paths))):
                        await _slice(paths[name], sides[name], concurrency, slice_seconds, turns[name])
            results.append((sides["gateway"], sides["direct"], concurrency))
        return results


def report(results: list[tuple[Side, Side, int]]) -> str:
    lines = [
        f"{'concurrency':>11} | {'gw p50':>7} {'gw p99':>7} | {'direct p50':>10} {'direct p99':>10} | "
        f"{'+p50':>6} {'+p99':>6} | {'gw started p50':>14} | {'gw last p50':>11} {'direct last p50':>15} | "
        f"{'calls gw/direct':>15}"
    ]
    for gateway, direct, concurrency in results:
        g, d = gateway.figures(concurrency), direct.figures(concurrency)
        opened, g_last, d_last = (side.figures(concurrency, what) for side, what in
                                  ((gateway, "started"), (gateway, "last"), (direct, "last")))
        lines.append(
            f"{concurrency:>11} | {g.p50_ms:>7.2f} {g.p99_ms:>7.2f} | {d.p50_ms:>10.2f} {d.p99_ms:>10.2f} | "
            f"{g.p50_ms - d.p50_ms:>+6.2f} {g.p99_ms - d.p99_ms:>+6.2f} | "
            f"{opened.p50_ms:>14.2f} | {g_last.p50_ms:>11.2f} {d_last.p50_ms:>15.2f} | "
            f"{g.requests:>7}/{d.requests:<7}"
        )
    return "\n".join(lines)


def main() -> dict[str, list[Figures]]:
    with tempfile.TemporaryDirectory(prefix="moteur-bench-") as data_dir:
        options = StackOptions(data_dir=Path(data_dir), model_server=False, extra_models=[STREAMING_MODEL],
                               service_env={"MOTEUR_LOG_LEVEL": "WARNING"})
        with LocalStack(options) as stack:
            key = asyncio.run(bench_key(stack, BENCH_CALLER.tenant, BENCH_CALLER.user))
            results = asyncio.run(_measure(stack, key))
    print(f"time to first token: gateway ChatStream vs router StreamComplete called directly, model {MODEL!r} "
          f"(first word after {FIRST_TOKEN_MS} ms, then one every {WORD_MS} ms), {ROUNDS} alternating slices each")
    print(report(results))
    print("ms; +p50/+p99: what the gateway adds to the first token; gw started: its ChatStarted event (auth, "
          "admission and the session read done); last: the stream's last event (the gateway's: the persisted answer)")
    gateway, direct, _ = results[0]
    added = gateway.figures(1).p50_ms - direct.figures(1).p50_ms
    print(f"target (issue 18): gateway first token <= direct first token + {TARGET_MS:g} ms at p50, concurrency 1: "
          f"{added:+.2f} ms, {'met' if added <= TARGET_MS else 'missed'}")
    return {
        "ChatStream first token": [gateway.figures(c) for gateway, _, c in results],
        "StreamComplete first token (direct)": [direct.figures(c) for _, direct, c in results],
    }


if __name__ == "__main__":
    main()
