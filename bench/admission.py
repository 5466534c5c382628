"""Admission overhead on an empty queue: auth (cached key) + rate limiter (one Redis round trip) + queue,
and the settlement after the answer, measured in-process against the real redis-server and SecantusDB.

Target (issue 4): admission p99 ≤ 1 ms. With ``BENCH_FLAMES``, a py-spy flame graph of this process during the
measured loop (auth, limiter, queue and settlement all run here; Redis, the one store the loop waits on, is not
Python).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import grpc
import redis.asyncio as aioredis

from bench.flames import THIS_PROCESS, flame_graphs
from bench.keys import bench_key
from bench.stats import Figures
from moteur.devstack.stack import REPO_CONFIG, LocalStack, StackOptions
from moteur.gateway.admission import AdmissionControl
from moteur.gateway.alerts import AlertLog
from moteur.gateway.auth import Authenticator
from moteur.gateway.dispatch import DispatchPools
from moteur.gateway.limiter import RateLimiter
from moteur.gateway.limits import LimitsCatalog, load_tiers
from moteur.gateway.settings import GatewaySettings
from moteur.runtime.api_keys import ApiKeyStore
from moteur.runtime.mongo import connect_mongo, database
from moteur.runtime.settings import MongoSettings
from moteur.v1 import common_pb2, router_pb2_grpc

REQUESTS = 3000


class _CallContext:
    """What the authenticator reads of a gRPC call: its metadata."""

    def __init__(self, key: str) -> None:
        self._metadata = (("authorization", f"Bearer {key}"),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


async def _measure(stack: LocalStack) -> tuple[Figures, Figures]:
    settings = MongoSettings(mongo_uri=stack.mongo_uri)
    mongo = connect_mongo(settings)
    db = database(mongo, settings)
    limits_store = aioredis.Redis.from_url(stack.redis_url, socket_timeout=0.25, socket_connect_timeout=0.25)
    router_channel = grpc.aio.insecure_channel(stack.address("router"))
    try:
        keys = ApiKeyStore(db)
        key = await bench_key(stack, "bench", "bench-user")
        catalog = LimitsCatalog(load_tiers(REPO_CONFIG / "tiers.yaml"), db)
        issuer = stack.mesh_issuer()  # the gateway's key: authentication signs each caller's mesh token
        pools = DispatchPools(GatewaySettings(), router_pb2_grpc.RouterStub(router_channel), issuer)
        await pools.refresh()  # the dispatch capacities, as a gateway reads them at start
        limiter = RateLimiter(limits_store, catalog)
        admission = AdmissionControl(catalog, limiter, AlertLog(db), pools)
        pool = pools.key(common_pb2.REQUEST_TYPE_CHAT, "instant")
        queue = pools.queue(pool)
        auth, context = Authenticator(keys, issuer), _CallContext(key)
        admit_times, settle_times = [], []
        with flame_graphs("admission", {THIS_PROCESS: os.getpid()}):
            started = time.perf_counter()
            for _ in range(REQUESTS):
                t0 = time.perf_counter()
                identity = await auth.authenticate(context)
                ticket = await admission.admit(identity, identity.user, common_pb2.PRIORITY_NORMAL, 300, pool)
                await queue.acquire(identity.tenant, common_pb2.PRIORITY_NORMAL - 1)
                t1 = time.perf_counter()
                queue.release(t1)
                await admission.settle(ticket, 120, 0)
                settle_times.append(time.perf_counter() - t1)
                admit_times.append(t1 - t0)
            seconds = time.perf_counter() - started
        await limiter.close()
        return (Figures.of("admission", 1, admit_times[200:], seconds),
                Figures.of("settlement", 1, settle_times[200:], seconds))
    finally:
        await router_channel.close()
        await limits_store.aclose()
        await mongo.close()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="moteur-bench-") as data_dir:
        with LocalStack(StackOptions(data_dir=Path(data_dir), model_server=False)) as stack:
            admit, settle = asyncio.run(_measure(stack))
    print("admission (auth with a cached key + limiter in one Redis round trip + queue, empty queue):")
    print(f"  admit  p50 {admit.p50_ms:.3f} ms  p99 {admit.p99_ms:.3f} ms   (target p99 <= 1 ms)")
    print(f"  settle p50 {settle.p50_ms:.3f} ms  p99 {settle.p99_ms:.3f} ms   (after the answer)")


if __name__ == "__main__":
    main()
