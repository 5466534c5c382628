"""Group commit (moteur.runtime.group_commit) against a lone SecantusDB: concurrent writers share bulk writes,
each writer learns its own outcome, and a writer whose caller went away is written all the same."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, InsertOne
from pymongo.errors import ClientBulkWriteException

from moteur.runtime.group_commit import GroupCommit
from moteur.runtime.ids import new_id
from moteur.runtime.mongo import connect_mongo, insert_once
from moteur.runtime.settings import MongoSettings
from tests.stores import lone_secantusdb


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with lone_secantusdb(Path(tmp_path_factory.mktemp("group-commit"))) as store:
        yield store.uri


class CountingClient:
    """The real client, counting its bulk writes."""

    def __init__(self, client: AsyncMongoClient) -> None:
        self.client = client
        self.bulk_writes: list[int] = []

    async def bulk_write(self, writes: list[Any], ordered: bool) -> Any:
        self.bulk_writes.append(len(writes))
        return await self.client.bulk_write(writes, ordered=ordered)


@pytest.fixture
async def client(store_uri: str) -> AsyncIterator[CountingClient]:
    mongo = connect_mongo(MongoSettings(mongo_uri=store_uri))
    yield CountingClient(mongo)
    await mongo.close()


def _turn(namespace: str, turn: int) -> list[Any]:
    return [insert_once({"_id": f"{turn}-{part}", "turn": turn}, namespace) for part in range(3)]


async def test_concurrent_writers_share_bulk_writes_and_all_land(client: CountingClient) -> None:
    namespace = f"gc_{new_id().lower()}.messages"
    commit = GroupCommit(client)  # type: ignore[arg-type]  # the counting wrapper stands in for the client
    await asyncio.gather(*(commit.write(_turn(namespace, turn)) for turn in range(40)))
    database, collection = namespace.split(".")
    assert await client.client[database][collection].count_documents({}) == 120
    assert sum(client.bulk_writes) == 120
    assert len(client.bulk_writes) < 40  # turns that came together went together


async def test_a_failing_writer_fails_alone_and_the_writers_behind_it_are_sent_again(client: CountingClient) -> None:
    namespace = f"gc_{new_id().lower()}.messages"
    database, collection = namespace.split(".")
    await client.client[database][collection].insert_one({"_id": "taken"})
    commit = GroupCommit(client)  # type: ignore[arg-type]
    before, after = _turn(namespace, 1), _turn(namespace, 3)
    failing = [insert_once({"_id": "2-0"}, namespace), InsertOne({"_id": "taken"}, namespace=namespace),
               insert_once({"_id": "2-2"}, namespace)]
    # The four arrive together and go in one bulk write, which stops at the taken id.
    outcomes = await asyncio.gather(commit.write(_turn(namespace, 0)), commit.write(before), commit.write(failing),
                                    commit.write(after), return_exceptions=True)
    assert outcomes[0] is None and outcomes[1] is None and outcomes[3] is None
    assert isinstance(outcomes[2], ClientBulkWriteException)
    ids = {d["_id"] async for d in client.client[database][collection].find({}, {"_id": 1})}
    assert ids == {"taken", "0-0", "0-1", "0-2", "1-0", "1-1", "1-2", "2-0", "3-0", "3-1", "3-2"}
    assert client.bulk_writes == [12, 3]  # the writer after the failing one was sent again, alone


async def test_a_writer_whose_caller_went_away_is_written(client: CountingClient) -> None:
    namespace = f"gc_{new_id().lower()}.messages"
    database, collection = namespace.split(".")
    commit = GroupCommit(client)  # type: ignore[arg-type]
    first = asyncio.create_task(commit.write(_turn(namespace, 0)))
    gone = asyncio.create_task(commit.write(_turn(namespace, 1)))
    await asyncio.sleep(0)  # both queued
    gone.cancel()
    await first
    with pytest.raises(asyncio.CancelledError):
        await gone
    for _ in range(100):  # the second bulk write is on its way
        if await client.client[database][collection].count_documents({"turn": 1}) == 3:
            break
        await asyncio.sleep(0.02)
    assert await client.client[database][collection].count_documents({"turn": 1}) == 3
