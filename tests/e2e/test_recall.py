"""Chat messages reach memory through the outbox, and come back as recalled memories in later sessions."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from datetime import UTC, datetime

import grpc
import pytest

from moteur.client import MoteurClientError
from moteur.runtime.identity import Identity
from moteur.runtime.ids import new_id
from moteur.runtime.memory_limits import MAX_TEXT_CHARS
from moteur.runtime.mongo import database
from moteur.runtime.settings import MongoSettings
from moteur.v1 import memory_pb2, memory_pb2_grpc
from tests.mesh import signed

INSTANT = {"model_hint": "instant"}


async def _stored(
    stack, tenant: str, user: str, text: str, seconds: float = 20.0
) -> list[memory_pb2.SearchHit]:
    """Wait until memory holds a message of ``user`` that matches ``text``."""
    deadline = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(stack.address("memory")) as channel:
        memory = memory_pb2_grpc.MemoryStub(channel)
        while True:
            try:
                found = await memory.Search(
                    memory_pb2.SearchRequest(text=text, user_id=user, kinds=[memory_pb2.MEMORY_KIND_MESSAGE],
                                             min_score=0.5),
                    metadata=signed(Identity(tenant, user, "")), timeout=5,
                )
                if found.hits or time.monotonic() > deadline:
                    return list(found.hits)
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)


def _gateway_metric(stack, series: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['gateway-metrics']}/metrics", timeout=5).read()
    line = next(x for x in body.decode().splitlines() if x.startswith(f"{series} "))
    return float(line.split()[1])


def _backlog(stack) -> float:
    return _gateway_metric(stack, "moteur_memory_outbox_backlog")


async def _facts_of(caller, expected: str) -> set[str]:
    for _ in range(150):
        facts = {r.text for r in (await caller.client.list_memories(kinds=["fact"])).records}
        if expected in facts:
            return facts
        await asyncio.sleep(0.2)
    raise AssertionError(f"the fact {expected!r} did not arrive")


async def test_messages_reach_memory_and_are_recalled_in_a_later_session(stack, make_caller) -> None:
    tenant = f"recall-{new_id()}"
    user = await make_caller(tenant, "noor")
    first = await user.client.chat("My sister Clementine lives in Rouen and teaches piano.", **INSTANT)
    hits = await _stored(stack, tenant, "noor", "Clementine lives in Rouen")
    assert first.user_message_id in {h.record.id for h in hits}

    later = await user.client.chat("Which city does my sister live in?", **INSTANT)  # a new session
    assert later.session_id != first.session_id
    route = later.route.entries
    assert route["memory"] == "on" and first.user_message_id in route["memories"].split(",")

    off = await user.client.chat("Which city does my sister live in?", use_memory=False, **INSTANT)
    assert off.route.entries["memory"] == "off" and "memories" not in off.route.entries


async def test_another_tenant_or_user_never_recalls_these_memories(stack, make_caller) -> None:
    tenant = f"recall-{new_id()}"
    owner = await make_caller(tenant, "ines")
    await owner.client.chat("My locker code is 4512.", **INSTANT)
    await _stored(stack, tenant, "ines", "locker code")
    for stranger in (await make_caller(f"recall-{new_id()}", "ines"), await make_caller(tenant, "omar")):
        reply = await stranger.client.chat("What is my locker code?", **INSTANT)
        assert reply.route.entries["memory"] == "on" and "memories" not in reply.route.entries


async def test_while_memory_is_down_chat_goes_on_and_no_message_is_lost(stack, make_caller) -> None:
    tenant = f"recall-{new_id()}"
    user = await make_caller(tenant, "lea")
    with stack.stopped("memory"):
        reply = await user.client.chat("I adopted a grey cat called Miso.", **INSTANT)
        assert reply.route.entries["memory"] == "unavailable"
        for _ in range(50):  # counted when the relay's delivery fails (after its reconnection attempts)
            if _backlog(stack) >= 2:
                break
            await asyncio.sleep(0.1)
        assert _backlog(stack) >= 2  # the question and the answer wait in the outbox
    hits = await _stored(stack, tenant, "lea", "grey cat called Miso", seconds=45)
    assert reply.user_message_id in {h.record.id for h in hits}


async def test_a_deleted_session_leaves_memory_but_its_facts_stay_the_users(stack, make_caller) -> None:
    tenant = f"recall-{new_id()}"
    user = await make_caller(tenant, "tom")
    reply = await user.client.chat("My favourite fruit is the quince.", **INSTANT)
    assert await _stored(stack, tenant, "tom", "favourite fruit is the quince")
    await user.client.delete_session(reply.session_id)
    for _ in range(100):
        if not await _stored(stack, tenant, "tom", "favourite fruit is the quince", seconds=0):
            break
        await asyncio.sleep(0.2)
    assert not await _stored(stack, tenant, "tom", "favourite fruit is the quince", seconds=0)
    facts = await user.client.list_memories(kinds=["fact"])
    assert "The user's favourite fruit is the quince." in {r.text for r in facts.records}


async def test_a_message_longer_than_memory_takes_is_stored_trimmed_and_holds_back_no_one(stack, make_caller) -> None:
    tenant = f"recall-{new_id()}"
    writer = await make_caller(tenant, "yann")
    filler = "The water runs slowly past the old stone mill at dawn. " * 350
    message = f"My favourite river is the Loire. {filler}My name is Ophelie."
    assert 2 * MAX_TEXT_CHARS < len(message) <= 32_768  # the gateway takes it; memory 8,192 characters of it
    reply = await writer.client.chat(message, **INSTANT)
    assert reply.message.content

    # Entries go oldest first: another tenant's later message arrives only if the long one did not stall them.
    other = await make_caller(f"recall-{new_id()}", "zoe")
    later = await other.client.chat("My neighbour keeps three white geese.", **INSTANT)
    hits = await _stored(stack, other.tenant, "zoe", "neighbour keeps three white geese", seconds=30)
    assert later.user_message_id in {h.record.id for h in hits}

    messages = {r.id: r.text for r in (await writer.client.list_memories(kinds=["message"])).records}
    assert messages[reply.user_message_id] == f"user: {message}"[:MAX_TEXT_CHARS]
    # Facts are read from the same trimmed text: the first sentence's, not the last one's (past the cut).
    facts = await _facts_of(writer, "The user's favourite river is the Loire.")
    assert not any("Ophelie" in fact for fact in facts)


async def test_an_entry_memory_refuses_for_good_is_set_aside_and_holds_back_no_one(
    stack, make_caller, mongo
) -> None:
    db = database(mongo, MongoSettings(mongo_uri=stack.mongo_uri))
    tenant, elsewhere = f"recall-{new_id()}", f"recall-{new_id()}"
    # Nothing the gateway writes today is refused, so the test writes the entry: a session id longer than
    # memory's column, refused with INVALID_ARGUMENT however often it is sent. One per tenant, same user.
    refused = [{"_id": new_id(), "tenant": t, "user": "ada", "session": "s" * 100, "role": "user",
                "text": "A message memory will never take.", "created_at": datetime.now(UTC)}
               for t in (tenant, elsewhere)]
    await db["memory_outbox"].insert_many(refused)
    ada = await make_caller(tenant, "ada")
    reply = await ada.client.chat("I keep bees on the roof of my building.", **INSTANT)  # beside it, same tenant
    hits = await _stored(stack, tenant, "ada", "keep bees on the roof of my building")
    assert reply.user_message_id in {h.record.id for h in hits}

    ids = [r["_id"] for r in refused]
    assert await db["memory_outbox"].count_documents({"_id": {"$in": ids}}) == 0
    letters = await db["memory_outbox_dead"].find({"_id": {"$in": ids}}).to_list()
    assert {(d["tenant"], d["stage"], d["reason"]) for d in letters} == {
        (t, "upsert", "invalid_argument") for t in (tenant, elsewhere)}
    assert all("session_id" in d["error"] and d["dead_at"] for d in letters)
    assert _gateway_metric(stack, 'moteur_memory_outbox_dead_letters_total{reason="invalid_argument"}') >= 2

    await ada.client.forget_user()  # a forgotten user's dead letters go too, in their tenant only
    assert [d["tenant"] for d in await db["memory_outbox_dead"].find({"_id": {"$in": ids}}).to_list()] == [elsewhere]
    indexes = (await db["memory_outbox_dead"].index_information()).values()
    ttl = {i["key"][0][0]: i.get("expireAfterSeconds") for i in indexes}
    assert ttl["dead_at"] == 30 * 86400  # dead letters hold message text: they expire


async def test_forgetting_a_user_drops_their_messages_still_waiting_for_memory(stack, make_caller) -> None:
    tenant = f"recall-{new_id()}"
    rosa, marc = await make_caller(tenant, "rosa"), await make_caller(tenant, "marc")
    namesake = await make_caller(f"recall-{new_id()}", "rosa")  # the same user id in another tenant
    with stack.stopped("memory"):
        await rosa.client.chat("My passport number is 12AB34567.", **INSTANT)
        kept = await namesake.client.chat("My passport number is 98ZY76543.", **INSTANT)
        with pytest.raises(MoteurClientError) as error:
            await rosa.client.forget_user()  # memory is down: the caller asks again below
        assert error.value.code is grpc.StatusCode.UNAVAILABLE
    # Entries go oldest first: once marc's later message is in memory, rosa's were sent or dropped.
    later = await marc.client.chat("I grow tomatoes on my balcony.", **INSTANT)
    hits = await _stored(stack, tenant, "marc", "grow tomatoes on my balcony", seconds=45)
    assert later.user_message_id in {h.record.id for h in hits}
    assert not (await rosa.client.list_memories()).records
    assert kept.user_message_id in {h.record.id for h in await _stored(
        stack, namesake.tenant, "rosa", "passport number 98ZY76543")}

    assert (await rosa.client.forget_user()).deleted == 0  # nothing of hers came back to forget


@pytest.mark.parametrize(("statement", "question", "fact"), [
    ("I live in Lyon.", "Where do I live?", "The user lives in Lyon."),
    ("J'habite à Lyon.", "Où est-ce que j'habite ?", "L'utilisateur habite à Lyon."),
    ("J'habite à Grenoble.", "Which city do I live in?", "L'utilisateur habite à Grenoble."),
])
async def test_a_fact_said_is_a_fact_known_on_the_next_turn(
    stack, make_caller, statement: str, question: str, fact: str
) -> None:
    tenant = f"recall-{new_id()}"
    user = await make_caller(tenant, "eloise")
    said = await user.client.chat(statement, **INSTANT)
    # Stored during the turn (memory's rules, beside the model call), not by the outbox later.
    facts = {r.text: r for r in (await user.client.list_memories(kinds=["fact"])).records}
    assert fact in facts and list(facts[fact].source_ids) == [said.user_message_id]

    asked = await user.client.chat(question, **INSTANT)  # the next turn, in a new session
    assert asked.session_id != said.session_id
    route = asked.route.entries
    assert route["memory"] == "on" and facts[fact].id in route["memories"].split(",")


async def test_past_answers_are_kept_as_replies_and_never_recalled(stack, make_caller) -> None:
    tenant = f"recall-{new_id()}"
    user = await make_caller(tenant, "hugo")
    told = await user.client.chat("My brother Anatole lives in Nantes and plays the cello.", **INSTANT)
    await _stored(stack, tenant, "hugo", "Anatole lives in Nantes")
    for _ in range(100):  # the answer follows the question in the same outbox batch
        replies = (await user.client.list_memories(kinds=["reply"])).records
        if replies:
            break
        await asyncio.sleep(0.2)
    assert [r.id for r in replies] == [told.message.id] and replies[0].text.startswith("assistant: ")

    later = await user.client.chat("Where does my brother Anatole live?", **INSTANT)
    recalled = later.route.entries["memories"].split(",")
    assert told.user_message_id in recalled and told.message.id not in recalled
