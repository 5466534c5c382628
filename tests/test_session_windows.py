"""Session windows kept between turns (moteur.gateway.windows), against a lone SecantusDB and redis-server.

Two SessionWindows on one Redis and one store stand for two gateway replicas. What must hold: a window is
served only when no turn, on any replica, wrote the session since it was kept; otherwise the session is read
from the store, and so always holds every message written before the turn began."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from moteur.gateway.sessions import Scope, Session, SessionStore, StoredMessage, new_message
from moteur.gateway.windows import Lease, SessionWindows
from moteur.runtime.errors import NotFound
from moteur.runtime.ids import new_id
from moteur.runtime.mongo import write_together
from tests.stores import lone_redis, lone_secantusdb

ADA = Scope("acme", "ada")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    with lone_secantusdb(Path(tmp_path_factory.mktemp("windows"))) as store, lone_redis() as redis_url:
        yield store.uri, redis_url


class CountingStore(SessionStore):
    """The real store, counting the session reads."""

    reads = 0

    async def get(self, scope: Scope, session_id: str) -> Session:
        self.reads += 1
        return await super().get(scope, session_id)


@pytest.fixture
async def mongo(stores: tuple[str, str]) -> AsyncIterator[AsyncMongoClient]:
    client: AsyncMongoClient = AsyncMongoClient(stores[0], tz_aware=True)
    yield client
    await client.close()


@pytest.fixture
async def db(mongo: AsyncMongoClient) -> AsyncIterator[AsyncDatabase]:
    database = mongo[f"windows_{new_id().lower()}"]
    yield database
    await mongo.drop_database(database.name)


@pytest.fixture
async def redis(stores: tuple[str, str]) -> AsyncIterator[Redis]:
    client = Redis.from_url(stores[1])
    yield client
    await client.aclose()


class Replica:
    """One gateway's share of a turn: open the session, write the turn's messages, tell the windows."""

    def __init__(self, mongo: AsyncMongoClient, db: AsyncDatabase, redis: Redis | None) -> None:
        self.mongo, self.store = mongo, CountingStore(db)
        self.windows = SessionWindows(self.store, redis)

    async def open(self, session_id: str, scope: Scope = ADA) -> tuple[Session, Lease | None]:
        return await self.windows.open(scope, session_id)

    async def commit(self, session: Session, lease: Lease | None, text: str) -> list[StoredMessage]:
        messages = [new_message("user", text), new_message("assistant", f"about {text}")]
        await write_together(self.mongo, self.store.turn_writes(session, messages))
        await self.windows.written(session, lease, messages)
        return messages

    async def turn(self, session_id: str, text: str) -> Session:
        """A whole turn; returns the session as the turn saw it before writing."""
        session, lease = await self.open(session_id)
        await self.commit(session, lease, text)
        return session

    async def first_turn(self, text: str) -> str:
        session = SessionStore.new("acme", "ada")
        await self.commit(session, None, text)
        return session.id


def _texts(session: Session) -> list[str]:
    return [m.content for m in session.recent if m.role == "user"]


async def test_a_turn_after_this_gateway_wrote_the_session_reads_nothing(mongo, db, redis) -> None:
    gateway = Replica(mongo, db, redis)
    session_id = await gateway.first_turn("lighthouses")
    seen = await gateway.turn(session_id, "tides")  # the window the first turn left
    assert gateway.store.reads == 0
    assert _texts(seen) == ["lighthouses"] and seen.message_count == 2
    seen = await gateway.turn(session_id, "storms")
    assert gateway.store.reads == 0
    assert _texts(seen) == ["lighthouses", "tides"] and seen.message_count == 4
    # What was kept is what the store holds.
    stored = await SessionStore(db).get(ADA, session_id)
    assert [m.id for m in stored.recent][:4] == [m.id for m in seen.recent]


async def test_a_turn_on_another_replica_in_between_is_read_from_the_store(mongo, db, redis) -> None:
    first, second = Replica(mongo, db, redis), Replica(mongo, db, redis)
    session_id = await first.first_turn("lighthouses")
    seen = await second.turn(session_id, "tides")
    assert second.store.reads == 1 and _texts(seen) == ["lighthouses"]
    seen = await first.turn(session_id, "storms")  # first kept a window, but second wrote since
    assert first.store.reads == 1 and _texts(seen) == ["lighthouses", "tides"]
    seen = await second.turn(session_id, "gulls")
    assert second.store.reads == 2 and _texts(seen) == ["lighthouses", "tides", "storms"]
    seen = await second.turn(session_id, "reefs")  # second wrote last: its window serves
    assert second.store.reads == 2 and _texts(seen) == ["lighthouses", "tides", "storms", "gulls"]


async def test_turns_side_by_side_keep_no_window(mongo, db, redis) -> None:
    gateway, other = Replica(mongo, db, redis), Replica(mongo, db, redis)
    session_id = await gateway.first_turn("lighthouses")
    one, one_lease = await gateway.open(session_id)
    two, two_lease = await other.open(session_id)  # began while the first was under way
    assert two_lease is not None and not two_lease.settled
    await gateway.commit(one, one_lease, "tides")
    await other.commit(two, two_lease, "storms")
    reads = gateway.store.reads
    seen = await gateway.turn(session_id, "gulls")  # neither kept a window: both turns are in the store
    assert gateway.store.reads == reads + 1 and sorted(_texts(seen)) == ["lighthouses", "storms", "tides"]


async def test_a_turn_that_never_wrote_leaves_the_next_turns_to_the_store(mongo, db, redis) -> None:
    gateway = Replica(mongo, db, redis)
    session_id = await gateway.first_turn("lighthouses")
    await gateway.open(session_id)  # a turn that failed (or a gateway that died) before writing
    seen = await gateway.turn(session_id, "tides")
    assert gateway.store.reads == 1 and _texts(seen) == ["lighthouses"]
    # "tides" replaced the mark with a version but kept nothing (it began while a turn seemed under way): the
    # next turn reads and keeps, and the one after is served again.
    await gateway.turn(session_id, "storms")
    assert gateway.store.reads == 2
    seen = await gateway.turn(session_id, "gulls")
    assert gateway.store.reads == 2 and _texts(seen) == ["lighthouses", "tides", "storms"]


async def test_a_deleted_session_is_not_found_though_its_window_was_kept(mongo, db, redis) -> None:
    gateway = Replica(mongo, db, redis)
    session_id = await gateway.first_turn("lighthouses")
    await gateway.store.delete(ADA, session_id)
    await gateway.windows.forget("acme", session_id)
    with pytest.raises(NotFound):
        await gateway.open(session_id)


async def test_another_users_key_never_gets_the_window(mongo, db, redis) -> None:
    gateway = Replica(mongo, db, redis)
    session_id = await gateway.first_turn("lighthouses")
    with pytest.raises(NotFound):
        await gateway.open(session_id, Scope("acme", "mallory"))
    with pytest.raises(NotFound):
        await gateway.open(session_id, Scope("globex", None))


async def test_without_redis_every_turn_reads_the_store(mongo, db) -> None:
    down = Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)
    try:
        gateway = Replica(mongo, db, down)
        session_id = await gateway.first_turn("lighthouses")
        seen = await gateway.turn(session_id, "tides")
        seen = await gateway.turn(session_id, "storms")
        assert gateway.store.reads == 2 and _texts(seen) == ["lighthouses", "tides"]
    finally:
        await down.aclose()
