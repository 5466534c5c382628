"""``http_get``: fetch a page from an allowlisted host, never from the mesh or the cloud's metadata.

The host must match the allowlist (exact names, or ``*.example.org`` for subdomains). The check that
matters happens when the connection is made, in :class:`GuardedNetwork`: the name is resolved there, every
address it resolves to must be public (:func:`moteur.tools.addresses.is_public`: no loopback, private,
link-local — 169.254.169.254 —, carrier-grade NAT, 6to4, NAT64, Teredo, documentation, benchmarking,
multicast or reserved address, mapped into IPv6 or not), the socket connects to one of those very addresses,
and the address it is connected to is checked once more. A DNS answer that changes between a check and the
connection cannot redirect it, and no proxy from the environment is used. Redirects are not followed; the
body is read up to a size cap, within the tool's timeout. Hosts listed in ``trusted`` (internal services an
operator vouches for) skip the address check.
"""

from __future__ import annotations

import asyncio
import fnmatch
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpcore

from moteur.tools.addresses import is_public
from moteur.tools.registry import ToolError, ToolSpec

MAX_BYTES = 256_000
Resolver = Callable[[str, int], Awaitable[list[str]]]  # (host, port) -> its addresses, in the order to try


async def resolve(host: str, port: int) -> list[str]:
    """The system resolver's addresses for ``host`` (an address resolves to itself)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise ToolError("unknown_host", f"{host} does not resolve") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedNetwork(httpcore.AsyncNetworkBackend):
    """Opens connections to public addresses only (but to any address of a trusted host): resolves the
    name itself, refuses the host when any of its addresses is not public, connects to a checked address
    and checks the address the socket is connected to. Refusals are ToolError ``address_not_allowed``."""

    def __init__(self, trusted: Iterable[str], resolver: Resolver = resolve,
                 inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._trusted = {h.lower() for h in trusted}
        self._resolve = resolver
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        trusted = host.lower().strip("[]") in self._trusted
        addresses = await self._resolve(host.strip("[]"), port)
        if not trusted and not all(is_public(a) for a in addresses):
            raise _refused(host)
        for n, address in enumerate(addresses, 1):
            try:
                stream = await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout):
                if n == len(addresses):
                    raise
                continue  # the next address of the host
            peer = stream.get_extra_info("server_addr")
            if not trusted and not (isinstance(peer, tuple) and is_public(str(peer[0]))):
                await stream.aclose()
                raise _refused(host)
            return stream
        raise ToolError("unknown_host", f"{host} does not resolve")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _refused(host: str) -> ToolError:
    return ToolError("address_not_allowed", f"{host} resolves to an address that is not public (loopback, private, "
                                            "link-local or another special-purpose range); refused")


class HttpGet:
    def __init__(self, allowlist: Sequence[str], trusted: Sequence[str] = (), max_bytes: int = MAX_BYTES,
                 resolver: Resolver = resolve) -> None:
        self._allowlist = [h.lower() for h in allowlist]
        self._network = GuardedNetwork(trusted, resolver)
        self._max_bytes = max_bytes
        self._tls = ssl.create_default_context()

    def spec(self) -> ToolSpec:
        return ToolSpec(
            "http_get", "Fetch a web page or API response (GET) from an allowed host; returns status and text.",
            {"type": "object", "properties": {"url": {"type": "string", "maxLength": 2048,
                                                      "pattern": "^https?://"}},
             "required": ["url"], "additionalProperties": False},
            {"type": "object", "properties": {"status": {"type": "integer"}, "content_type": {"type": "string"},
                                              "text": {"type": "string"}, "truncated": {"type": "boolean"}},
             "required": ["status", "text"]},
            timeout_ms=5_000, max_concurrency=8, max_output_bytes=self._max_bytes + 4_096,
        )

    async def __call__(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        url = urlsplit(arguments["url"])
        host = (url.hostname or "").lower()
        if not host or not any(fnmatch.fnmatchcase(host, pattern) for pattern in self._allowlist):
            raise ToolError("host_not_allowed", f"{host or 'that URL'} is not on this tenant's allowlist")
        headers = [(b"User-Agent", b"moteur-http-get/1"), (b"Accept-Encoding", b"identity")]
        try:
            async with httpcore.AsyncConnectionPool(ssl_context=self._tls, network_backend=self._network) as pool:
                async with pool.stream("GET", url.geturl(), headers=headers) as response:
                    body, truncated = bytearray(), False
                    async for chunk in response.aiter_stream():
                        body.extend(chunk)
                        if len(body) > self._max_bytes:
                            truncated = True
                            break
        except (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError) as exc:
            raise ToolError("fetch_failed", f"could not fetch from {host}: {type(exc).__name__}") from None
        except httpcore.UnsupportedProtocol:
            raise ToolError("invalid_arguments", "only http:// and https:// URLs can be fetched") from None
        content_type = next((v.decode("latin-1") for k, v in response.headers if k.lower() == b"content-type"), "")
        return {"status": response.status, "content_type": content_type,
                "text": bytes(body[: self._max_bytes]).decode(errors="replace"), "truncated": truncated}
