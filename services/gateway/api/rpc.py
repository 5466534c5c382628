"""How the gateway's RPC groups are written and put together.

Each group (chat, sessions, memories, files, admin) is a small class with only the dependencies it uses. Its
handlers are written ``(self, request, identity, context)`` and decorated with :func:`authenticated` (or
:func:`admin_only`), so that every RPC resolves the caller's API key once, before anything else, the same way.
:func:`assemble` puts the groups behind the one ``moteur.v1.Gateway`` service, and refuses to start when an RPC
is served by no group or by two.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

import grpc

from moteur.gateway.auth import Authenticator
from moteur.runtime.errors import PermissionDenied
from moteur.runtime.identity import Identity
from moteur.v1 import gateway_pb2, gateway_pb2_grpc

Request = TypeVar("Request")
Context = grpc.aio.ServicerContext

GATEWAY_RPCS = frozenset(gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].methods_by_name)


class Group(Protocol):
    """A group of RPCs: it knows how to authenticate its callers."""

    auth: Authenticator


def authenticated(handler: Callable[[Any, Request, Identity, Context], Any]) -> Callable[[Any, Request, Context], Any]:
    """The gRPC handler that authenticates the caller (UNAUTHENTICATED without a valid key) and then runs
    ``handler`` with its identity. Works for unary and server-streaming handlers alike."""
    return _guarded(handler, admin_doing=None)


def admin_only(doing: str) -> Callable[[Callable[[Any, Request, Identity, Context], Any]],
                                       Callable[[Any, Request, Context], Any]]:
    """:func:`authenticated`, and PERMISSION_DENIED unless the key is an admin key of its tenant; ``doing``
    names the action in the message ("changing limits")."""
    return functools.partial(_guarded, admin_doing=doing)


def _guarded(handler: Callable[[Any, Request, Identity, Context], Any], admin_doing: str | None
             ) -> Callable[[Any, Request, Context], Any]:
    async def caller(group: Group, context: Context) -> Identity:
        identity = await group.auth.authenticate(context)
        if admin_doing is not None and not identity.admin:
            raise PermissionDenied(f"{admin_doing} needs an admin key of the tenant (moteur keys create --admin)")
        return identity

    if inspect.isasyncgenfunction(handler):
        @functools.wraps(handler)
        async def stream(group: Group, request: Request, context: Context) -> AsyncIterator[Any]:
            async for item in handler(group, request, await caller(group, context), context):
                yield item

        return stream

    @functools.wraps(handler)
    async def unary(group: Group, request: Request, context: Context) -> Any:
        return await handler(group, request, await caller(group, context), context)

    return unary


def assemble(*groups: object) -> gateway_pb2_grpc.GatewayServicer:
    """One ``moteur.v1.Gateway`` servicer whose RPCs are the groups' handlers."""
    servicer = gateway_pb2_grpc.GatewayServicer()
    served: dict[str, str] = {}
    for group in groups:
        for name in sorted(GATEWAY_RPCS & set(dir(type(group)))):
            if name in served:
                raise TypeError(f"Gateway.{name} is served by both {served[name]} and {type(group).__name__}")
            served[name] = type(group).__name__
            setattr(servicer, name, getattr(group, name))
    if missing := sorted(GATEWAY_RPCS - served.keys()):
        raise TypeError(f"no group serves Gateway.{', Gateway.'.join(missing)}")
    return servicer

