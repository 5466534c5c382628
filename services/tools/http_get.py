"""``http_get``: fetch a page from an allowlisted host, never from the mesh or the cloud's metadata.

The host must match the allowlist (exact names, or ``*.example.org`` for subdomains). Its name is then
resolved here and every address checked — loopback, private, link-local (169.254.169.254, the cloud
metadata endpoint), multicast, reserved and unspecified addresses are refused — and the request goes to
the checked address itself (with the original Host header), so a DNS answer that changes between the
check and the connection cannot redirect it. Redirects are not followed; the body is read up to a size
cap, within the tool's timeout. Hosts listed in ``trusted`` (internal services an operator vouches for)
skip the address check.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from moteur.tools.registry import ToolError, ToolSpec

MAX_BYTES = 256_000


def _blocked(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved
            or ip.is_unspecified or (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None
                                     and _blocked(str(ip.ipv4_mapped))))


class HttpGet:
    def __init__(self, allowlist: Sequence[str], trusted: Sequence[str] = (), max_bytes: int = MAX_BYTES) -> None:
        self._allowlist = [h.lower() for h in allowlist]
        self._trusted = {h.lower() for h in trusted}
        self._max_bytes = max_bytes

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
        port = url.port or (443 if url.scheme == "https" else 80)
        address = await self._checked_address(host, port)
        target = url._replace(netloc=f"[{address}]:{port}" if ":" in address else f"{address}:{port}").geturl()
        headers = {"Host": url.netloc, "User-Agent": "moteur-http-get/1"}
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        async with httpx.AsyncClient(follow_redirects=False) as client:
            async with client.stream("GET", target, headers=headers, extensions=extensions) as response:
                body, truncated = bytearray(), False
                async for chunk in response.aiter_bytes():
                    body.extend(chunk)
                    if len(body) > self._max_bytes:
                        truncated = True
                        break
        return {"status": response.status_code, "content_type": response.headers.get("content-type", ""),
                "text": bytes(body[: self._max_bytes]).decode(errors="replace"), "truncated": truncated}

    async def _checked_address(self, host: str, port: int) -> str:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise ToolError("unknown_host", f"{host} does not resolve") from None
        addresses = [info[4][0] for info in infos]
        if host not in self._trusted and any(_blocked(a) for a in addresses):
            raise ToolError("address_not_allowed",
                            f"{host} resolves to a loopback, private or link-local address; refused")
        return addresses[0]
