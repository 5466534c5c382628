"""http_get: only allowlisted hosts, never an address that is not globally routable unless trusted — checked
where the connection is made, on the addresses it is made to."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpcore
import pytest
from aiohttp import web

from moteur.tools.addresses import is_public
from moteur.tools.http_get import GuardedNetwork, HttpGet
from moteur.tools.registry import Registry, ToolError


@dataclass
class Site:
    port: int
    served: list[str]  # the Host header of each page request it answered


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    app, served = web.Application(), []

    async def page(request: web.Request) -> web.Response:
        served.append(request.host)
        return web.Response(text="hello from the intranet", content_type="text/plain")

    async def huge(request: web.Request) -> web.Response:
        return web.Response(text="x" * 2_000_000)

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    app.router.add_get("/", page)
    app.router.add_get("/huge", huge)
    app.router.add_get("/moved", moved)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    server = web.TCPSite(runner, "127.0.0.1", 0)
    await server.start()
    yield Site(server._server.sockets[0].getsockname()[1], served)
    await runner.cleanup()


def _registry(allow: list[str], trusted: list[str] = (), **options: Any) -> Registry:
    registry, tool = Registry(), HttpGet(allow, trusted, max_bytes=10_000, **options)
    registry.register(tool.spec(), tool)
    return registry


@pytest.mark.parametrize("address", [
    "127.0.0.1", "::1", "0.0.0.0", "::",                          # loopback, unspecified
    "10.1.2.3", "172.16.0.1", "192.168.1.1", "fd00::1",             # private, unique local
    "169.254.169.254", "fe80::1",                                   # link-local: the cloud's metadata endpoint
    "100.64.0.1", "100.127.255.254",                                # carrier-grade NAT
    "2002:7f00:1::1", "2002:808:808::1",                            # 6to4 (embedding 127.0.0.1, 8.8.8.8)
    "64:ff9b::7f00:1", "64:ff9b::808:808", "64:ff9b:1::1",          # NAT64
    "2001::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2",              # Teredo
    "198.18.0.1", "198.19.255.255", "2001:2::1",                    # benchmarking
    "192.0.2.1", "198.51.100.7", "203.0.113.9", "2001:db8::1", "3fff::1",  # documentation
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
    "::127.0.0.1",                                                  # IPv4-compatible (deprecated)
    "224.0.0.1", "239.255.255.250", "ff02::1",                      # multicast
    "240.0.0.1", "255.255.255.255", "192.0.0.8", "fec0::1", "100::1",  # reserved, site-local, discard
])
def test_every_address_that_is_not_globally_routable_is_refused(address: str) -> None:
    assert not is_public(address)


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_a_globally_routable_address_is_allowed(address: str) -> None:
    assert is_public(address)


def _resolver(answers: dict[str, list[str]]):
    """A DNS that answers ``answers`` (what a hostile or rebinding DNS could say), without leaving the machine."""
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return answers[host]

    resolve.asked = asked
    return resolve


async def test_a_public_name_whose_dns_answers_a_private_address_is_refused_when_connecting(site: Site) -> None:
    resolve = _resolver({"news.example.com": ["127.0.0.1"], "mixed.example.com": ["93.184.215.14", "127.0.0.1"]})
    registry = _registry(["*.example.com"], resolver=resolve)
    for host in ("news.example.com", "mixed.example.com"):
        outcome = await registry.invoke("http_get", json.dumps({"url": f"http://{host}:{site.port}/"}))
        assert (outcome.ok, outcome.error_code) == (False, "address_not_allowed"), outcome.error_message
    assert resolve.asked == ["news.example.com", "mixed.example.com"] and site.served == []
    # the same answer for a host the operator trusts: connected to the address the DNS gave, named as asked
    trusted = _registry(["*.example.com"], trusted=["news.example.com"], resolver=resolve)
    page = await trusted.invoke("http_get", json.dumps({"url": f"http://news.example.com:{site.port}/"}))
    assert page.ok and json.loads(page.content_json)["text"] == "hello from the intranet"
    assert site.served == [f"news.example.com:{site.port}"]


class _Stream(httpcore.AsyncNetworkStream):
    """A connection that says it reached ``peer``: what a socket redirected past the resolved address reports."""

    def __init__(self, peer: str) -> None:
        self.peer, self.closed = peer, False

    def get_extra_info(self, info: str) -> Any:
        return (self.peer, 80) if info == "server_addr" else None

    async def aclose(self) -> None:
        self.closed = True


class _Network(httpcore.AsyncNetworkBackend):
    def __init__(self, peer: str) -> None:
        self.stream, self.dialled = _Stream(peer), []

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        self.dialled.append(host)
        return self.stream


async def test_the_address_actually_connected_to_is_checked() -> None:
    network = _Network(peer="10.0.0.8")
    guard = GuardedNetwork((), _resolver({"api.example.com": ["93.184.215.14"]}), inner=network)
    with pytest.raises(ToolError) as refused:
        await guard.connect_tcp("api.example.com", 80)
    assert refused.value.code == "address_not_allowed" and network.stream.closed
    assert network.dialled == ["93.184.215.14"]  # the checked address itself, never the name again


@pytest.mark.parametrize(("url", "allow", "code"), [
    ("http://127.0.0.1/", ["127.0.0.1"], "address_not_allowed"),
    ("http://169.254.169.254/latest/meta-data/", ["169.254.169.254"], "address_not_allowed"),
    ("http://localhost/", ["localhost"], "address_not_allowed"),
    ("http://[::1]/", ["::1"], "address_not_allowed"),
    ("http://10.0.0.8/", ["*"], "address_not_allowed"),
    ("http://example.org/", ["intranet.local"], "host_not_allowed"),
    ("file:///etc/passwd", ["*"], "invalid_arguments"),
])
async def test_refused_targets_answer_a_clear_error(url: str, allow: list[str], code: str) -> None:
    outcome = await _registry(allow).invoke("http_get", json.dumps({"url": url}))
    assert (outcome.ok, outcome.error_code) == (False, code), outcome.error_message


async def test_a_trusted_internal_host_is_fetched_capped_and_redirects_are_not_followed(site: Site) -> None:
    registry = _registry(["localhost"], trusted=["localhost"])
    page = await registry.invoke("http_get", json.dumps({"url": f"http://localhost:{site.port}/"}))
    assert page.ok and json.loads(page.content_json)["text"] == "hello from the intranet"
    huge = json.loads((await registry.invoke("http_get", json.dumps({"url": f"http://localhost:{site.port}/huge"})))
                      .content_json)
    assert huge["truncated"] and len(huge["text"]) == 10_000
    moved = json.loads((await registry.invoke("http_get", json.dumps({"url": f"http://localhost:{site.port}/moved"})))
                       .content_json)
    assert moved["status"] == 302  # the model sees the redirect; moteur does not follow it to the metadata host
