"""Router overhead: the same OpenAI-compatible endpoint called directly with LangChain's ChatOpenAI vs
through the router service (gRPC Complete → route → ChatOpenAI), at concurrency 1, 8 and 32; then the
time a fallback costs when the first candidate fails.

The endpoint is the fault server (moteur.devstack.faults) in its own process, answering at once, so
that the figures are the router's own cost and not a model's. Both paths run in one process each, on the
same machine, in the same run: the differences are what matter.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import yaml
from langchain_openai import ChatOpenAI

from bench.chat_path import _drive
from bench.stats import Figures
from moteur.devstack.processes import ManagedProcess, free_port, port_open
from moteur.runtime.identity import Identity
from moteur.v1 import common_pb2, router_pb2, router_pb2_grpc

CONCURRENCY = (1, 8, 32)
SECONDS_PER_POINT = float(os.environ.get("BENCH_SECONDS", "6"))
PAYLOAD = "What is the capital of France? Answer in one word."


def _registry(base_url: str) -> dict[str, object]:
    endpoint = {"provider": "openai", "base_url": base_url, "max_concurrency": 256, "timeout_seconds": 10}
    return {
        "models": [
            {"name": "direct", "model": "ok", **endpoint},
            {"name": "failing", "model": "status:500", **endpoint},
            {"name": "unreachable", "model": "ok", **endpoint, "base_url": f"http://127.0.0.1:{free_port()}/v1"},
        ],
        "routes": [
            {"name": "chat", "request_types": ["chat"], "candidates": ["direct"]},
            {"name": "after-500", "request_types": ["summarize"], "candidates": ["failing", "direct"]},
            {"name": "after-refused", "request_types": ["extract"], "candidates": ["unreachable", "direct"]},
            {"name": "default", "candidates": ["direct"]},
        ],
        "retry": {"attempts": 1},  # fallback time alone; retries add their backoff on top
        "breaker": {"failure_threshold": 1_000_000, "open_seconds": 30},  # never open, unless the phase wants it
    }


async def _direct(base_url: str) -> list[Figures]:
    chat = ChatOpenAI(model="ok", base_url=base_url, api_key="not-needed", max_retries=0, timeout=10)

    async def call(_: int) -> None:
        await chat.ainvoke(PAYLOAD)

    await _drive(call, 1, 1.0)
    return [Figures.of("direct", c, *await _drive(call, c, SECONDS_PER_POINT)) for c in CONCURRENCY]


def _request(request_type: int) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(
        messages=[router_pb2.PromptMessage(role=common_pb2.ROLE_USER, content=PAYLOAD)], request_type=request_type
    )


async def _routed(address: str) -> tuple[list[Figures], dict[str, Figures]]:
    metadata = Identity("bench", "bench-user", "standard").as_metadata()
    async with grpc.aio.insecure_channel(address) as channel:
        router = router_pb2_grpc.RouterStub(channel)

        def caller(request_type: int):  # type: ignore[no-untyped-def]
            request = _request(request_type)

            async def call(_: int) -> None:
                await router.Complete(request, metadata=metadata, timeout=10)

            return call

        plain = caller(common_pb2.REQUEST_TYPE_CHAT)
        await _drive(plain, 1, 1.0)
        figures = [Figures.of("router", c, *await _drive(plain, c, SECONDS_PER_POINT)) for c in CONCURRENCY]
        fallbacks = {
            "first candidate answers HTTP 500": caller(common_pb2.REQUEST_TYPE_SUMMARIZE),
            "first candidate refuses connections": caller(common_pb2.REQUEST_TYPE_EXTRACT),
        }
        fallback_figures = {}
        for name, call in fallbacks.items():
            await _drive(call, 1, 0.5)
            fallback_figures[name] = Figures.of(name, 1, *await _drive(call, 1, SECONDS_PER_POINT / 2))
        return figures, fallback_figures


def main() -> dict[str, list[Figures]]:
    fault_port, router_port = free_port(), free_port()
    faults = subprocess.Popen([sys.executable, "-m", "moteur.devstack.faults", str(fault_port)], stdout=subprocess.PIPE)
    base_url = f"http://127.0.0.1:{fault_port}/v1"
    with tempfile.TemporaryDirectory(prefix="moteur-bench-router-") as data_dir:
        models_file = Path(data_dir) / "models.yaml"
        models_file.write_text(yaml.safe_dump(_registry(base_url)))
        env = {**os.environ, "MOTEUR_GRPC_PORT": str(router_port), "MOTEUR_METRICS_PORT": "0",
               "MOTEUR_MODELS_FILE": str(models_file), "MOTEUR_LOG_LEVEL": "ERROR",
               "MOTEUR_MEMORY_ADDR": f"127.0.0.1:{free_port()}"}
        router = ManagedProcess("router", [sys.executable, "-m", "moteur.router"], Path(data_dir) / "router.log",
                                env=env, ready=lambda: port_open(router_port))
        try:
            assert faults.stdout is not None and faults.stdout.readline().startswith(b"ready")
            router.start()
            direct = asyncio.run(_direct(base_url))
            routed, fallbacks = asyncio.run(_routed(f"127.0.0.1:{router_port}"))
        finally:
            router.stop()
            faults.terminate()
            faults.wait()
    print("router overhead: ChatOpenAI → endpoint directly vs gRPC → router → ChatOpenAI → the same endpoint")
    print(f"{'concurrency':>11} | {'direct p50':>10} {'p99':>8} {'rps':>6} | {'router p50':>10} {'p99':>8} "
          f"{'rps':>6} | {'+p50 ms':>8} {'+p99 ms':>8}")
    for d, r in zip(direct, routed, strict=True):
        print(f"{d.concurrency:>11} | {d.p50_ms:>10.3f} {d.p99_ms:>8.3f} {d.throughput:>6.0f} | {r.p50_ms:>10.3f} "
              f"{r.p99_ms:>8.3f} {r.throughput:>6.0f} | {r.p50_ms - d.p50_ms:>8.3f} {r.p99_ms - d.p99_ms:>8.3f}")
    base = routed[0]
    print("time to fall back (concurrency 1, one attempt per candidate), added to a routed call that succeeds first:")
    for name, figures in fallbacks.items():
        print(f"  {name:<40} p50 {figures.p50_ms:7.3f} ms (+{figures.p50_ms - base.p50_ms:.3f})  "
              f"p99 {figures.p99_ms:7.3f} ms")
    return {"ChatOpenAI → endpoint": direct, "gRPC → router → endpoint": routed}


if __name__ == "__main__":
    started = time.perf_counter()
    main()
