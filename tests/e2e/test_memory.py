"""Memories in Milvus through the memory service's gRPC API: upsert, search with filters, delete, tenants."""

from __future__ import annotations

import asyncio
import hashlib

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from moteur.runtime.identity import Identity
from moteur.runtime.ids import new_id
from moteur.v1 import memory_pb2, memory_pb2_grpc
from tests.mesh import signed

FACT, MESSAGE = memory_pb2.MEMORY_KIND_FACT, memory_pb2.MEMORY_KIND_MESSAGE


def _mesh(tenant: str) -> list[tuple[str, str]]:
    return signed(Identity(tenant, "", "standard"))


@pytest.fixture
async def memory(stack):
    async with grpc.aio.insecure_channel(stack.address("memory")) as channel:
        yield memory_pb2_grpc.MemoryStub(channel)


async def _upsert(memory, tenant: str, *records: memory_pb2.MemoryRecord) -> list[str]:
    reply = await memory.Upsert(memory_pb2.UpsertRequest(records=records), metadata=_mesh(tenant), timeout=30)
    return list(reply.ids)


async def _search(memory, tenant: str, **query: object) -> memory_pb2.SearchResponse:
    return await memory.Search(memory_pb2.SearchRequest(**query), metadata=_mesh(tenant), timeout=30)


async def test_stored_memories_are_found_by_meaning_within_their_filters(memory) -> None:
    tenant, session = f"mem-{new_id()}", new_id()
    ids = await _upsert(
        memory, tenant,
        memory_pb2.MemoryRecord(user_id="ana", session_id=session, kind=FACT, text="Ana is allergic to peanuts."),
        memory_pb2.MemoryRecord(user_id="ana", session_id=session, kind=FACT, text="Ana's favourite city is Lyon."),
        memory_pb2.MemoryRecord(user_id="ben", kind=FACT, text="Ben is allergic to cats."),
        memory_pb2.MemoryRecord(user_id="ana", session_id=session, kind=MESSAGE, text="Book me a table for two."),
    )
    assert len(ids) == 4 and len(set(ids)) == 4

    found = await _search(memory, tenant, text="What food can Ana not eat?", user_id="ana", top_k=2)
    assert found.hits[0].record.text == "Ana is allergic to peanuts." and found.hits[0].score > 0.3
    assert all(h.record.user_id == "ana" for h in found.hits)
    assert found.embedding_model == "multilingual-e5-small-q4"

    facts_only = await _search(memory, tenant, text="a table for two", kinds=[FACT], top_k=10)
    assert {h.record.kind for h in facts_only.hits} == {FACT} and len(facts_only.hits) == 3
    strict = await _search(memory, tenant, text="a table for two", min_score=0.97)  # E5: 0.92 for this pair
    assert not strict.hits

    future = Timestamp()
    future.FromSeconds(4_000_000_000)
    assert not (await _search(memory, tenant, text="allergy", created_after=future)).hits


async def test_another_tenant_finds_nothing_and_cannot_delete(memory) -> None:
    owner, other = f"mem-{new_id()}", f"mem-{new_id()}"
    [memory_id] = await _upsert(memory, owner, memory_pb2.MemoryRecord(user_id="u", kind=FACT, text="A secret plan."))
    assert not (await _search(memory, other, text="A secret plan.")).hits
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await memory.Delete(memory_pb2.DeleteMemoriesRequest(ids=[memory_id]), metadata=_mesh(other), timeout=30)
    assert error.value.code() is grpc.StatusCode.NOT_FOUND
    assert (await _search(memory, owner, text="A secret plan.")).hits[0].record.id == memory_id


async def test_upserting_an_id_again_replaces_it_and_deleting_a_user_forgets_them(memory) -> None:
    tenant = f"mem-{new_id()}"
    [memory_id] = await _upsert(memory, tenant, memory_pb2.MemoryRecord(user_id="u", kind=FACT, text="Likes tea."))
    await _upsert(memory, tenant, memory_pb2.MemoryRecord(id=memory_id, user_id="u", kind=FACT, text="Likes coffee."))
    hits = (await _search(memory, tenant, text="hot drink", user_id="u", top_k=10)).hits
    assert [(h.record.id, h.record.text) for h in hits] == [(memory_id, "Likes coffee.")]

    await _upsert(memory, tenant, memory_pb2.MemoryRecord(user_id="u", kind=FACT, text="Lives in Nantes."))
    deleted = await memory.Delete(memory_pb2.DeleteMemoriesRequest(user_id="u"), metadata=_mesh(tenant), timeout=30)
    assert deleted.deleted == 2
    assert not (await _search(memory, tenant, text="coffee", user_id="u")).hits


@pytest.mark.parametrize(("query", "field"), [
    ({"text": "x", "top_k": 101}, "top_k"), ({"text": "x", "min_score": 2}, "min_score"),
    ({"vector": memory_pb2.Embedding(values=[0.1] * 12), "embedding_model": "multilingual-e5-small-q4"}, "vector"),
    ({"vector": memory_pb2.Embedding(values=[0.1] * 384), "embedding_model": "text-embedding-3-small"},
     "embedding_model"),
    ({"text": ""}, "text"),
    ({"text": "x", "kinds": [9]}, "kinds[0]"), ({}, "query"),
])
async def test_bad_searches_are_invalid_and_name_the_field(memory, query: dict[str, object], field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _search(memory, "acme", **query)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field}:"), error.value.details()


async def test_bad_upserts_are_invalid(memory) -> None:
    for record, field in [(memory_pb2.MemoryRecord(kind=FACT, text=""), "records[0].text"),
                          (memory_pb2.MemoryRecord(text="no kind"), "records[0].kind"),
                          (memory_pb2.MemoryRecord(kind=FACT, text="x" * 8193), "records[0].text")]:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await _upsert(memory, "acme", record)
        assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT and error.value.details().startswith(field)


async def test_memories_survive_a_restart_of_the_memory_service(stack, memory) -> None:
    tenant = f"mem-{new_id()}"
    [memory_id] = await _upsert(memory, tenant, memory_pb2.MemoryRecord(user_id="u", kind=FACT, text="Owns a boat."))
    stack.restart("memory")
    async with grpc.aio.insecure_channel(stack.address("memory")) as channel:
        again = memory_pb2_grpc.MemoryStub(channel)
        hits = (await _search(again, tenant, text="a boat", user_id="u")).hits
    assert [h.record.id for h in hits] == [memory_id]


async def test_a_vector_query_from_the_same_model_finds_the_text(memory) -> None:
    tenant = f"mem-{new_id()}"
    [memory_id] = await _upsert(memory, tenant, memory_pb2.MemoryRecord(user_id="u", kind=FACT, text="Rides a bike."))
    embedded = await memory.Embed(memory_pb2.EmbedRequest(texts=["cycling"]), metadata=_mesh(tenant), timeout=30)
    found = await _search(memory, tenant, vector=embedded.embeddings[0], embedding_model=embedded.model)
    assert [h.record.id for h in found.hits] == [memory_id]


async def test_what_was_on_its_way_when_a_user_was_forgotten_does_not_bring_them_back(memory) -> None:
    # An outbox batch read just before ForgetUser reaches memory just after it: its records and its fact
    # extraction are of messages older than the forgetting, and are dropped; what the user says later is kept.
    tenant, session = f"mem-{new_id()}", new_id()
    before_id, before = new_id(), Timestamp()
    before.GetCurrentTime()
    await memory.Delete(memory_pb2.DeleteMemoriesRequest(user_id="u"), metadata=_mesh(tenant), timeout=30)

    late = memory_pb2.MemoryRecord(id=before_id, user_id="u", session_id=session, kind=MESSAGE,
                                   text="user: I live in Brest.", source_ids=[before_id], created_at=before)
    assert await _upsert(memory, tenant, late) == []
    extracted = await memory.Extract(memory_pb2.ExtractRequest(
        user_id="u", session_id=session, user_message="I live in Brest.", source_ids=[before_id],
    ), metadata=signed(Identity(tenant, "u", "")), timeout=60)
    assert not extracted.changes and extracted.extractor == ""
    listed = await memory.List(memory_pb2.ListMemoriesRequest(user_id="u"), metadata=_mesh(tenant), timeout=30)
    assert not listed.records

    after_id = new_id()
    now = Timestamp()
    now.GetCurrentTime()
    assert await _upsert(memory, tenant, memory_pb2.MemoryRecord(
        id=after_id, user_id="u", session_id=session, kind=MESSAGE, text="user: I moved to Rennes.",
        source_ids=[after_id], created_at=now)) == [after_id]
    extracted = await memory.Extract(memory_pb2.ExtractRequest(
        user_id="u", session_id=session, user_message="I live in Rennes.", source_ids=[after_id],
    ), metadata=signed(Identity(tenant, "u", "")), timeout=60)
    assert extracted.extractor
    # Another user of the tenant, never forgotten, is not affected by the first one's forgetting.
    assert await _upsert(memory, tenant, memory_pb2.MemoryRecord(
        id=before_id, user_id="v", kind=MESSAGE, text="user: hello", created_at=before)) == [before_id]


async def test_cached_answers_are_found_by_meaning_within_their_tenant_and_context_until_they_expire(memory) -> None:
    tenant, other = f"ans-{new_id()}", f"ans-{new_id()}"
    context = hashlib.sha256(tenant.encode()).hexdigest()
    kept = await memory.StoreAnswer(memory_pb2.StoreAnswerRequest(
        context=context, question="Quelle est la capitale de la France ?", answer_json='{"content": "Paris"}',
        ttl_seconds=2, user_id="ana"), metadata=_mesh(tenant), timeout=30)

    async def lookup(tenant_: str, question: str, context_: str = context) -> memory_pb2.LookupAnswerResponse:
        return await memory.LookupAnswer(memory_pb2.LookupAnswerRequest(
            context=context_, question=question, min_score=0.9), metadata=_mesh(tenant_), timeout=30)

    found = await lookup(tenant, "quelle est la capitale de la france")
    assert [a.id for a in found.answers] == [kept.id] and found.answers[0].answer_json == '{"content": "Paris"}'
    assert found.answers[0].score > 0.95 and found.answers[0].question == "Quelle est la capitale de la France ?"
    assert not (await lookup(other, "Quelle est la capitale de la France ?")).answers  # another tenant
    assert not (await lookup(tenant, "Quelle est la capitale de la France ?", "0" * 64)).answers  # another context
    assert not (await lookup(tenant, "How do I bake bread?")).answers  # too far
    await asyncio.sleep(2.2)
    assert not (await lookup(tenant, "Quelle est la capitale de la France ?")).answers  # expired
    refusals = [
        (memory.LookupAnswer, memory_pb2.LookupAnswerRequest(context="abc", question="x", min_score=0.9), "context"),
        (memory.LookupAnswer, memory_pb2.LookupAnswerRequest(context=context, question=" ", min_score=0.9),
         "question"),
        (memory.LookupAnswer, memory_pb2.LookupAnswerRequest(context=context, question="x"), "min_score"),
        (memory.StoreAnswer, memory_pb2.StoreAnswerRequest(context=context, question="x", answer_json="{}"),
         "ttl_seconds"),
        (memory.StoreAnswer, memory_pb2.StoreAnswerRequest(context=context, question="x", ttl_seconds=60),
         "answer_json"),
    ]
    for method, request, field in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await method(request, metadata=_mesh(tenant), timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (refused.value.details() or "")


async def test_a_user_id_longer_than_the_collections_hold_is_refused_naming_it(memory) -> None:
    tenant, long_user = f"mem-{new_id()}", "u" * 129
    calls = [
        (memory.UpsertDocument, memory_pb2.UpsertDocumentRequest(user_id=long_user, text="A short document.")),
        (memory.Extract, memory_pb2.ExtractRequest(user_id=long_user, user_message="I live in Lyon.")),
        (memory.List, memory_pb2.ListMemoriesRequest(user_id=long_user)),
    ]
    for method, request in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await method(request, metadata=_mesh(tenant), timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert "user_id" in (refused.value.details() or "")
