"""Group commit (moteur.runtime.group_commit) against a lone SecantusDB: concurrent writers share commands,
each writer learns its own outcome, an insert already there counts as written, and a writer whose caller went
away is written all the same. Both ways of sending are covered: one ``bulkWrite`` (one or two writers) and a
command per collection (three or more)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.errors import ClientBulkWriteException, WriteError

from moteur.runtime.group_commit import STAGED_FROM, GroupCommit
from moteur.runtime.ids import new_id
from moteur.runtime.mongo import Insert, StoreWrite, Update
from tests.stores import lone_secantusdb

WRITES = {"insert", "update", "bulkWrite"}


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with lone_secantusdb(Path(tmp_path_factory.mktemp("group-commit"))) as store:
        yield store.uri


class Commands(monitoring.CommandListener):
    """The write commands the client sent, by name."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in WRITES:
            self.sent.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def commands(store_uri: str) -> AsyncIterator[tuple[AsyncMongoClient, Commands]]:
    listener = Commands()
    client: AsyncMongoClient = AsyncMongoClient(store_uri, event_listeners=[listener])
    yield client, listener
    await client.close()


@pytest.fixture
def db() -> str:
    return f"gc_{new_id().lower()}"


def _turn(db: str, turn: int) -> list[StoreWrite]:
    """A turn's shape: two messages, its session (a new one on even turns), a usage record."""
    session: StoreWrite = (Insert(f"{db}.sessions", {"_id": f"s{turn}", "n": 1}) if turn % 2 == 0 else
                           Update(f"{db}.sessions", {"_id": "shared", "last": {"$ne": turn}},
                                  {"$inc": {"n": 1}, "$set": {"last": turn}}))
    return [Insert(f"{db}.messages", {"_id": f"{turn}-q", "turn": turn}),
            Insert(f"{db}.messages", {"_id": f"{turn}-a", "turn": turn}),
            session,
            Insert(f"{db}.usage", {"_id": f"{turn}-u", "turn": turn})]


async def _ids(client: AsyncMongoClient, db: str, collection: str) -> set[str]:
    return {d["_id"] async for d in client[db][collection].find({}, {"_id": 1})}


async def test_concurrent_writers_share_commands_and_all_land(
        commands: tuple[AsyncMongoClient, Commands], db: str) -> None:
    client, listener = commands
    await client[db]["sessions"].insert_one({"_id": "shared", "n": 0})
    listener.sent.clear()
    commit = GroupCommit(client)
    await asyncio.gather(*(commit.write(_turn(db, turn)) for turn in range(40)))
    assert len(await _ids(client, db, "messages")) == 80
    assert len(await _ids(client, db, "usage")) == 40
    assert (await client[db]["sessions"].find_one({"_id": "shared"}) or {})["n"] == 20  # each odd turn once
    assert len(await _ids(client, db, "sessions")) == 21
    # Turns that came together went together: a command per stage (messages, session updates, new sessions,
    # usage), not one per turn.
    assert listener.sent == ["insert", "update", "insert", "insert"]


def _question_usage_outbox(db: str, turn: int, usage_turn: int | str | None = None) -> list[StoreWrite]:
    """Three writes of a turn; a ``usage_turn`` that is not an int breaks the usage validator."""
    return [Insert(f"{db}.messages", {"_id": f"{turn}-q"}),
            Insert(f"{db}.usage", {"_id": f"{turn}-u", "turn": turn if usage_turn is None else usage_turn}),
            Insert(f"{db}.outbox", {"_id": f"{turn}-o"})]


async def _busy_commit_with_checked_usage(client: AsyncMongoClient, listener: Commands,
                                          db: str) -> tuple[GroupCommit, asyncio.Task[None]]:
    """A group commit with a first write in flight (the writes that follow queue behind it and go together), and a
    validator that a usage record whose ``turn`` is not an int breaks: a write error that is not a duplicate key."""
    await client[db].create_collection("usage", validator={"turn": {"$type": "int"}})
    listener.sent.clear()
    commit = GroupCommit(client)
    blocker = asyncio.create_task(commit.write([Insert(f"{db}.other", {"_id": "first"})]))
    await asyncio.sleep(0)
    return commit, blocker


async def test_a_failing_write_fails_its_writer_alone_in_staged_commands(
        commands: tuple[AsyncMongoClient, Commands], db: str) -> None:
    client, listener = commands
    commit, blocker = await _busy_commit_with_checked_usage(client, listener, db)
    failing = _question_usage_outbox(db, 2, usage_turn="two")
    writers = [_question_usage_outbox(db, t) for t in (1, 3, 4)]
    outcomes = await asyncio.gather(commit.write(writers[0]), commit.write(failing), commit.write(writers[1]),
                                    commit.write(writers[2]), return_exceptions=True)
    await blocker
    assert len(writers) + 1 >= STAGED_FROM
    assert [type(o) for o in outcomes] == [type(None), WriteError, type(None), type(None)]
    assert await _ids(client, db, "messages") == {"1-q", "2-q", "3-q", "4-q"}
    assert await _ids(client, db, "usage") == {"1-u", "3-u", "4-u"}
    assert await _ids(client, db, "outbox") == {"1-o", "3-o", "4-o"}  # the failed turn's later write not sent
    assert listener.sent.count("bulkWrite") == 1  # the blocker alone; the four together, staged


async def test_a_failing_writer_fails_alone_in_a_bulk_write_and_the_one_behind_it_is_sent_again(
        commands: tuple[AsyncMongoClient, Commands], db: str) -> None:
    client, listener = commands
    commit, blocker = await _busy_commit_with_checked_usage(client, listener, db)
    failing = _question_usage_outbox(db, 1, usage_turn="one")
    after = [Insert(f"{db}.messages", {"_id": "2-q"}), Insert(f"{db}.usage", {"_id": "2-u", "turn": 2})]
    outcomes = await asyncio.gather(commit.write(failing), commit.write(after), return_exceptions=True)
    await blocker
    assert isinstance(outcomes[0], ClientBulkWriteException) and outcomes[1] is None
    assert await _ids(client, db, "messages") == {"1-q", "2-q"}
    assert await _ids(client, db, "usage") == {"2-u"}
    assert await _ids(client, db, "outbox") == set()
    assert listener.sent == ["bulkWrite", "bulkWrite", "bulkWrite"]  # blocker; both, stopped; the one behind


@pytest.mark.parametrize("writers", [1, STAGED_FROM])
async def test_an_insert_already_there_counts_as_written_and_the_writes_after_it_land(
        commands: tuple[AsyncMongoClient, Commands], db: str, writers: int) -> None:
    """What a write sent again looks like (its first acknowledgement lost): its inserts are there already."""
    client, _ = commands
    turns = [[Insert(f"{db}.messages", {"_id": f"{t}-q"}), Insert(f"{db}.usage", {"_id": f"{t}-u", "turn": t})]
             for t in range(writers)]
    await client[db]["messages"].insert_many([{"_id": f"{t}-q"} for t in range(writers)])
    commit = GroupCommit(client)
    await asyncio.gather(*(commit.write(turn) for turn in turns))
    assert await _ids(client, db, "usage") == {f"{t}-u" for t in range(writers)}


async def test_a_writer_whose_stages_come_back_goes_alone(
        commands: tuple[AsyncMongoClient, Commands], db: str) -> None:
    client, listener = commands
    commit = GroupCommit(client)
    blocker = asyncio.create_task(commit.write([Insert(f"{db}.other", {"_id": "first"})]))
    await asyncio.sleep(0)
    back_and_forth = [Insert(f"{db}.messages", {"_id": "x-1"}), Insert(f"{db}.usage", {"_id": "x-u", "turn": 0}),
                      Insert(f"{db}.messages", {"_id": "x-2"})]
    await asyncio.gather(*(commit.write(_turn(db, t)) for t in (0, 2, 4)), commit.write(back_and_forth),
                         *(commit.write(_turn(db, t)) for t in (6, 8, 10)))
    await blocker
    assert await _ids(client, db, "messages") >= {"x-1", "x-2", "0-q", "10-a"}
    # blocker; three turns staged (messages, sessions, usage); the odd one alone; the last three staged
    assert listener.sent == ["bulkWrite", "insert", "insert", "insert", "bulkWrite", "insert", "insert", "insert"]


async def test_a_writer_whose_caller_went_away_is_written(
        commands: tuple[AsyncMongoClient, Commands], db: str) -> None:
    client, _ = commands
    commit = GroupCommit(client)
    first = asyncio.create_task(commit.write(_turn(db, 0)))
    gone = asyncio.create_task(commit.write(_turn(db, 2)))
    await asyncio.sleep(0)  # both queued
    gone.cancel()
    await first
    with pytest.raises(asyncio.CancelledError):
        await gone
    for _ in range(100):  # the second batch is on its way
        if await client[db]["messages"].count_documents({"turn": 2}) == 2:
            break
        await asyncio.sleep(0.02)
    assert await client[db]["messages"].count_documents({"turn": 2}) == 2
