"""The HTTP API drains as gRPC does: once the gateway stops, new requests get a 503 the SDK retries elsewhere
(with Retry-After) and /healthz turns unready, so that the Service stops sending."""

from __future__ import annotations

import httpx

from moteur.gateway.http.app import HttpApi


def _api() -> HttpApi:
    # Nothing behind it is reached: a draining gateway refuses before it authenticates.
    return HttpApi(None, None, None, None, None, None, None)  # type: ignore[arg-type]


async def test_a_draining_gateway_refuses_new_requests_and_is_unready() -> None:
    api = _api()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(api.app()), base_url="http://gateway") as client:
        assert (await client.get("/healthz")).status_code == 200
        api.drain()
        health = await client.get("/healthz")
        refused = await client.post("/v1/chat/completions", json={"model": "auto", "messages": []},
                                    headers={"authorization": "Bearer mot_anything"})
    assert health.status_code == 503 and health.json() == {"status": "draining"}
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert "shutting down" in error["message"] and "another one answers" in error["message"]
