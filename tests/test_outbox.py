"""The memory outbox's relay against a Memory server that fails on purpose, with its entries in SecantusDB.

Memory here is a test double: the real one cannot be made to fail INTERNAL on one message. The outbox, its
store and the gRPC calls are real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pymongo import AsyncMongoClient

from moteur.devstack.processes import free_port
from moteur.gateway.outbox import MAX_STRIKES, MemoryOutbox
from moteur.runtime.errors import MoteurError
from moteur.runtime.ids import new_id
from moteur.runtime.mesh_tokens import MeshTokenIssuer
from moteur.v1 import memory_pb2, memory_pb2_grpc


class FailingMemory(memory_pb2_grpc.MemoryServicer):
    """Stores what it is sent, except: INTERNAL for a record or a turn saying "poison", UNAVAILABLE when down."""

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.extracted: list[str] = []
        self.down = False

    async def Upsert(self, request: memory_pb2.UpsertRequest, context: grpc.aio.ServicerContext
                     ) -> memory_pb2.UpsertResponse:
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "Milvus is down")
        if any("poison" in r.text for r in request.records):
            await context.abort(grpc.StatusCode.INTERNAL, "a bug memory hits on this text")
        self.stored += [r.id for r in request.records]
        return memory_pb2.UpsertResponse(ids=[r.id for r in request.records])

    async def Extract(self, request: memory_pb2.ExtractRequest, context: grpc.aio.ServicerContext
                      ) -> memory_pb2.ExtractResponse:
        if "poison" in request.assistant_message:
            await context.abort(grpc.StatusCode.INTERNAL, "a bug the extractor hits on this turn")
        self.extracted += list(request.source_ids)
        return memory_pb2.ExtractResponse(extractor="rules")


@pytest.fixture
async def memory() -> AsyncIterator[tuple[FailingMemory, memory_pb2_grpc.MemoryStub]]:
    servicer, port = FailingMemory(), free_port()
    server = grpc.aio.server()
    memory_pb2_grpc.add_MemoryServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield servicer, memory_pb2_grpc.MemoryStub(channel)
    await server.stop(None)


@pytest.fixture
async def outbox(mongo: AsyncMongoClient, memory) -> AsyncIterator[MemoryOutbox]:
    db = mongo[f"outbox_{new_id().lower()}"]
    relay = MemoryOutbox(db, memory[1], MeshTokenIssuer("gateway", Ed25519PrivateKey.generate()))
    await relay.ensure_indexes()
    yield relay
    await mongo.drop_database(db.name)


async def _entry(outbox: MemoryOutbox, tenant: str, text: str, reply: str = "") -> str:
    entry_id = new_id()
    entry = {"_id": entry_id, "tenant": tenant, "user": "u", "session": "s", "role": "user", "text": text,
             "created_at": datetime.now(UTC)}
    await outbox._entries.insert_one(entry | ({"extract": True, "reply": reply} if reply else {}))
    return entry_id


async def test_a_message_memory_fails_on_is_struck_then_dead_lettered_while_the_others_go_through(
    outbox: MemoryOutbox, memory
) -> None:
    servicer, _ = memory
    poison = await _entry(outbox, "acme", "poison pill")
    same_tenant, other_tenant = await _entry(outbox, "acme", "hello"), await _entry(outbox, "globex", "bonjour")
    await outbox.relay_once()
    # Its batch was split: the other message of its tenant went through, and so did the other tenant's.
    assert {same_tenant, other_tenant} <= set(servicer.stored) and poison not in servicer.stored
    assert (await outbox._entries.find_one({"_id": poison}))["strikes"] == 1

    for n in range(2, MAX_STRIKES + 1):  # each pass in which other messages go through is one more strike
        await _entry(outbox, "globex", f"message {n}")
        await outbox.relay_once()
    assert await outbox._entries.count_documents({}) == 0
    letter = await outbox._dead.find_one({"_id": poison})
    assert letter["reason"] == "internal" and letter["stage"] == "upsert" and f"{MAX_STRIKES} times" in letter["error"]


async def test_when_nothing_goes_through_the_failure_is_memorys_and_no_entry_is_struck(
    outbox: MemoryOutbox, memory
) -> None:
    servicer, _ = memory
    alone = await _entry(outbox, "acme", "poison, and nothing else to send")
    for _ in range(MAX_STRIKES + 1):
        with pytest.raises(MoteurError) as failed:
            await outbox.relay_once()
        assert failed.value.code is grpc.StatusCode.INTERNAL
    assert "strikes" not in await outbox._entries.find_one({"_id": alone})

    servicer.down = True  # an outage: every entry waits, struck or not, for as long as it lasts
    waiting = await _entry(outbox, "globex", "hello")
    for _ in range(MAX_STRIKES + 1):
        with pytest.raises(MoteurError) as failed:
            await outbox.relay_once()
        assert failed.value.code is grpc.StatusCode.UNAVAILABLE
    assert await outbox._entries.count_documents({"_id": {"$in": [alone, waiting]}, "strikes": {"$exists": 1}}) == 0
    assert await outbox._dead.count_documents({}) == 0


async def test_a_turn_the_extractor_fails_on_is_stored_and_only_its_facts_are_dead_lettered(
    outbox: MemoryOutbox, memory
) -> None:
    servicer, _ = memory
    turn = await _entry(outbox, "acme", "I live in Brest", reply="poison answer")
    for n in range(MAX_STRIKES):
        await _entry(outbox, "acme", f"other message {n}", reply="fine")
        await outbox.relay_once()
    assert turn in servicer.stored and turn not in servicer.extracted
    assert (await outbox._dead.find_one({"_id": turn}))["stage"] == "extract"
    assert await outbox._entries.count_documents({}) == 0
