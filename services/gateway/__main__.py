"""``python -m moteur.gateway``: the public API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from moteur.gateway.admission import AdmissionControl
from moteur.gateway.alerts import AlertLog
from moteur.gateway.api import AdminRpcs, ChatRpcs, FileRpcs, MemoryRpcs, SessionRpcs, gateway_servicer
from moteur.gateway.auth import Authenticator
from moteur.gateway.conversation import Conversation
from moteur.gateway.dispatch import DispatchPools
from moteur.gateway.http.app import HttpApi
from moteur.gateway.http.server import serving
from moteur.gateway.idempotency import IdempotencyStore
from moteur.gateway.limiter import RateLimiter
from moteur.gateway.limits import LimitsCatalog, load_tiers
from moteur.gateway.outbox import MemoryOutbox
from moteur.gateway.recall import Recall
from moteur.gateway.rendering import FileRenderer
from moteur.gateway.response_cache import ResponseCache
from moteur.gateway.sessions import SessionStore
from moteur.gateway.settings import GatewaySettings, RedisSettings
from moteur.gateway.tenants import TenantSettings
from moteur.gateway.tooling import ToolBox
from moteur.gateway.usage import UsageLedger
from moteur.gateway.windows import SessionWindows
from moteur.runtime.api_keys import ApiKeyStore
from moteur.runtime.channels import open_channel
from moteur.runtime.group_commit import GroupCommit
from moteur.runtime.mesh_tokens import MeshTokenIssuer
from moteur.runtime.mongo import connect_mongo, database
from moteur.runtime.server import Registration, ServiceApp, run
from moteur.runtime.settings import MeshSettings, MongoSettings, ServerSettings
from moteur.v1 import (
    files_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    memory_pb2_grpc,
    router_pb2_grpc,
    tools_pb2_grpc,
)


async def build() -> AsyncIterator[Sequence[Registration]]:
    mesh, mongo_settings, settings = MeshSettings(), MongoSettings(), GatewaySettings()
    tiers = load_tiers(settings.tiers_file)
    mongo = connect_mongo(mongo_settings)
    # Short timeouts: a Redis that does not answer must trigger the tier's fallback policy quickly. One
    # immediate retry on a new connection: after a Redis restart every pooled connection is dead, and each
    # would otherwise fail one call (a fail-closed caller's UNAVAILABLE). A script whose reply was lost may
    # so run twice: it then over-counts one call, never over-admits.
    limits_store = aioredis.Redis.from_url(
        RedisSettings().redis_url, socket_timeout=0.25, socket_connect_timeout=0.25, retry=Retry(NoBackoff(), 1),
    )
    db = database(mongo, mongo_settings)
    router_channel, memory_channel = open_channel(mesh.router_addr), open_channel(mesh.memory_addr)
    tools_channel, files_channel = open_channel(mesh.tools_addr), open_channel(mesh.files_addr)
    files = files_pb2_grpc.FilesStub(files_channel)
    toolbox = ToolBox(tools_pb2_grpc.ToolsStub(tools_channel), mesh.call_timeout_seconds,
                      settings.tool_list_cache_seconds)
    memory = memory_pb2_grpc.MemoryStub(memory_channel)
    issuer = MeshTokenIssuer.from_settings("gateway")
    outbox, tenants = MemoryOutbox(db, memory, issuer), TenantSettings(db)
    keys, sessions, usage, idempotency = ApiKeyStore(db), SessionStore(db), UsageLedger(db), IdempotencyStore(db)
    catalog, alerts = LimitsCatalog(tiers, db), AlertLog(db, settings.alert_webhook_url)
    for store in (keys, sessions, usage, idempotency, alerts, outbox):
        await store.ensure_indexes()
    router = router_pb2_grpc.RouterStub(router_channel)
    pools = DispatchPools(settings, router, issuer)
    await pools.refresh()  # the models' capacity; a router not up yet is read on its first answer
    limiter = RateLimiter(limits_store, catalog, settings.lease_seconds, ledger=usage)
    admission = AdmissionControl(catalog, limiter, alerts, pools)
    commit = GroupCommit(mongo, settings.group_commit_max_turns)
    cache = ResponseCache(memory, lambda: pools.revision, settings.response_cache_min_score,
                          settings.response_cache_max_history, settings.response_cache_timeout_seconds)
    conversation = Conversation(
        commit, sessions, usage, idempotency, router,
        mesh.call_timeout_seconds, on_registry=pools.observe,
        recall=Recall(memory, settings.recall_top_k, settings.recall_min_score, settings.recall_token_budget,
                      settings.recall_timeout_seconds, settings.recall_margin, settings.recall_kinds,
                      settings.recall_fact_bonus, settings.recall_word_bonus),
        outbox=outbox, tenants=tenants, toolbox=toolbox, settings=settings,
        files=FileRenderer(files, mesh.call_timeout_seconds),
        windows=SessionWindows(sessions, limits_store, settings.session_windows, settings.session_window_seconds),
        cache=cache,
    )
    auth = Authenticator(keys, issuer)
    servicer = gateway_servicer(
        ChatRpcs(auth, conversation, admission, router, toolbox),
        SessionRpcs(auth, sessions, conversation),
        MemoryRpcs(auth, memory, conversation),
        FileRpcs(auth, files),
        AdminRpcs(auth, keys, usage, admission, tenants, cache),
    )
    outbox.start()
    server = ServerSettings()
    http = HttpApi(auth, router, conversation, admission, memory, usage, commit)

    def drain() -> None:  # queued turns are handed back at once, in-flight ones finish; HTTP refuses new ones
        pools.drain()
        http.drain()

    try:
        async with serving(http.app(), server.listen_host, settings.http_port, server.drain_seconds):
            yield [
                Registration(
                    gateway_pb2.DESCRIPTOR.services_by_name["Gateway"],
                    servicer,
                    gateway_pb2_grpc.add_GatewayServicer_to_server,
                    on_drain=drain,
                )
            ]
    finally:
        await outbox.stop()
        await limiter.close()
        await memory_channel.close()
        await tools_channel.close()
        await files_channel.close()
        await router_channel.close()
        await limits_store.aclose()
        await mongo.close()


app = ServiceApp("gateway", build)

if __name__ == "__main__":
    run(app)
