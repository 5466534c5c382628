"""Session windows kept between turns, so that a turn on a session this gateway wrote last reads nothing
from the store (issue 18: the read was a quarter of the store's work per turn and ~2 ms of a first token).

Safe across replicas and concurrent turns, through one Redis key per session that holds either a *version*
(a token naming the session as written by the last turn that finished) or a *mark* (``w:``, a turn is under
way):

1. :meth:`SessionWindows.open` swaps the key for the turn's own mark (``SET … GET``, one round trip) and
   looks at what was there. A version this gateway holds a window for is a hit: no other turn wrote the
   session since, on any replica. Anything else is read from the store, as without the cache.
2. After the turn's writes are committed, :meth:`SessionWindows.written` swaps its mark for a new version,
   only if its mark is still there (a script: compare and set). The window is kept only then, and only if
   the turn began from a state no other turn was changing (the key held no mark when it opened).

A turn that began after this one, or ran beside it, left its own mark, so this one's swap fails and nobody
keeps a window: the next turn reads the store. A turn that failed, or a gateway that died between its
commit and its swap, leaves its mark: the same. Deleting a session drops its key. What could still go
wrong is Redis losing its data while a turn is under way (its mark is gone, and a turn that starts then may
keep a window without that turn's messages): windows therefore live ``ttl_seconds`` at most.

Without Redis (down, or no cache configured) every turn reads the store, exactly as before.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import cast

import structlog
from cachetools import TTLCache
from redis.asyncio import Redis
from redis.exceptions import RedisError

from moteur.gateway.metrics import SESSION_WINDOW_LOOKUPS
from moteur.gateway.sessions import RECENT_MESSAGES, Scope, Session, SessionStore, StoredMessage
from moteur.runtime.ids import new_id

log = structlog.get_logger("moteur.gateway.windows")

MARK = "w:"
# KEYS[1]: the session's key; ARGV: the turn's mark, the new version, the key's lifetime in seconds.
_SWAP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """What a turn's :meth:`SessionWindows.open` left for its :meth:`SessionWindows.written`."""

    mark: str
    settled: bool  # no other turn was changing the session when this one opened it


@dataclass(frozen=True, slots=True)
class _Kept:
    version: str
    session: Session


class SessionWindows:
    def __init__(self, sessions: SessionStore, redis: Redis | None, max_sessions: int = 4096,
                 ttl_seconds: float = 600.0) -> None:
        """``redis`` None or ``max_sessions`` 0: no cache, every turn reads its session from the store."""
        self._sessions = sessions
        self._redis = redis if max_sessions > 0 else None
        self._kept: TTLCache[tuple[str, str], _Kept] = TTLCache(max(1, max_sessions), ttl_seconds)
        self._ttl = max(1, int(ttl_seconds))
        self._swap = redis.register_script(_SWAP) if redis is not None else None

    async def open(self, scope: Scope, session_id: str) -> tuple[Session, Lease | None]:
        """The session as the turn starts from (a copy: the turn may change it), and its lease (None: the
        turn cannot keep a window). Raises NotFound as the store does."""
        if self._redis is None:
            return await self._sessions.get(scope, session_id), None
        lease = Lease(MARK + new_id(), settled=False)
        try:
            previous = await self._redis.set(_key(scope.tenant, session_id), lease.mark, ex=self._ttl, get=True)
        except RedisError as exc:
            SESSION_WINDOW_LOOKUPS.labels("unavailable").inc()
            log.warning("windows.redis_failed", error=str(exc)[:200])
            return await self._sessions.get(scope, session_id), None
        version = previous.decode() if isinstance(previous, bytes) else cast(str | None, previous)
        lease = dataclasses.replace(lease, settled=version is None or not version.startswith(MARK))
        kept = self._kept.get((scope.tenant, session_id))
        if kept is not None and lease.settled and kept.version == version and (
                scope.user is None or scope.user == kept.session.user):
            SESSION_WINDOW_LOOKUPS.labels("hit").inc()
            return dataclasses.replace(kept.session, recent=list(kept.session.recent)), lease
        SESSION_WINDOW_LOOKUPS.labels("miss").inc()
        return await self._sessions.get(scope, session_id), lease

    async def written(self, session: Session, lease: Lease | None, messages: list[StoredMessage] | None) -> None:
        """The turn's writes are committed, ``messages`` appended to ``session`` (as it was opened; None: not
        known here, keep nothing), no turn left pending: keep the window it leaves, when no other turn may have
        changed the session meanwhile."""
        if self._redis is None or self._swap is None:
            return
        key, version = (session.tenant, session.id), new_id()
        try:
            if lease is None:
                # A session this turn created (or one read while Redis was down): kept only if no turn marked
                # it since, which a key still absent proves.
                kept = await self._redis.set(_key(*key), version, ex=self._ttl, nx=True)
            else:
                # Swapped even when not settled: the next turn then finds a version, reads the store and keeps.
                swapped = await self._swap(keys=[_key(*key)], args=[lease.mark, version, self._ttl])
                kept = bool(swapped) and lease.settled
        except RedisError as exc:
            log.warning("windows.redis_failed", error=str(exc)[:200])
            kept = False
        if kept and messages:
            self._kept[key] = _Kept(version, _after(session, messages))
        else:
            self._kept.pop(key, None)

    async def forget(self, tenant: str, session_id: str) -> None:
        """The session changed outside a turn (deleted): no gateway may use a window of it again (each one's
        next turn finds the key gone, not the version it kept)."""
        self._kept.pop((tenant, session_id), None)
        if self._redis is not None:
            try:
                await self._redis.delete(_key(tenant, session_id))
            except RedisError as exc:  # windows expire within their TTL; the key's version is never seen again
                log.warning("windows.redis_failed", error=str(exc)[:200])


def _after(session: Session, messages: list[StoredMessage]) -> Session:
    """The session once ``messages`` are appended. A new one's turn writes set its window already."""
    if not session.stored:
        return dataclasses.replace(session, stored=True, pending=None)
    return dataclasses.replace(
        session, recent=[*session.recent, *messages][-RECENT_MESSAGES:],
        message_count=session.message_count + len(messages), updated_at=messages[-1].created_at, pending=None)


def _key(tenant: str, session_id: str) -> str:
    return f"moteur:window:{tenant}:{session_id}"
