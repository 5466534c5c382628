"""A real Prometheus scrapes every service of a local mesh (instant model, no model server) while a short
scripted load runs through the gateway; then every query of every dashboard returns data, and the chart's
rules load and evaluate. Series that only exist after rare events are listed in EXPECTED_EMPTY, with why."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from bench.keys import GENEROUS, bench_key
from moteur.client import AsyncMoteurClient, MoteurClientError
from moteur.devstack.processes import free_port
from moteur.devstack.stack import SERVICES, LocalStack, StackOptions
from moteur.v1 import memory_pb2, memory_pb2_grpc
from tests.observability.conftest import DASHBOARDS, binary
from tests.observability.prometheus import Prometheus

NOTES_SERVER = [sys.executable, str(Path(__file__).parents[1] / "mcp_notes_server.py")]
TOOLS_CONFIG: dict[str, object] = {
    "defaults": {"allow": ["calculator", "datetime_now"]},
    "tenants": {"obs": {"allow": ["*"], "mcp_servers": [
        {"name": "notes", "transport": "stdio", "command": NOTES_SERVER, "timeout_ms": 10_000},
        {"name": "broken", "transport": "stdio", "command": [sys.executable, "-c", "raise SystemExit(3)"]},
    ]}},
}
# Grafana's variables, as Grafana would substitute them for a short range. The namespace variable's All is `.*`,
# which matches series without a namespace label too, as this Prometheus scrapes them (no Kubernetes).
VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "${datasource}": "prometheus", "$namespace": ".*"}

# Queries that stay empty after the scripted load, because their series need events too slow or too
# disruptive for it; the fault suite (tests/reliability) causes them.
EXPECTED_EMPTY = {
    # The queue sheds or expires turns only when the models are saturated for longer than a turn's deadline.
    'sum by (level, reason) (rate(moteur_queue_shed_total{namespace=~".*"}[1m]))': "queue overload",
    'sum by (level) (rate(moteur_queue_expired_total{namespace=~".*"}[1m]))': "queue overload",
    # Admissions made while Redis is down: needs Redis killed.
    'sum by (policy) (rate(moteur_limiter_redis_unavailable_total{namespace=~".*"}[1m]))': "Redis down",
    # A tool call that runs past its timeout takes the tool's whole timeout (seconds) to produce.
    'sum by (tool) (rate(moteur_tool_calls_total{namespace=~".*",outcome="timeout"}[1m]))': "a tool timing out",
    # A level's depth gauge appears when a turn first waits; the instant model's 64 slots never make one wait.
    # PutTemplate needs an admin key; the benchmark keys of this load are service keys, refused by the gateway.
    'sum by (outcome) (increase(moteur_files_template_uploads_total{namespace=~".*"}[1h]))':
        "an admin uploading a template",
}


def dashboard_queries() -> Iterator[tuple[str, str, str]]:
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for variable, value in VARIABLES.items():
                    expr = expr.replace(variable, value)
                expr = expr.replace("[5m]", "[1m]")  # the same query over the short history of this test
                yield path.stem, panel["title"], expr


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    options = StackOptions(data_dir=tmp_path_factory.mktemp("observed-stack"), model_server=False,
                           fact_extractor="rules", tools_config=TOOLS_CONFIG,
                           service_env={"MOTEUR_LOG_LEVEL": "WARNING"})
    with LocalStack(options) as stack:
        yield stack


@pytest.fixture(scope="module")
def prometheus(mesh: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    from tests.observability.conftest import chart_rule_groups

    workdir = tmp_path_factory.mktemp("prometheus")
    rules = workdir / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": chart_rule_groups()}, sort_keys=False))
    targets = {service: mesh.ports[f"{service}-metrics"] for service in SERVICES}
    server = Prometheus(binary("prometheus"), workdir, free_port(), targets, rules)
    try:
        server.wait_ready()
        server.wait_up(len(targets))
        yield server
    finally:
        server.stop()


def _with_flaky_route(stack: LocalStack) -> None:
    """A route whose first model cannot be reached: its calls fail, fall back to instant, and trip the breaker."""
    config = stack.models_config()
    dead = {"name": "unreachable", "provider": "openai", "model": "none", "timeout_seconds": 2,
            "base_url": f"http://127.0.0.1:{free_port()}/v1", "input_price_per_1k_usd": 0.001}
    config["models"] = [*config["models"], dead]
    flaky = {"name": "flaky", "request_types": ["code"], "candidates": ["unreachable", "instant"]}
    config["routes"] = [flaky, *config["routes"]]
    stack.models_file.write_text(yaml.safe_dump(config, sort_keys=False))


async def _until(check: object, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.3)
    raise TimeoutError(f"{check} still false after {seconds} s")


async def _scripted_load(stack: LocalStack) -> None:
    key = await bench_key(stack, "obs", "olga", memory=True, cache=True)
    # A daily quota of 150 tokens: a few short turns cross its 80 % threshold (quota alerts), then it refuses.
    small_quota = GENEROUS.model_copy(update={"tokens_per_day": 150})
    quota_key = await bench_key(stack, "obs-quota", "quentin", limits=small_quota)
    async with AsyncMoteurClient(stack.address("gateway"), key) as client:
        await client.upsert_document("The lighthouse of Ouessant is called Créac'h.", title="lighthouses")
        for message in ("Hello!", "My name is Olga and I live in Lyon.", "Which lighthouse is in Ouessant?"):
            await client.chat(message, model_hint="instant", timeout=30)
        await client.chat('Add.\n/tool calculator {"expression": "1+1"}', model_hint="instant", timeout=30)
        await client.chat('Fail.\n/tool calculator {"expression": "1/"}', model_hint="instant", timeout=30)
        table = "Cities:\n\n| city | people |\n|---|---|\n| Lyon | 522000 |\n| Nantes | 320000 |"
        reply = await client.chat(table, model_hint="instant", output_format="csv", timeout=30)
        async for _ in client.get_file(reply.message.file.file_id):
            pass
        async for _ in client.chat_stream("Stream this.", model_hint="instant", timeout=30):
            pass
        await client.search_memories("lighthouse")

        async def answered_from_cache() -> bool:  # the response cache: a miss kept, then a hit
            return (await client.chat("What is the capital of France?", model_hint="instant", timeout=30)).cached

        await _until(answered_from_cache)
        # The OpenAI-compatible HTTP API: a completion and the models.
        async with httpx.AsyncClient(base_url=stack.http_url, headers={"authorization": f"Bearer {key}"}) as http:
            completion = await http.post("/chat/completions", json={
                "model": "instant", "messages": [{"role": "user", "content": "Over HTTP."}]}, timeout=30)
            completion.raise_for_status()
            (await http.get("/models", timeout=30)).raise_for_status()
        with pytest.raises(MoteurClientError):
            await client.get_session("no-such-session")  # a caller's error: NOT_FOUND in the RPC metrics
        try:
            await client.put_template("obs", "<h1>{{ title }}</h1>", ["html"])
        except MoteurClientError:
            pass  # a refusal is counted too
        # Fallbacks, retries and an open breaker: the router reloads its registry with a flaky route.
        _with_flaky_route(stack)

        async def reloaded() -> bool:
            return any(m.name == "unreachable" for m in (await client.list_models()).models)

        await _until(reloaded)
        await asyncio.gather(*(client.chat("Flaky?", request_type="code", timeout=30) for _ in range(6)))
        # A caller inside the cluster without the gateway's token: refused, and counted per service and reason.
        async with grpc.aio.insecure_channel(stack.address("memory")) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await memory_pb2_grpc.MemoryStub(channel).Search(memory_pb2.SearchRequest(text="x"), timeout=5)
        # The tools service reloads a changed policy.
        stack.write_tools_file({**TOOLS_CONFIG, "defaults": {"allow": ["calculator"]}})
    async with AsyncMoteurClient(stack.address("gateway"), quota_key) as client:
        for _ in range(10):
            try:
                await client.chat("Use up the small daily quota, please.", model_hint="instant", max_output_tokens=16,
                                  timeout=30)
            except MoteurClientError:
                break


async def test_every_dashboard_query_returns_data_after_a_scripted_load(
    mesh: LocalStack, prometheus: Prometheus
) -> None:
    await _scripted_load(mesh)
    await asyncio.sleep(4)  # a few scrapes after the last event, so rates have two samples

    targets = prometheus.targets()
    assert {t["labels"]["service_name"] for t in targets if t["health"] == "up"} == set(SERVICES), [
        (t["labels"]["service_name"], t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]

    empty, unexpected = [], []
    for dashboard, title, expr in dashboard_queries():
        if prometheus.query(expr):
            if expr in EXPECTED_EMPTY:
                unexpected.append((dashboard, title, expr))
        elif expr not in EXPECTED_EMPTY:
            empty.append((dashboard, title, expr))
    assert empty == [], "dashboard queries without data:\n" + "\n".join(map(str, empty))
    assert unexpected == [], "queries listed in EXPECTED_EMPTY now return data: take them off the list"


def test_the_chart_rules_load_and_evaluate_in_prometheus(prometheus: Prometheus) -> None:
    groups = prometheus.rules()
    assert {g["name"] for g in groups} >= {"moteur.rpc", "moteur.slo", "moteur.queue", "moteur.models"}
    failing = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r.get("health") == "err"]
    assert failing == []

