"""``python -m moteur.gateway``: the public API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from moteur.gateway.auth import ApiKeyStore, Authenticator
from moteur.gateway.conversation import Conversation
from moteur.gateway.idempotency import IdempotencyStore
from moteur.gateway.servicer import GatewayServicer
from moteur.gateway.sessions import SessionStore
from moteur.gateway.usage import UsageLedger
from moteur.runtime.channels import open_channel
from moteur.runtime.mongo import connect_mongo, database
from moteur.runtime.server import Registration, ServiceApp, run
from moteur.runtime.settings import MeshSettings, MongoSettings
from moteur.v1 import gateway_pb2, gateway_pb2_grpc, router_pb2_grpc


async def build() -> AsyncIterator[Sequence[Registration]]:
    mesh, mongo_settings = MeshSettings(), MongoSettings()
    mongo = connect_mongo(mongo_settings)
    db = database(mongo, mongo_settings)
    router_channel = open_channel(mesh.router_addr)
    keys, sessions, usage, idempotency = ApiKeyStore(db), SessionStore(db), UsageLedger(db), IdempotencyStore(db)
    for store in (keys, sessions, usage, idempotency):
        await store.ensure_indexes()
    conversation = Conversation(
        mongo, sessions, usage, idempotency, router_pb2_grpc.RouterStub(router_channel), mesh.call_timeout_seconds
    )
    try:
        yield [
            Registration(
                gateway_pb2.DESCRIPTOR.services_by_name["Gateway"],
                GatewayServicer(Authenticator(keys), sessions, conversation),
                gateway_pb2_grpc.add_GatewayServicer_to_server,
            )
        ]
    finally:
        await router_channel.close()
        await mongo.close()


app = ServiceApp("gateway", build)

if __name__ == "__main__":
    run(app)
