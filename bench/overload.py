"""Overload: offered load at 10x the model capacity, mixed priorities and tenants, for a bounded time.

The model is the instant provider paced at 100 ms a turn and the gateway dispatches 4 turns at once
(one slot reserved for critical), so capacity is 40 turns/s, 30 of them for normal turns: a fair queue owes
the quiet tenant half of those (15/s) against the 10/s it asks. (With 2 slots of 50 ms and one reserved, the
quiet tenant's fair share was exactly its demand, and critical turns borrowing the other slot put it below:
a setup that could not tell a fair queue from an unfair one.) Two phases of the same length:
  unloaded: a quiet tenant (normal, 10/s) and an operator tenant (critical, 4/s);
  loaded:   the same, next to a noisy tenant sending 400 normal turns/s (10x capacity).
Targets (issue 4): critical p99 loaded <= 2x unloaded; the quiet tenant keeps >= 90 % of its throughput;
every accepted request ends with an answer or a clear status; shed answers in <= 5 ms.
With ``BENCH_FLAMES``, py-spy flame graphs of the gateway, the router and the store during the loaded phase.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from bench.flames import flame_graphs, stack_pids
from bench.keys import bench_key
from moteur.devstack.stack import LocalStack, StackOptions
from moteur.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

PHASE_SECONDS = 6.0
MODEL_MS = 100
CAPACITY = 4
CLEAR_CODES = {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass(frozen=True)
class Flow:
    tenant: str
    priority: int
    rate: float  # turns per second offered


@dataclass(frozen=True)
class Outcome:
    flow: str
    code: grpc.StatusCode
    seconds: float


async def _offer(address: str, keys: dict[str, str], flows: list[Flow], seconds: float) -> list[Outcome]:
    outcomes: list[Outcome] = []
    async with grpc.aio.insecure_channel(address) as channel:
        gateway = gateway_pb2_grpc.GatewayStub(channel)

        async def one(flow: Flow) -> None:
            started = time.perf_counter()
            try:
                await gateway.Chat(
                    gateway_pb2.ChatRequest(message="hello", model_hint="paced", priority=flow.priority),
                    metadata=[("authorization", f"Bearer {keys[flow.tenant]}")], timeout=30,
                )
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
            outcomes.append(Outcome(flow.tenant, code, time.perf_counter() - started))

        async def open_loop(flow: Flow) -> list[asyncio.Task[None]]:
            tasks, interval, start = [], 1 / flow.rate, time.perf_counter()
            for i in range(int(seconds * flow.rate)):
                await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
                tasks.append(asyncio.create_task(one(flow)))
            return tasks

        batches = await asyncio.gather(*(open_loop(flow) for flow in flows))
        await asyncio.gather(*(task for batch in batches for task in batch))
    return outcomes


def _shed_handling(metrics_port: int) -> tuple[float, float]:
    """From the gateway's histogram of refused Chat calls: the share within 5 ms, and a bucket bound on p99."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (sample.name == "moteur_rpc_duration_seconds_bucket" and labels.get("method") == "Chat"
                    and labels.get("code") == "RESOURCE_EXHAUSTED"):
                buckets.append((float(labels["le"]), sample.value))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    if not total:
        return float("nan"), float("nan")
    within = next(count for le, count in buckets if le >= 0.005) / total
    bound = next(le for le, count in buckets if count >= 0.99 * total)
    return within, bound


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] * 1000 if len(values) > 1 else float("nan")


def main() -> dict[str, list[Outcome]]:
    quiet = Flow("quiet", common_pb2.PRIORITY_NORMAL, 10)
    ops = Flow("ops", common_pb2.PRIORITY_CRITICAL, 8)  # enough samples for a p99 that means something
    noisy = Flow("noisy", common_pb2.PRIORITY_NORMAL, 10 * CAPACITY * 1000 / MODEL_MS)
    options = StackOptions(
        model_server=False,
        extra_models=[{"name": "paced", "provider": "instant", "simulated_latency_ms": MODEL_MS}],
        service_env={"MOTEUR_LOG_LEVEL": "WARNING", "MOTEUR_QUEUE_CAPACITY": str(CAPACITY),
                     "MOTEUR_QUEUE_CRITICAL_SHARE": "0.25", "MOTEUR_QUEUE_MAX_QUEUED": "64",
                     "MOTEUR_QUEUE_MAX_QUEUED_PER_TENANT": "16"},
    )
    with tempfile.TemporaryDirectory(prefix="moteur-bench-") as data_dir:
        options.data_dir = Path(data_dir)
        with LocalStack(options) as stack:
            keys = {t: asyncio.run(bench_key(stack, t, "u")) for t in ("quiet", "ops", "noisy")}
            asyncio.run(_offer(stack.address("gateway"), keys, [quiet, ops], 2.0))  # warm-up: connections, caches
            unloaded = asyncio.run(_offer(stack.address("gateway"), keys, [quiet, ops], PHASE_SECONDS))
            with flame_graphs("overload", stack_pids(stack, "gateway", "router", "mongo")):
                loaded = asyncio.run(_offer(stack.address("gateway"), keys, [quiet, ops, noisy], PHASE_SECONDS))
            server_side = _shed_handling(stack.ports["gateway-metrics"])

    def served(outcomes: list[Outcome], tenant: str) -> list[float]:
        return [o.seconds for o in outcomes if o.flow == tenant and o.code is grpc.StatusCode.OK]

    by_code: dict[str, int] = defaultdict(int)
    for o in loaded:
        by_code[f"{o.flow}:{o.code.name}"] += 1
    unclear = [o for o in unloaded + loaded if o.code not in CLEAR_CODES]
    shed = [o.seconds for o in loaded if o.code is grpc.StatusCode.RESOURCE_EXHAUSTED]
    critical_ratio = _p99(served(loaded, "ops")) / _p99(served(unloaded, "ops"))
    quiet_share = len(served(loaded, "quiet")) / max(1, len(served(unloaded, "quiet")))
    print(f"overload: model {MODEL_MS} ms/turn x {CAPACITY} slots = {CAPACITY * 1000 // MODEL_MS} turns/s; "
          f"noisy tenant offers {noisy.rate:.0f}/s for {PHASE_SECONDS:g} s")
    print(f"  outcomes under load: {dict(sorted(by_code.items()))}")
    before, after = _p99(served(unloaded, "ops")), _p99(served(loaded, "ops"))
    print(f"  critical p99: unloaded {before:.1f} ms, loaded {after:.1f} ms -> {critical_ratio:.2f}x (target <= 2x)")
    print(f"  quiet tenant served: unloaded {len(served(unloaded, 'quiet'))}, loaded {len(served(loaded, 'quiet'))}"
          f" -> {quiet_share:.0%} (target >= 90 %)")
    print(f"  shed answers: {len(shed)}, p50 {statistics.median(shed) * 1000:.2f} ms, p99 {_p99(shed):.2f} ms "
          "(target p99 <= 5 ms; measured by the client, which is generating the load on the same 2 cores)")
    within, bound = server_side
    print(f"  shed answers in the gateway (its own timer, from the call's arrival to the refusal): {within:.1%} "
          f"within 5 ms, p99 <= {bound * 1000:g} ms (histogram bucket)")
    print(f"  requests without a clear answer: {len(unclear)} (target 0)")
    return {"unloaded": unloaded, "loaded (noisy tenant at 10x capacity)": loaded}


if __name__ == "__main__":
    main()
