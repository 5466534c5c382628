"""The gateway's RPC groups put together (moteur.gateway.api): every RPC of moteur.v1.Gateway is served by
exactly one group, and every one authenticates the caller before it reads its request or touches a store."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from moteur.gateway.api import AdminRpcs, ChatRpcs, FileRpcs, MemoryRpcs, SessionRpcs, gateway_servicer
from moteur.gateway.api.rpc import GATEWAY_RPCS, admin_only, authenticated
from moteur.runtime.errors import PermissionDenied, Unauthenticated
from moteur.runtime.identity import Identity


class Refusing:
    """An authenticator that refuses every key, and counts how often it was asked."""

    def __init__(self) -> None:
        self.asked = 0

    async def authenticate(self, context: Any) -> Identity:
        self.asked += 1
        raise Unauthenticated("no key")


class Untouchable:
    """Any dependency: an RPC that got past authentication would touch it, and fail the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} used before the caller was authenticated")


def _groups(auth: Any) -> list[object]:
    deps = Untouchable()
    return [ChatRpcs(auth, deps, deps, deps, deps), SessionRpcs(auth, deps, deps), MemoryRpcs(auth, deps, deps),
            FileRpcs(auth, deps), AdminRpcs(auth, deps, deps, deps, deps, deps)]


async def test_every_rpc_is_served_and_authenticates_first() -> None:
    auth = Refusing()
    servicer = gateway_servicer(*_groups(auth))
    for name in sorted(GATEWAY_RPCS):
        handler = getattr(servicer, name)
        with pytest.raises(Unauthenticated):
            reply = handler(Untouchable(), object())  # neither the request nor the context is read
            if inspect.isasyncgen(reply):
                await anext(reply)
            else:
                await reply
    assert auth.asked == len(GATEWAY_RPCS) == 28


def test_an_rpc_no_group_serves_or_two_groups_serve_stops_the_start() -> None:
    groups = _groups(Refusing())
    with pytest.raises(TypeError, match=r"no group serves Gateway\.(.*)ListFiles"):
        gateway_servicer(*[g for g in groups if not isinstance(g, FileRpcs)])
    with pytest.raises(TypeError, match=r"Gateway\.DeleteFile is served by both FileRpcs and FileRpcs"):
        gateway_servicer(*groups, FileRpcs(Refusing(), Untouchable()))


class Accepting:
    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    async def authenticate(self, context: Any) -> Identity:
        return self.identity


class Group:
    def __init__(self, identity: Identity) -> None:
        self.auth = Accepting(identity)
        self.ran: list[str] = []

    @authenticated
    async def Read(self, request: str, identity: Identity, context: Any) -> str:
        return f"{request} for {identity.user}"

    @admin_only("changing things")
    async def Change(self, request: str, identity: Identity, context: Any) -> str:
        self.ran.append(request)
        return "changed"

    @authenticated
    async def Stream(self, request: str, identity: Identity, context: Any) -> Any:
        for part in request:
            yield part


async def test_a_handler_gets_the_identity_and_admin_only_refuses_a_user_key() -> None:
    user = Group(Identity("acme", "alice", "standard"))
    assert await user.Read("hello", None) == "hello for alice"
    assert [part async for part in user.Stream("abc", None)] == ["a", "b", "c"]
    with pytest.raises(PermissionDenied, match="changing things needs an admin key"):
        await user.Change("x", None)
    assert user.ran == []
    admin = Group(Identity("acme", "", "standard", admin=True))
    assert await admin.Change("x", None) == "changed"
