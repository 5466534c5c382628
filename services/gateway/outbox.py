"""The memory outbox: every persisted chat message reaches the memory service, even when it is down.

A message's outbox entry is written in the same round trip as the message itself, so there is never a
message without its entry. A relay in each gateway replica sends entries to ``Memory.Upsert`` (the
message id is the memory id, so a resend replaces rather than duplicates) and deletes them once stored.
It wakes when a turn is written, retries with growing backoff while memory or Milvus is down, and sweeps
every ``sweep_seconds`` for entries another replica left behind when it stopped. A user's message whose
turn allows memory is also sent to ``Memory.Extract``, which reads it for facts about the user — by a
model, so it waits (up to ``quiet_wait_seconds``) until no chat turn of this replica is in flight: it must
not queue ahead of them on the model server (the rules already stored the plain facts during the turn, see
recall.py). An assistant's answer is stored as a reply, a kind recall leaves out. Texts are trimmed to what
memory accepts (a chat message may be four times longer).

Invariant: an outage (``OUTAGE``: memory, Milvus or the store down, a deadline) loses nothing — the batch
stays and is sent again, however long it lasts. A refusal that cannot pass (``PERMANENT``: sending the same
entry again gets the same answer) never holds back the entries behind it: that entry alone moves to
``memory_outbox_dead`` with the error, is counted and logged, and the relay goes on. Any other failure
(INTERNAL, UNKNOWN…: a bug memory hits on some input) is told apart by sending one entry at a time: an
entry that fails while others of the same pass go through gets a strike, and ``MAX_STRIKES`` strikes send it
to the dead letters too — one poisoned message cannot stall every tenant's memory. When nothing of a pass
goes through, the failure is taken as memory's: nothing is struck, and the pass is retried like an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from pymongo.asynchronous.database import AsyncDatabase

from moteur.gateway.metrics import OUTBOX_BACKLOG, OUTBOX_DEAD_LETTERS, OUTBOX_DELIVERED, OUTBOX_FAILURES
from moteur.gateway.sessions import Session, StoredMessage
from moteur.runtime.channels import call_service
from moteur.runtime.errors import MoteurError
from moteur.runtime.identity import SCOPE_MEMORY_WRITE, SCOPE_MODELS, Identity
from moteur.runtime.ids import new_id
from moteur.runtime.memory_limits import MAX_REPLY_CHARS, MAX_TEXT_CHARS
from moteur.runtime.mesh_tokens import MeshTokenIssuer
from moteur.runtime.mongo import Insert, insert_new
from moteur.runtime.tasks import cancel_and_wait
from moteur.v1 import memory_pb2, memory_pb2_grpc

log = structlog.get_logger("moteur.gateway.outbox")

BATCH = 64
# Answers about the entry itself, not about memory's health: the same entry gets them again.
PERMANENT = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                       grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE})
# Answers about memory's health, not about the entry: the entries wait, with no limit.
OUTAGE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED})
RELAY_SCOPES = frozenset({SCOPE_MEMORY_WRITE, SCOPE_MODELS})
MAX_STRIKES = 5  # failures of one entry, while others went through, before it is dead-lettered
MALFORMED = "malformed"  # an entry this relay cannot read (a field missing or of the wrong type)

Entry = dict[str, Any]
DEAD_LETTER_SECONDS = 30 * 86400


class MemoryOutbox:
    def __init__(self, db: AsyncDatabase, memory: memory_pb2_grpc.MemoryStub, issuer: MeshTokenIssuer,
                 sweep_seconds: float = 5.0, max_backoff_seconds: float = 30.0,
                 quiet_wait_seconds: float = 30.0) -> None:
        self._issuer = issuer
        self._turns_in_flight = 0
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._quiet_wait = quiet_wait_seconds
        self._entries = db["memory_outbox"]
        self._dead = db["memory_outbox_dead"]
        self._memory = memory
        self._sweep_seconds = sweep_seconds
        self._max_backoff = max_backoff_seconds
        self._wake = asyncio.Event()
        self._relay: asyncio.Task[None] | None = None
        for reason in (*(_reason(code) for code in PERMANENT), MALFORMED, "internal", "unknown"):
            # Exported at 0 from the start: the first dead letter is then an increase an alert sees.
            OUTBOX_DEAD_LETTERS.labels(reason)

    async def ensure_indexes(self) -> None:
        # Dead letters hold a user's message text: kept long enough to look at, not for ever.
        await self._dead.create_index("dead_at", expireAfterSeconds=DEAD_LETTER_SECONDS)
        await self._dead.create_index([("tenant", 1), ("user", 1)])

    def writes(self, session: Session, messages: Sequence[StoredMessage], extract: bool = False) -> list[Insert]:
        """Outbox entries for ``messages``, to send in the same bulk write as the messages. With ``extract``,
        the user's message is also read for facts (with the answer that followed it, when there is one)."""
        entries = []
        for index, m in enumerate(messages):
            if not m.content.strip():
                continue
            entry = {"_id": m.id, "tenant": session.tenant, "user": session.user, "session": session.id,
                     "role": m.role, "text": m.content, "created_at": m.created_at}
            if extract and m.role == "user" and session.user:
                reply = messages[index + 1].content if index + 1 < len(messages) else ""
                entry |= {"extract": True, "reply": reply}
            entries.append(Insert(self._entries.full_name, entry))
        return entries

    async def forget_session(self, tenant: str, session_id: str) -> None:
        """A deleted session leaves memory too: pending entries are dropped and the deletion is queued, so it
        happens even if memory is down now."""
        await self._entries.delete_many({"tenant": tenant, "session": session_id, "op": {"$ne": "forget"}})
        await insert_new(self._entries, {"_id": new_id(), "op": "forget", "tenant": tenant, "session": session_id})
        self._wake.set()

    async def forget_user(self, tenant: str, user: str) -> None:
        """A forgotten user's messages not yet sent to memory are dropped, and their dead letters with them,
        so that none reaches memory after it forgot the user. (A batch a relay is sending at that very moment
        may land after memory forgot: memory drops what is older than the forgetting, services/memory/forgotten.py.)"""
        await self._entries.delete_many({"tenant": tenant, "user": user})
        await self._dead.delete_many({"tenant": tenant, "user": user})

    def written(self) -> None:
        """Entries were just committed: the relay has work."""
        self._wake.set()

    @contextlib.contextmanager
    def chatting(self) -> Iterator[None]:
        """A chat turn is in flight: extractions by a model wait until none is."""
        self._turns_in_flight += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._turns_in_flight -= 1
            if not self._turns_in_flight:
                self._quiet.set()

    def start(self) -> None:
        self._relay = asyncio.create_task(self._run(), name="memory-outbox-relay")

    async def stop(self) -> None:
        await cancel_and_wait(self._relay)

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff or self._sweep_seconds)
            self._wake.clear()
            try:
                while await self.relay_once():
                    pass
                backoff = 0.0
                OUTBOX_BACKLOG.set(0)  # the last batch came back empty: no count needed
            except Exception as exc:  # memory, Milvus or the store is down: the entries wait, nothing is lost
                backoff = min(self._max_backoff, max(0.2, backoff * 2))
                OUTBOX_FAILURES.inc()
                log.warning("outbox.relay_failed", error=str(exc)[:300], retry_in_s=backoff)
                with contextlib.suppress(Exception):
                    OUTBOX_BACKLOG.set(await self._entries.count_documents({}))

    async def relay_once(self) -> int:
        """Send one batch; returns how many entries it settled, delivered or dead-lettered (0: the outbox is
        empty). Raises on a failure that may pass, leaving the entries not yet delivered in the outbox."""
        entries = await self._entries.find({}).limit(BATCH).to_list()
        if not entries:
            return 0
        forgets: list[tuple[str, Entry, memory_pb2.DeleteMemoriesRequest]] = []
        by_tenant: dict[str, list[_Message]] = defaultdict(list)
        for entry in entries:
            try:  # every request is built first: an entry that cannot be read never reaches memory
                if entry.get("op") == "forget":
                    forgets.append((entry["tenant"], entry, _forget_request(entry)))
                else:
                    by_tenant[entry["tenant"]].append(_message(entry))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                await self._bury(entry, "read", MALFORMED, f"{type(exc).__name__}: {exc}")
        for tenant, entry, request in forgets:
            await self._forget(tenant, entry, request)
        suspects: list[tuple[Entry, str, MoteurError]] = []  # failures that may be the entry's own
        went_through = 0
        for tenant, batch in by_tenant.items():
            # An outage raises out of here: the entries not yet delivered wait for the next pass. A resend
            # replaces by id (Upsert), and facts already known are merged as NONE (Extract).
            stored, failed = await self._upsert(tenant, batch)
            suspects += [(message.entry, "upsert", error) for message, error in failed]
            delivered = []
            for message in stored:
                if message.extract is not None:
                    try:
                        await self._extract(tenant, message.entry, message.extract)
                    except MoteurError as exc:
                        if exc.code in OUTAGE:
                            raise
                        suspects.append((message.entry, "extract", exc))  # stored; its facts wait
                        continue
                delivered.append(message.entry["_id"])
            await self._entries.delete_many({"_id": {"$in": delivered}})
            OUTBOX_DELIVERED.inc(len(delivered))
            went_through += len(delivered)
        if suspects and not went_through:
            raise suspects[0][2]  # nothing went through: memory's failure, not the entries'
        for entry, stage, error in suspects:
            await self._strike(entry, stage, error)
        return len(entries)

    async def _upsert(
        self, tenant: str, batch: list[_Message]
    ) -> tuple[list[_Message], list[tuple[_Message, MoteurError]]]:
        """The messages memory stored, and those it failed on for a reason that may be theirs. Memory refuses
        a whole request for one bad record, so a batch refused for anything but an outage is sent again one
        message at a time; a message refused alone for good is dead-lettered here."""
        request = memory_pb2.UpsertRequest(records=[m.record for m in batch])
        try:
            await call_service(self._memory.Upsert, request, "memory", self._identity(tenant), timeout=30)
            return batch, []
        except MoteurError as exc:
            if exc.code in OUTAGE:
                raise
            if len(batch) == 1:
                if exc.code in PERMANENT:
                    await self._bury(batch[0].entry, "upsert", _reason(exc.code), exc.message)
                    return [], []
                return [], [(batch[0], exc)]
        stored: list[_Message] = []
        failed: list[tuple[_Message, MoteurError]] = []
        for one in batch:
            one_stored, one_failed = await self._upsert(tenant, [one])
            stored += one_stored
            failed += one_failed
        return stored, failed

    async def _extract(self, tenant: str, entry: Entry, request: memory_pb2.ExtractRequest) -> None:
        with contextlib.suppress(TimeoutError):  # past the wait it goes anyway: turns may never stop
            await asyncio.wait_for(self._quiet.wait(), self._quiet_wait)
        try:
            await call_service(self._memory.Extract, request, "memory", self._identity(tenant, request.user_id),
                               timeout=60)
        except MoteurError as exc:
            if exc.code not in PERMANENT:
                raise
            # The message itself is stored; only the facts it held are not.
            await self._bury(entry, "extract", _reason(exc.code), exc.message)

    def _identity(self, tenant: str, user: str = "") -> Identity:
        """The relay's own identity for ``tenant``: it writes memories and lets memory ask a model to extract
        facts (the router accounts those calls to the "internal" tier), nothing else."""
        return self._issuer.sign(Identity(tenant, user, "internal", scopes=RELAY_SCOPES),
                                 audience={"memory", "router"}, seconds=90)

    async def _strike(self, entry: Entry, stage: str, error: MoteurError) -> None:
        """An entry failed while others went through: after MAX_STRIKES such passes it is dead-lettered."""
        strikes = int(entry.get("strikes", 0)) + 1
        if strikes >= MAX_STRIKES:
            await self._bury(entry, stage, _reason(error.code), f"{error.message} ({strikes} times)")
            return
        await self._entries.update_one({"_id": entry["_id"]}, {"$set": {"strikes": strikes}})
        log.warning("outbox.entry_failed", entry_id=str(entry["_id"]), tenant=entry.get("tenant"), stage=stage,
                    code=error.code.name, strikes=strikes, error=error.message[:300])

    async def _forget(self, tenant: str, entry: Entry, request: memory_pb2.DeleteMemoriesRequest) -> None:
        try:
            await call_service(self._memory.Delete, request, "memory", self._identity(tenant), timeout=30)
        except MoteurError as exc:
            if exc.code not in PERMANENT:
                raise
            await self._bury(entry, "forget", _reason(exc.code), exc.message)
            return
        await self._entries.delete_one({"_id": entry["_id"]})
        OUTBOX_DELIVERED.inc()

    async def _bury(self, entry: Entry, stage: str, reason: str, error: str) -> None:
        """Move an entry memory will never accept to the dead letters, with why and when (kept there to be
        looked at or sent again by hand), and go on without it."""
        letter = {k: v for k, v in entry.items() if k != "_id"} | {
            "stage": stage, "reason": reason, "error": error[:1000], "dead_at": datetime.now(UTC)}
        await self._dead.replace_one({"_id": entry["_id"]}, letter, upsert=True)  # another replica may too
        await self._entries.delete_one({"_id": entry["_id"]})
        OUTBOX_DEAD_LETTERS.labels(reason).inc()
        log.error("outbox.dead_lettered", entry_id=str(entry["_id"]), tenant=entry.get("tenant"),
                  user=entry.get("user"), session_id=entry.get("session"), stage=stage, reason=reason,
                  error=error[:300])


@dataclass(frozen=True, slots=True)
class _Message:
    """A message entry and what it becomes in memory's requests."""

    entry: Entry
    record: memory_pb2.MemoryRecord
    extract: memory_pb2.ExtractRequest | None


def _message(entry: Entry) -> _Message:
    extract = memory_pb2.ExtractRequest(
        user_id=entry["user"], session_id=entry["session"], user_message=entry["text"][:MAX_TEXT_CHARS],
        assistant_message=entry.get("reply", "")[:MAX_REPLY_CHARS], source_ids=[entry["_id"]],
    ) if entry.get("extract") else None
    return _Message(entry, _record(entry), extract)


def _reason(code: grpc.StatusCode) -> str:
    return code.name.lower()


def _forget_request(entry: Entry) -> memory_pb2.DeleteMemoriesRequest:
    # The session's messages; facts learned in it are the user's, listed and deleted on their own.
    return memory_pb2.DeleteMemoriesRequest(session_id=entry["session"],
                                            kinds=[memory_pb2.MEMORY_KIND_MESSAGE, memory_pb2.MEMORY_KIND_REPLY])


def _record(entry: Entry) -> memory_pb2.MemoryRecord:
    created = Timestamp()
    created.FromDatetime(entry["created_at"])
    return memory_pb2.MemoryRecord(
        id=entry["_id"], user_id=entry["user"], session_id=entry["session"],
        kind=memory_pb2.MEMORY_KIND_REPLY if entry["role"] == "assistant" else memory_pb2.MEMORY_KIND_MESSAGE,
        text=f"{entry['role']}: {entry['text']}"[:MAX_TEXT_CHARS], source_ids=[entry["_id"]], created_at=created,
    )
