"""A chat turn's one write, sent twice, lands once (against SecantusDB).

PyMongo sends a write again when its acknowledgement was lost (the store restarted mid-call). The fault suite
caught the second sending failing on a duplicate message id after SecantusDB was killed, and the turn ending
INTERNAL; every write of a turn is now idempotent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from moteur.gateway.outbox import MemoryOutbox
from moteur.gateway.sessions import Scope, SessionStore, new_message
from moteur.gateway.usage import TokenUsage, UsageLedger
from moteur.runtime.identity import Identity
from moteur.runtime.ids import new_id
from moteur.runtime.mesh_tokens import MeshTokenIssuer
from moteur.runtime.mongo import write_together
from moteur.v1 import memory_pb2_grpc


@pytest.fixture
async def db(mongo: AsyncMongoClient) -> AsyncIterator[AsyncDatabase]:
    database = mongo[f"turns_{new_id().lower()}"]
    yield database
    await mongo.drop_database(database.name)


async def test_a_turn_written_twice_is_stored_once(mongo: AsyncMongoClient, db: AsyncDatabase) -> None:
    sessions, usage = SessionStore(db), UsageLedger(db)
    channel = grpc.aio.insecure_channel("127.0.0.1:9")  # never called: only the outbox's writes are used here
    outbox = MemoryOutbox(db, memory_pb2_grpc.MemoryStub(channel), MeshTokenIssuer("gateway",
                                                                                   Ed25519PrivateKey.generate()))
    identity = Identity("acme", "ana", "standard")

    async def turn_twice(session, question: str) -> None:
        messages = [new_message("user", question), new_message("assistant", f"About {question}")]
        writes = [*sessions.turn_writes(session, messages),
                  usage.record_write(identity, "ana", session.id, "instant", TokenUsage(10, 5, 0)),
                  *outbox.writes(session, messages)]
        await write_together(mongo, writes)
        await write_together(mongo, writes)  # the same write again: the first one's answer was lost

    new = SessionStore.new("acme", "ana")
    await turn_twice(new, "lighthouses")  # the first turn also creates the session
    await turn_twice(await sessions.get(Scope("acme", "ana"), new.id), "tides")

    stored = await sessions.get(Scope("acme", "ana"), new.id)
    assert stored.message_count == 4
    assert [m.content for m in stored.recent] == ["lighthouses", "About lighthouses", "tides", "About tides"]
    assert await db["messages"].count_documents({"session_id": new.id}) == 4
    assert await db["usage"].count_documents({"session_id": new.id}) == 2
    assert await db["memory_outbox"].count_documents({"session": new.id}) == 4
    await channel.close()
