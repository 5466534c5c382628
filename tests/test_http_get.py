"""http_get: only allowlisted hosts, never loopback, private or link-local addresses unless trusted."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from moteur.tools.http_get import HttpGet
from moteur.tools.registry import Registry


@pytest.fixture
async def site() -> AsyncIterator[int]:
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
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
    yield server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await runner.cleanup()


def _registry(allow: list[str], trusted: list[str] = ()) -> Registry:  # type: ignore[assignment]
    registry, tool = Registry(), HttpGet(allow, trusted, max_bytes=10_000)
    registry.register(tool.spec(), tool)
    return registry


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


async def test_a_trusted_internal_host_is_fetched_capped_and_redirects_are_not_followed(site: int) -> None:
    registry = _registry(["localhost"], trusted=["localhost"])
    page = await registry.invoke("http_get", json.dumps({"url": f"http://localhost:{site}/"}))
    assert page.ok and json.loads(page.content_json)["text"] == "hello from the intranet"
    huge = json.loads((await registry.invoke("http_get", json.dumps({"url": f"http://localhost:{site}/huge"})))
                      .content_json)
    assert huge["truncated"] and len(huge["text"]) == 10_000
    moved = json.loads((await registry.invoke("http_get", json.dumps({"url": f"http://localhost:{site}/moved"})))
                       .content_json)
    assert moved["status"] == 302  # the model sees the redirect; moteur does not follow it to the metadata host
