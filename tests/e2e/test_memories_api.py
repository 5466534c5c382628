"""A user's long-term memory through the public API and the CLI: list, search, edit, delete, forget."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from typer.testing import CliRunner

from moteur.cli.main import app
from moteur.client import MoteurClientError
from moteur.runtime.ids import new_id
from moteur.runtime.mongo import database
from moteur.runtime.settings import MongoSettings
from moteur.v1 import memory_pb2
from tests.waiting import eventually


async def _facts_of(caller, expected: str) -> list:
    for _ in range(100):  # the outbox relay delivers within moments
        page = await caller.client.list_memories(kinds=["fact"])
        if any(expected in r.text for r in page.records):
            return list(page.records)
        await asyncio.sleep(0.2)
    raise AssertionError(f"no fact with {expected!r} arrived")


async def _outbox_drained(stack, mongo, tenant: str) -> None:
    """Waits until the memory outbox holds no entry of ``tenant``: the turn's entries are written with the turn,
    before its answer, and deleted once memory stored them (and extracted facts, when asked). None of them
    may have been dead-lettered: "absent from memory" must not mean "failed on the way"."""
    db = database(mongo, MongoSettings(mongo_uri=stack.mongo_uri))

    async def drained() -> bool:
        return not await db["memory_outbox"].count_documents({"tenant": tenant})

    await eventually(drained, timeout=30, message=f"the memory outbox still holds entries of {tenant}")
    assert not await db["memory_outbox_dead"].count_documents({"tenant": tenant})


async def test_a_user_lists_searches_edits_deletes_and_forgets_their_memories(make_caller) -> None:
    tenant = f"api-{new_id()}"
    kim = await make_caller(tenant, "kim")
    said = await kim.client.chat("My favourite city is Kyoto and I work at Nintendo.", model_hint="instant")
    facts = await _facts_of(kim, "Kyoto")
    assert {f.text for f in facts} >= {"The user's favourite city is Kyoto.", "The user works at Nintendo."}
    for _ in range(100):  # the facts are stored during the turn, the chat's messages by the outbox just after
        everything = await kim.client.list_memories()
        if len(everything.records) > len(facts):
            break
        await asyncio.sleep(0.2)
    assert len(everything.records) > len(facts)  # the chat's messages are memories too

    hit = (await kim.client.search_memories("Which city do I love?", kinds=["fact"], top_k=1)).hits[0]
    assert "Kyoto" in hit.record.text
    in_session = await kim.client.search_memories("Which city do I love?", session_id=said.session_id)
    assert in_session.hits and {h.record.session_id for h in in_session.hits} == {said.session_id}
    assert not (await kim.client.search_memories("Which city do I love?", session_id=new_id())).hits
    edited = await kim.client.update_memory(hit.record.id, "The user's favourite city is Osaka.")
    assert edited.id == hit.record.id
    again = (await kim.client.search_memories("Which city do I love?", kinds=["fact"], top_k=1)).hits[0]
    assert (again.record.id, again.record.text) == (hit.record.id, "The user's favourite city is Osaka.")

    city = await kim.client.memory_history(hit.record.id)
    assert [(c.action, c.text, c.previous_text) for c in city.changes] == [
        (memory_pb2.FACT_ACTION_ADD, "The user's favourite city is Kyoto.", ""),
        (memory_pb2.FACT_ACTION_EDIT, "The user's favourite city is Osaka.", "The user's favourite city is Kyoto."),
    ]
    assert city.changes[0].session_id == said.session_id and city.changes[0].source_ids

    work = next(f for f in facts if "Nintendo" in f.text)
    assert (await kim.client.delete_memory(work.id)).deleted == 1
    assert work.id not in {r.id for r in (await kim.client.list_memories(kinds=["fact"])).records}
    deleted = await kim.client.memory_history(work.id)  # the history outlives the fact
    assert [c.action for c in deleted.changes] == [memory_pb2.FACT_ACTION_ADD, memory_pb2.FACT_ACTION_DELETE]

    forgotten = await kim.client.forget_user()
    assert forgotten.deleted >= 2
    assert not (await kim.client.list_memories()).records
    with pytest.raises(MoteurClientError) as gone:  # forgetting a user forgets the history too
        await kim.client.memory_history(hit.record.id)
    assert gone.value.code is grpc.StatusCode.NOT_FOUND


async def test_someone_elses_memory_is_not_found(make_caller) -> None:
    tenant = f"api-{new_id()}"
    owner = await make_caller(tenant, "lou")
    await owner.client.chat("I live in Brest.", model_hint="instant")
    [fact] = [f for f in await _facts_of(owner, "Brest") if "Brest" in f.text]
    for stranger in (await make_caller(tenant, "max"), await make_caller(f"api-{new_id()}", "lou")):
        for call in (stranger.client.update_memory(fact.id, "hacked"), stranger.client.delete_memory(fact.id),
                     stranger.client.memory_history(fact.id)):
            with pytest.raises(MoteurClientError) as error:
                await call
            assert error.value.code is grpc.StatusCode.NOT_FOUND
    assert fact.id in {r.id for r in (await owner.client.list_memories(kinds=["fact"])).records}


async def test_bad_memory_requests_are_invalid(make_caller) -> None:
    user = await make_caller(f"api-{new_id()}", "ivy")
    for call, field in [(user.client.update_memory("", "x"), "memory_id"),
                        (user.client.search_memories(""), "text"),
                        (user.client.list_memories(page_size=500), "page_size"),
                        (user.client.list_memories(user_id="é" * 100), "user_id")]:  # 200 bytes, not ASCII
        with pytest.raises(MoteurClientError) as error:
            await call
        assert error.value.code is grpc.StatusCode.INVALID_ARGUMENT and field in error.value.message


def test_the_cli_lists_and_searches_memories(stack, alice, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOTEUR_GATEWAY", stack.address("gateway"))
    monkeypatch.setenv("MOTEUR_API_KEY", alice.key)
    runner = CliRunner()
    said = runner.invoke(app, ["chat", "--model", "instant", "--no-stream", "My favourite tea is sencha."])
    assert said.exit_code == 0, said.output
    for _ in range(100):
        listed = runner.invoke(app, ["memories", "list", "--kind", "fact"])
        if "sencha" in listed.output:
            break
        time.sleep(0.2)
    assert listed.exit_code == 0 and "sencha" in listed.output
    found = runner.invoke(app, ["memories", "search", "which tea do I like"])
    assert found.exit_code == 0 and "sencha" in found.output
    migration = runner.invoke(app, ["memories", "migration"])
    assert migration.exit_code == 0, migration.output
    said_back = " ".join(migration.output.split())  # the console wraps long lines
    assert "embedding model: multilingual-e5-small-q4" in said_back and "(0 vectors left to re-embed)" in said_back


async def test_an_admin_turns_recall_and_extraction_off_for_the_whole_tenant(stack, mongo, make_caller) -> None:
    tenant = f"api-{new_id()}"
    admin, user = await make_caller(tenant, admin=True), await make_caller(tenant, "pia")
    with pytest.raises(MoteurClientError) as refused:
        await user.client.set_tenant_settings(memory_recall=False)
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    settings = await admin.client.set_tenant_settings(memory_recall=False, fact_extraction=False)
    assert (settings.memory_recall, settings.fact_extraction) == (False, False)
    assert (await user.client.get_tenant_settings()).memory_recall is False

    reply = await user.client.chat("My favourite bird is the puffin.", model_hint="instant")
    assert reply.route.entries["memory"] == "off"  # even though the request did not turn it off
    await _outbox_drained(stack, mongo, tenant)  # the message is stored, but no fact is extracted from it
    assert not (await user.client.list_memories(kinds=["fact"])).records
    assert (await user.client.list_memories(kinds=["message"])).records

    await admin.client.set_tenant_settings(memory_recall=True)
    again = await user.client.chat("Which bird do I like?", model_hint="instant")
    assert again.route.entries["memory"] == "on"


async def test_documents_are_chunked_searchable_and_replaced_by_id(make_caller) -> None:
    user = await make_caller(f"api-{new_id()}", "doc")
    sections = [f"Section {i}. " + " ".join(f"The {topic} policy covers item {i}." for _ in range(25))
                for i, topic in enumerate(["travel", "expense", "holiday", "security", "hardware"])]
    stored = await user.client.upsert_document("\n\n".join(sections), title="Handbook", document_id="handbook",
                                               chunk_chars=800)
    assert stored.document_id == "handbook" and len(stored.chunk_ids) >= 5
    hit = (await user.client.search_memories("rules for holidays", kinds=["document_chunk"], top_k=1)).hits[0]
    assert "holiday" in hit.record.text and hit.record.text.startswith("Handbook\n")
    assert list(hit.record.source_ids) == ["handbook"]

    shorter = await user.client.upsert_document("Only one short paragraph now.", document_id="handbook")
    assert shorter.chunk_ids == ["handbook.00000"]
    chunks = (await user.client.list_memories(kinds=["document_chunk"])).records
    assert [c.id for c in chunks] == ["handbook.00000"]

    stranger = await make_caller(user.tenant, "other")
    with pytest.raises(MoteurClientError) as not_theirs:
        await stranger.client.delete_document("handbook")
    assert not_theirs.value.code is grpc.StatusCode.NOT_FOUND
    assert (await user.client.delete_document("handbook")).deleted == 1
    assert not (await user.client.list_memories(kinds=["document_chunk"])).records

    for kwargs, field in [({"text": ""}, "text"), ({"text": "x", "document_id": "bad id!"}, "document_id"),
                          ({"text": "x", "chunk_chars": 50}, "chunk_chars")]:
        with pytest.raises(MoteurClientError) as error:
            await user.client.upsert_document(**kwargs)
        assert error.value.code is grpc.StatusCode.INVALID_ARGUMENT and field in error.value.message


async def test_with_message_memory_off_a_tenants_messages_never_reach_memory(stack, mongo, make_caller) -> None:
    tenant = f"api-{new_id()}"
    admin, user = await make_caller(tenant, admin=True), await make_caller(tenant, "ren")
    assert (await admin.client.set_tenant_settings(message_memory=False)).message_memory is False
    await user.client.chat("My favourite river is the Loire.", model_hint="instant")
    await _outbox_drained(stack, mongo, tenant)  # whatever the turn queued for memory was sent (none should be)
    assert not (await user.client.list_memories()).records
