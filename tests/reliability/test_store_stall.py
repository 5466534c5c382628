"""A store that stalls for a few seconds (busy writing large documents) delays the operations in flight; it
does not fail them.

PyMongo's heartbeat uses the connect timeout as its socket timeout. At 2 s, a SecantusDB busy for 2 s failed a
heartbeat, PyMongo marked it unknown and cancelled every operation in flight (AutoReconnect): the fuzzed
ForgetUser answered UNAVAILABLE "the session store (MongoDB) is unreachable" in two CI runs. The client of
moteur.runtime.mongo must ride through such a stall.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pymongo.errors

from moteur.runtime.mongo import connect_mongo
from moteur.runtime.settings import MongoSettings
from tests.stores import lone_secantusdb

STALL_SECONDS = 3.0


async def test_operations_in_flight_wait_out_a_store_stall(tmp_path: Path) -> None:
    with lone_secantusdb(tmp_path / "store") as store:
        # Heartbeats every 0.5 s (the default is 10 s) so that one surely falls within the stall.
        client = connect_mongo(MongoSettings(mongo_uri=f"{store.uri}/?heartbeatFrequencyMS=500"))
        users = client["stall"]["users"]
        await users.insert_one({"user": "ana"})
        failures: list[str] = []
        done = 0

        async def keep_deleting() -> None:
            nonlocal done
            until = time.monotonic() + STALL_SECONDS + 3
            while time.monotonic() < until:
                try:
                    await users.delete_many({"user": "someone"})
                    done += 1
                except pymongo.errors.PyMongoError as exc:
                    failures.append(type(exc).__name__)
                await asyncio.sleep(0.01)

        async def stall() -> None:
            await asyncio.sleep(1)
            os.kill(store.process.pid, signal.SIGSTOP)
            await asyncio.sleep(STALL_SECONDS)
            os.kill(store.process.pid, signal.SIGCONT)

        await asyncio.gather(keep_deleting(), stall())
        await client.close()
        assert failures == []
        assert done > 50  # it went on after the stall
