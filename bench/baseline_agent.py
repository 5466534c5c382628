"""The old commit's side of a baseline run (bench/baseline.py starts it): run by path with PYTHONPATH on the
old commit's import tree, so every ``moteur`` and ``bench`` import below is that commit's own code.

It relies only on what has been stable since 1109934: LocalStack(StackOptions(data_dir, model_server,
service_env)), stack.address, bench.keys.bench_key(stack, tenant, user) and Gateway.Chat(session_id, message,
model_hint). Its load generator mirrors bench/chat_path.py's (10 turns a session, the same message), kept
here because this process cannot import the current bench package.

Protocol: one JSON line when ready ({"gateway": address}), then for each "run <concurrency> <seconds>" line
on stdin one JSON line {"latencies": [s, ...], "seconds": wall}; end of input stops the stack.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

import grpc

from bench.keys import bench_key
from moteur.devstack.stack import LocalStack, StackOptions
from moteur.v1 import gateway_pb2, gateway_pb2_grpc

TENANT, USER = "bench", "bench-user"
TURNS_PER_SESSION = 10
PAYLOAD = "What is the capital of France? Answer in one word."


def _protocol_channel() -> TextIO:
    """A private copy of stdout for the replies; fd 1 then points at stderr, so nothing the old code prints
    can corrupt the protocol."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


async def _slice(
    gateway: gateway_pb2_grpc.GatewayStub, key: str, concurrency: int, seconds: float
) -> dict[str, object]:
    """``concurrency`` callers chatting for ``seconds``, each starting a new session every 10 turns."""
    metadata = [("authorization", f"Bearer {key}")]
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        session_id, turn = "", 0
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            reply = await gateway.Chat(
                gateway_pb2.ChatRequest(session_id="" if turn % TURNS_PER_SESSION == 0 else session_id,
                                        message=PAYLOAD, model_hint="instant"),
                metadata=metadata, timeout=10,
            )
            latencies.append(time.perf_counter() - started)
            session_id, turn = reply.session_id, turn + 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return {"latencies": latencies, "seconds": time.perf_counter() - started}


async def _serve(address: str, key: str, replies: TextIO) -> None:
    """Answer commands until end of input; a failed slice is reported, not fatal."""
    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(address) as channel:
        gateway = gateway_pb2_grpc.GatewayStub(channel)
        replies.write(json.dumps({"gateway": address}) + "\n")
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = line.split()
            try:
                if len(command) != 3 or command[0] != "run":
                    raise ValueError(f"unknown command {line.strip()!r}")
                reply = await _slice(gateway, key, int(command[1]), float(command[2]))
            except Exception as error:  # reported to the parent, which raises it there
                reply = {"error": f"{type(error).__name__}: {error}"}
            replies.write(json.dumps(reply) + "\n")


def main() -> None:
    replies = _protocol_channel()
    with tempfile.TemporaryDirectory(prefix="moteur-baseline-") as data_dir:
        options = StackOptions(data_dir=Path(data_dir), model_server=False, service_env={"MOTEUR_LOG_LEVEL": "WARNING"})
        with LocalStack(options) as stack:
            key = asyncio.run(bench_key(stack, TENANT, USER))
            asyncio.run(_serve(stack.address("gateway"), key, replies))


if __name__ == "__main__":
    main()
