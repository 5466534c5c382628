"""The OpenAI-compatible HTTP API's overhead against the gRPC API's Chat, at concurrency 1, 8 and 32 (issue 19).

Both sides do the same work: one turn on the instant model, in a session each caller keeps for 10 turns
(``X-Moteur-Session: new``, then its id), persisted. Measured in alternating slices of one run (gRPC, HTTP,
HTTP, gRPC): the machine's drift weighs on both alike. The HTTP side's client is httpx with keep-alive
connections, the gRPC side's grpc.aio: each load generator's own CPU is on the same two cores as the mesh.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import httpx

from bench.baseline import SliceResult
from bench.chat_path import PAYLOAD, TURNS_PER_SESSION, _chat_caller, _drive, _pooled
from bench.flames import flame_graphs, stack_pids
from bench.keys import bench_key
from bench.stats import Figures
from moteur.devstack.stack import LocalStack, StackOptions

CONCURRENCY = (1, 8, 32)
SECONDS_PER_POINT = float(os.environ.get("BENCH_SECONDS", "6"))
ROUNDS = 2  # slices per side and concurrency, in alternating order


def _http_caller(client: httpx.AsyncClient, url: str, key: str) -> Callable[[int], Awaitable[None]]:
    """One chat completion per call; each worker starts a new session every TURNS_PER_SESSION turns."""
    sessions: dict[int, str] = {}
    body = {"model": "instant", "messages": [{"role": "user", "content": PAYLOAD}]}

    async def call(sequence: int) -> None:
        worker, turn = divmod(sequence, 1_000_000)
        session = "new" if turn % TURNS_PER_SESSION == 0 else sessions[worker]
        reply = await client.post(url, json=body, headers={"authorization": f"Bearer {key}",
                                                           "x-moteur-session": session})
        reply.raise_for_status()
        sessions[worker] = reply.headers["x-moteur-session"]

    return call


async def _compare(stack: LocalStack, key: str) -> list[tuple[Figures, Figures]]:
    slice_seconds = SECONDS_PER_POINT / ROUNDS
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with grpc.aio.insecure_channel(stack.address("gateway")) as channel, \
            httpx.AsyncClient(limits=limits, timeout=30) as client:
        over_grpc = _chat_caller(channel, key)
        over_http = _http_caller(client, f"{stack.http_url}/chat/completions", key)
        await _drive(over_grpc, 1, 1.0)
        await _drive(over_http, 1, 1.0)  # warm-up of both
        pairs = []
        for concurrency in CONCURRENCY:
            grpc_slices: list[SliceResult] = []
            http_slices: list[SliceResult] = []
            for round_ in range(ROUNDS):
                order = [(over_grpc, grpc_slices), (over_http, http_slices)]
                for call, slices in (order if round_ % 2 == 0 else order[::-1]):
                    flames = stack_pids(stack, "gateway") if concurrency == 8 and round_ == 0 and call is over_http \
                        else {}
                    with flame_graphs("http_api", flames):
                        slices.append(SliceResult(*await _drive(call, concurrency, slice_seconds)))
            pairs.append((_pooled("gRPC Chat", concurrency, grpc_slices), _pooled("HTTP", concurrency, http_slices)))
        return pairs


def report(pairs: list[tuple[Figures, Figures]]) -> str:
    lines = [f"{'concurrency':>11} | {'gRPC p50':>9} {'gRPC p99':>9} {'gRPC rps':>9} | {'HTTP p50':>9} {'HTTP p99':>9} "
             f"{'HTTP rps':>9} | {'+p50 ms':>8} {'rps HTTP/gRPC':>13}"]
    for rpc, http in pairs:
        lines.append(
            f"{rpc.concurrency:>11} | {rpc.p50_ms:9.3f} {rpc.p99_ms:9.3f} {rpc.throughput:9.0f} | "
            f"{http.p50_ms:9.3f} {http.p99_ms:9.3f} {http.throughput:9.0f} | "
            f"{http.p50_ms - rpc.p50_ms:+8.3f} {http.throughput / rpc.throughput:13.2f}")
    return "\n".join(lines)


def main() -> dict[str, list[Figures]]:
    with tempfile.TemporaryDirectory(prefix="moteur-bench-") as data_dir:
        options = StackOptions(data_dir=Path(data_dir), model_server=False, service_env={"MOTEUR_LOG_LEVEL": "WARNING"})
        with LocalStack(options) as stack:
            key = asyncio.run(bench_key(stack, "bench", "bench-user"))
            pairs = asyncio.run(_compare(stack, key))
    print("HTTP API (/v1/chat/completions, httpx) vs gRPC Chat (grpc.aio), same turns, alternating slices:")
    print(report(pairs))
    print("+p50 ms: what the HTTP API adds to a turn's p50; rps HTTP/gRPC: throughput ratio")
    return {"gRPC Chat": [p[0] for p in pairs], "HTTP /v1/chat/completions": [p[1] for p in pairs]}


if __name__ == "__main__":
    main()
