"""MoteurRetriever through the real stack: a user's memories as LangChain documents, sync and async, in an
LCEL chain, and never another's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from langchain_core.documents import Document
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

from moteur.client import MoteurClient, MoteurClientError, MoteurRetriever
from moteur.runtime.ids import new_id
from tests.conftest import Caller

DOG_FACT = "The name of the user's dog is Biscuit."
HOME_FACT = "The user lives in Valparaiso."


@dataclass(frozen=True)
class Planted:
    """A user with two facts from one chat turn and one document of their own."""

    caller: Caller
    session_id: str
    facts: dict[str, str]  # text -> memory id


@pytest.fixture(scope="module")
async def planted(make_caller) -> Planted:
    caller = await make_caller(f"rag-{new_id()}", "noa")
    reply = await caller.client.chat("My dog's name is Biscuit and I live in Valparaiso.", model_hint="instant")
    await caller.client.upsert_document("The holiday policy grants 25 days of paid leave a year.",
                                        title="Handbook", document_id="handbook")
    for _ in range(100):  # facts arrive through the outbox relay, within moments
        facts = {r.text: r.id for r in (await caller.client.list_memories(kinds=["fact"])).records}
        if {DOG_FACT, HOME_FACT} <= facts.keys():
            return Planted(caller, reply.session_id, facts)
        await asyncio.sleep(0.2)
    raise AssertionError(f"the facts did not arrive: {facts}")


@pytest.fixture(scope="module")
def sync_client(stack, planted: Planted) -> Iterator[MoteurClient]:
    with MoteurClient(stack.address("gateway"), planted.caller.key) as client:
        yield client


@pytest.fixture
async def retriever(planted: Planted, sync_client: MoteurClient) -> AsyncIterator[MoteurRetriever]:
    yield MoteurRetriever(client=sync_client, async_client=planted.caller.client, kinds=["fact"], top_k=2)


async def test_the_planted_fact_is_the_top_document_with_its_metadata(
    retriever: MoteurRetriever, planted: Planted
) -> None:
    docs = await retriever.ainvoke("What is my dog called?")
    assert [d.page_content for d in docs] == [DOG_FACT, HOME_FACT]
    top = docs[0]
    assert top.id == planted.facts[DOG_FACT]
    meta = top.metadata
    assert (meta["id"], meta["kind"], meta["user_id"], meta["session_id"]) == (
        planted.facts[DOG_FACT], "fact", "noa", planted.session_id)
    assert 0.3 < meta["score"] <= 1.0 and meta["score"] > docs[1].metadata["score"]
    assert datetime.now(UTC) - datetime.fromisoformat(meta["created_at"]) < timedelta(minutes=5)
    assert meta["source_ids"] and meta["embedding_model"]


async def test_invoke_through_the_sync_client_finds_the_same(retriever: MoteurRetriever) -> None:
    question = "Where do I live?"
    threaded = await asyncio.to_thread(retriever.invoke, question)  # the blocking client, off the event loop
    assert _texts(threaded) == _texts(await retriever.ainvoke(question))
    assert threaded[0].page_content == HOME_FACT


async def test_kinds_and_min_score_filter_the_search(planted: Planted) -> None:
    client = planted.caller.client
    [chunk] = await MoteurRetriever(async_client=client, kinds=["document_chunk"], top_k=5).ainvoke(
        "How many days of holiday do I get?")
    assert chunk.page_content.startswith("Handbook\n") and "25 days" in chunk.page_content
    assert (chunk.metadata["kind"], chunk.metadata["source_ids"]) == ("document_chunk", ["handbook"])
    assert await MoteurRetriever(async_client=client, kinds=["fact"], min_score=0.99).ainvoke(
        "What is my dog called?") == []


async def test_the_retriever_composes_in_an_lcel_chain(retriever: MoteurRetriever) -> None:
    prompt = RunnableLambda(lambda x: f"Context:\n{x['context']}\n\nQuestion: {x['question']}")
    chain = {"context": retriever | RunnableLambda(_joined), "question": RunnablePassthrough()} | prompt
    assert await chain.ainvoke("What is my dog called?") == (
        f"Context:\n{DOG_FACT}\n{HOME_FACT}\n\nQuestion: What is my dog called?")
    assert await asyncio.to_thread(chain.invoke, "What is my dog called?") == await chain.ainvoke(
        "What is my dog called?")


async def test_another_tenants_or_users_retriever_finds_nothing_of_it(make_caller, planted: Planted) -> None:
    tenant = planted.caller.tenant
    for stranger in (await make_caller(f"rag-{new_id()}", "noa"), await make_caller(tenant, "eli")):
        found = await MoteurRetriever(async_client=stranger.client, top_k=100, min_score=-1).ainvoke(
            "What is my dog called?")
        assert found == []


async def test_search_errors_surface_as_client_errors(retriever: MoteurRetriever) -> None:
    with pytest.raises(MoteurClientError) as error:
        await retriever.ainvoke("")
    assert error.value.code is grpc.StatusCode.INVALID_ARGUMENT and "text" in error.value.message
    with pytest.raises(MoteurClientError) as blocking:
        await asyncio.to_thread(retriever.invoke, "")
    assert blocking.value.code is grpc.StatusCode.INVALID_ARGUMENT


def _joined(docs: list[Document]) -> str:
    return "\n".join(d.page_content for d in docs)


def _texts(docs: list[Document]) -> list[str]:
    return [d.page_content for d in docs]
