"""``python -m moteur.gateway``: the public API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import redis.asyncio as aioredis

from moteur.gateway.admission import AdmissionControl
from moteur.gateway.alerts import AlertLog
from moteur.gateway.auth import ApiKeyStore, Authenticator
from moteur.gateway.conversation import Conversation
from moteur.gateway.idempotency import IdempotencyStore
from moteur.gateway.limiter import RateLimiter
from moteur.gateway.limits import LimitsCatalog, load_tiers
from moteur.gateway.queue import AdmissionQueue
from moteur.gateway.servicer import GatewayServicer
from moteur.gateway.sessions import SessionStore
from moteur.gateway.usage import UsageLedger
from moteur.runtime.channels import open_channel
from moteur.runtime.mongo import connect_mongo, database
from moteur.runtime.server import Registration, ServiceApp, run
from moteur.runtime.settings import GatewaySettings, MeshSettings, MongoSettings, RedisSettings
from moteur.v1 import gateway_pb2, gateway_pb2_grpc, router_pb2_grpc


async def build() -> AsyncIterator[Sequence[Registration]]:
    mesh, mongo_settings, settings = MeshSettings(), MongoSettings(), GatewaySettings()
    tiers = load_tiers(settings.tiers_file)
    mongo = connect_mongo(mongo_settings)
    # Short timeouts: a Redis that does not answer must trigger the tier's fallback policy quickly.
    limits_store = aioredis.Redis.from_url(
        RedisSettings().redis_url, socket_timeout=0.25, socket_connect_timeout=0.25
    )
    db = database(mongo, mongo_settings)
    router_channel = open_channel(mesh.router_addr)
    keys, sessions, usage, idempotency = ApiKeyStore(db), SessionStore(db), UsageLedger(db), IdempotencyStore(db)
    catalog, alerts = LimitsCatalog(tiers, db), AlertLog(db, settings.alert_webhook_url)
    for store in (keys, sessions, usage, idempotency, alerts):
        await store.ensure_indexes()
    queue = AdmissionQueue(
        settings.queue_capacity, settings.queue_max_queued, settings.queue_max_queued_per_tenant,
        settings.queue_critical_reserve, settings.queue_max_wait_seconds,
    )
    admission = AdmissionControl(catalog, RateLimiter(limits_store, catalog, settings.lease_seconds), alerts, queue)
    conversation = Conversation(
        mongo, sessions, usage, idempotency, router_pb2_grpc.RouterStub(router_channel), mesh.call_timeout_seconds
    )
    try:
        yield [
            Registration(
                gateway_pb2.DESCRIPTOR.services_by_name["Gateway"],
                GatewayServicer(Authenticator(keys), keys, sessions, usage, conversation, admission),
                gateway_pb2_grpc.add_GatewayServicer_to_server,
                on_drain=queue.drain,  # queued turns are handed back at once, in-flight ones finish
            )
        ]
    finally:
        await router_channel.close()
        await limits_store.aclose()
        await mongo.close()


app = ServiceApp("gateway", build)

if __name__ == "__main__":
    run(app)
