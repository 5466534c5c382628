"""Router overhead: the same OpenAI-compatible endpoint called directly with LangChain's ChatOpenAI vs
through the router service (gRPC Complete → route → ChatOpenAI), at concurrency 1, 8 and 32, beside two
floors: a bare grpc.aio echo (any gRPC hop here) and a bare grpc.aio server whose handler only calls the
same ChatOpenAI (any gRPC front of that client); where the added time goes at concurrency 1, from the
router's own metrics; then the time a fallback costs when the first candidate fails.

First, the route classifier's calibration (in-process, a few seconds): the requests of ``evals/routes.yaml``
classified by the router's RouteTable with the routes of config/models.yaml and the memory service's default
model (multilingual-e5-small 4-bit, called directly): accuracy per language at classifier_min_score, a
trade-off over thresholds, and the same set with the other E5 prefix and with the former classifier (raw
cosine to the nearest example, as passages) for comparison.

The endpoint is the fault server (moteur.devstack.faults) in its own process, answering at once, so
that the figures are the router's own cost and not a model's. The paths run in alternating rounds
(echo, direct, bare front, routed, echo, …) so that a machine that slows down during the run slows all alike: the
differences are what matter. With ``BENCH_FLAMES``, py-spy flame graphs of the router and of the bare front at
the highest concurrency (the slices of the other paths leave both idle, which py-spy leaves out).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np
import openai
import yaml
from langchain_openai import ChatOpenAI
from prometheus_client.parser import text_string_to_metric_families

from bench.chat_path import _drive
from bench.echo_server import METHOD
from bench.flames import flame_graphs
from bench.stats import Figures
from moteur.devstack.processes import ManagedProcess, free_port, port_open
from moteur.memory.embeddings import E5Embeddings
from moteur.router.registry import ModelsConfig, load_models
from moteur.router.routes import EMBED_AS_QUERY, RouteQuery, RouteTable, instruction_of
from moteur.router.windowing import estimate_tokens
from moteur.runtime.identity import Identity
from moteur.runtime.mesh_tokens import GATEWAY_ISSUER, MeshTokenIssuer, write_key_pair
from moteur.v1 import common_pb2, router_pb2, router_pb2_grpc

CONCURRENCY = (1, 8, 32)
SECONDS_PER_POINT = float(os.environ.get("BENCH_SECONDS", "6"))
ROUNDS = 4  # each point is measured in ROUNDS alternating slices of SECONDS_PER_POINT / ROUNDS
PATHS = ("echo", "direct", "front", "router")
Latencies = tuple[list[float], float]
PAYLOAD = "What is the capital of France? Answer in one word."


ROOT = Path(__file__).resolve().parent.parent
ROUTES_EVAL = ROOT / "evals" / "routes.yaml"
MODELS_FILE = ROOT / "config" / "models.yaml"
THRESHOLDS = (0.0, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.40)
LANGUAGES = ("en", "fr", "all")
# (language, expected route, route chosen with no threshold, its score, default route, text)
Classified = tuple[str, str, str, float, str, str]


def _query(text: str) -> RouteQuery:
    return RouteQuery("", "standard", estimate_tokens(text), False, False, text)


def _classify(config: ModelsConfig, model: E5Embeddings, as_query: bool,
              items: list[dict[str, str]]) -> list[Classified]:
    """Each request through RouteTable with no floor: the route it would take and its score."""
    async def embed(texts: Sequence[str]) -> list[list[float]]:
        return model.embed_array(list(texts), as_query).tolist()

    async def run() -> list[Classified]:
        table = RouteTable(config.model_copy(update={"classifier_min_score": -1.0}), embed)
        out = []
        for item in items:
            query = _query(item["text"])
            default = table.for_type(query, "").name
            decision = await table.decide(query)
            expected = default if item["route"] == "none" else item["route"]
            out.append((item["lang"], expected, decision.route.name, decision.score, default, item["text"]))
        return out

    return asyncio.run(run())


def _nearest_example(config: ModelsConfig, model: E5Embeddings, items: list[dict[str, str]]) -> list[Classified]:
    """The former classifier: the raw cosine to the nearest example, of any route, all embedded as passages
    (the router's EmbedRequest left ``query`` unset)."""
    routes = [r for r in config.all_routes() if r.examples]
    names = [r.name for r in routes for _ in r.examples]
    examples = model.embed_array([e for r in routes for e in r.examples])
    asked = model.embed_array([instruction_of(i["text"]) for i in items])
    out = []
    for item, scores in zip(items, asked @ examples.T, strict=True):
        default = RouteTable(config).for_type(_query(item["text"]), "").name
        expected = default if item["route"] == "none" else item["route"]
        best = int(np.argmax(scores))
        out.append((item["lang"], expected, names[best], float(scores[best]), default, item["text"]))
    return out


def _accuracy(classified: list[Classified], threshold: float, language: str = "all") -> tuple[float, int]:
    subset = [c for c in classified if language in ("all", c[0])]
    right = sum((route if score >= threshold else default) == expected
                for _, expected, route, score, default, _ in subset)
    return right / len(subset), len(subset)


def _best(classified: list[Classified], thresholds: Sequence[float]) -> tuple[float, float]:
    accuracy, threshold = max((_accuracy(classified, t)[0], -t) for t in thresholds)
    return -threshold, accuracy


def classifier_calibration() -> dict[str, float]:
    """Prints the classifier's accuracy on evals/routes.yaml; returns it per language at the configured floor."""
    config, _ = load_models(MODELS_FILE)
    items = yaml.safe_load(ROUTES_EVAL.read_text())["items"]
    model = E5Embeddings()
    started = time.perf_counter()
    shipped = _classify(config, model, EMBED_AS_QUERY, items)
    floor = config.classifier_min_score
    prefix = "query" if EMBED_AS_QUERY else "passage"
    print(f"route classifier on {ROUTES_EVAL.name} ({len(items)} requests, {model.model_id}, \"{prefix}: \" prefix "
          f"for examples and requests, centred route centroids), classifier_min_score {floor} "
          f"({MODELS_FILE.parent.name}/{MODELS_FILE.name}):")
    figures = {}
    for language in LANGUAGES:
        accuracy, count = _accuracy(shipped, floor, language)
        figures[language] = accuracy
        per_route = []
        for label in ("summarize", "code", "chat", "none"):
            rows = [c for c, item in zip(shipped, items, strict=True)
                    if item["route"] == label and language in ("all", c[0])]
            right = sum((r if s >= floor else d) == e for _, e, r, s, d, _ in rows)
            per_route.append(f"{label} {right}/{len(rows)}")
        print(f"  {language:>3} ({count}): accuracy {accuracy:.2f}  ({', '.join(per_route)}; none: to the default)")
    for language, expected, route, score, default, text in shipped:
        taken = route if score >= floor else default
        if taken != expected:
            head = instruction_of(text)
            print(f"    missed [{language}] {head[:60]!r}: {taken} (nearest {route}, {score:.3f}), expected {expected}")
    print("  trade-off (classifier_min_score -> accuracy en / fr / all; specialised requests left to the default; "
          "others sent to a specialised route):")
    for threshold in THRESHOLDS:
        en, fr, both = (_accuracy(shipped, threshold, language)[0] for language in LANGUAGES)
        lost = sum(score < threshold and expected != default for _, expected, _, score, default, _ in shipped)
        strayed = sum(score >= threshold and expected == default != route
                      for _, expected, route, score, default, _ in shipped)
        mark = "  <- config" if abs(threshold - floor) < 1e-9 else ""
        print(f"    {threshold:4.2f} -> {en:.2f} / {fr:.2f} / {both:.2f}   {lost:>2} left, {strayed:>2} strayed{mark}")
    grid = [t / 100 for t in range(-10, 96)]
    other = _classify(config, model, not EMBED_AS_QUERY, items)
    print(f"  the same with \"{'passage' if EMBED_AS_QUERY else 'query'}: \" prefixes: at {floor} "
          f"{_accuracy(other, floor, 'en')[0]:.2f} / {_accuracy(other, floor, 'fr')[0]:.2f} / "
          f"{_accuracy(other, floor)[0]:.2f}; at its best threshold ({_best(other, grid)[0]:.2f}) "
          f"{_best(other, grid)[1]:.2f} overall (this prefix: best {_best(shipped, grid)[1]:.2f} at "
          f"{_best(shipped, grid)[0]:.2f})")
    former = _nearest_example(config, model, items)
    threshold, _ = _best(former, grid)
    print(f"  the former classifier (raw cosine to the nearest example, \"passage: \"): at its best threshold "
          f"({threshold:.2f}) {_accuracy(former, threshold, 'en')[0]:.2f} / {_accuracy(former, threshold, 'fr')[0]:.2f}"
          f" / {_accuracy(former, threshold)[0]:.2f}; at 0.3, the former floor, "
          f"{_accuracy(former, 0.3, 'en')[0]:.2f} / {_accuracy(former, 0.3, 'fr')[0]:.2f}")
    print(f"  ({time.perf_counter() - started:.1f} s)")
    return figures


def _registry(base_url: str) -> dict[str, object]:
    endpoint = {"provider": "openai", "base_url": base_url, "max_concurrency": 256, "timeout_seconds": 10}
    return {
        "models": [
            {"name": "direct", "model": "ok", **endpoint},
            {"name": "failing", "model": "status:500", **endpoint},
            {"name": "unreachable", "model": "ok", **endpoint, "base_url": f"http://127.0.0.1:{free_port()}/v1"},
        ],
        "routes": [
            {"name": "chat", "request_types": ["chat"], "candidates": ["direct"]},
            {"name": "after-500", "request_types": ["summarize"], "candidates": ["failing", "direct"]},
            {"name": "after-refused", "request_types": ["extract"], "candidates": ["unreachable", "direct"]},
            {"name": "default", "candidates": ["direct"]},
        ],
        "retry": {"attempts": 1},  # fallback time alone; retries add their backoff on top
        "breaker": {"failure_threshold": 1_000_000, "open_seconds": 30},  # never open, unless the phase wants it
    }


async def _bare(address: str, concurrency: int, seconds: float, payload: bytes) -> Latencies:
    """Calls to bench.echo_server: an echo, or (run with an endpoint) ChatOpenAI behind a bare gRPC server."""
    async with grpc.aio.insecure_channel(address) as channel:
        bare = channel.unary_unary(METHOD)

        async def call(_: int) -> None:
            await bare(payload, timeout=10)

        await _drive(call, concurrency, 0.3)
        return await _drive(call, concurrency, seconds)


async def _direct(base_url: str, concurrency: int, seconds: float) -> Latencies:
    # A client of this event loop: LangChain's shared default one would outlive it (each slice has its own).
    async with openai.DefaultAsyncHttpxClient() as http:
        chat = ChatOpenAI(model="ok", base_url=base_url, api_key="not-needed", max_retries=0, timeout=10,
                          http_async_client=http)

        async def call(_: int) -> None:
            await chat.ainvoke(PAYLOAD)

        await _drive(call, concurrency, 0.3)
        return await _drive(call, concurrency, seconds)


# The metadata of the benchmark's caller, signed once the router's keys exist (in main).
_CALLER: list[list[tuple[str, str]]] = []


def _request(request_type: int) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(
        messages=[router_pb2.PromptMessage(role=common_pb2.ROLE_USER, content=PAYLOAD)], request_type=request_type
    )


async def _routed(address: str, concurrency: int, seconds: float,
                  request_type: int = common_pb2.REQUEST_TYPE_CHAT) -> Latencies:
    metadata = _CALLER[0]
    request = _request(request_type)
    async with grpc.aio.insecure_channel(address) as channel:
        router = router_pb2_grpc.RouterStub(channel)

        async def call(_: int) -> None:
            await router.Complete(request, metadata=metadata, timeout=10)

        await _drive(call, concurrency, 0.3)
        return await _drive(call, concurrency, seconds)


def _interleaved(addresses: dict[str, str], concurrency: int) -> dict[str, Figures]:
    """One point, each path in ROUNDS alternating slices; a path's figures pool its slices."""
    echoed = _request(common_pb2.REQUEST_TYPE_CHAT).SerializeToString()
    measure = {"echo": lambda a, c, s: _bare(a, c, s, echoed), "direct": _direct,
               "front": lambda a, c, s: _bare(a, c, s, PAYLOAD.encode()), "router": _routed}
    pooled: dict[str, tuple[list[float], float]] = {path: ([], 0.0) for path in PATHS}
    for _ in range(ROUNDS):
        for path in PATHS:
            latencies, elapsed = asyncio.run(measure[path](addresses[path], concurrency, SECONDS_PER_POINT / ROUNDS))
            pooled[path] = (pooled[path][0] + latencies, pooled[path][1] + elapsed)
    return {path: Figures.of(path, concurrency, *pooled[path]) for path in PATHS}


def _router_seconds(metrics_port: int) -> dict[str, tuple[float, float]]:
    """(sum of seconds, count) of the router's Complete handler and of its model calls, so far."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    totals: dict[str, list[float]] = {"handler": [0.0, 0.0], "model": [0.0, 0.0]}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            which = ("handler" if family.name == "moteur_rpc_duration_seconds"
                     and sample.labels.get("method") == "Complete" else
                     "model" if family.name == "moteur_model_call_duration_seconds" else None)
            if which and sample.name.endswith(("_sum", "_count")):
                totals[which][sample.name.endswith("_count")] += sample.value
    return {k: (v[0], v[1]) for k, v in totals.items()}


def _fallbacks(address: str) -> dict[str, Figures]:
    cases = {"first candidate answers HTTP 500": common_pb2.REQUEST_TYPE_SUMMARIZE,
             "first candidate refuses connections": common_pb2.REQUEST_TYPE_EXTRACT}
    figures = {}
    for name, request_type in cases.items():
        figures[name] = Figures.of(name, 1, *asyncio.run(_routed(address, 1, SECONDS_PER_POINT / 2, request_type)))
    return figures


def main() -> dict[str, list[Figures]]:
    classifier_calibration()
    fault_port, router_port, metrics_port, echo_port, front_port = (free_port() for _ in range(5))
    faults = subprocess.Popen([sys.executable, "-m", "moteur.devstack.faults", str(fault_port)], stdout=subprocess.PIPE)
    base_url = f"http://127.0.0.1:{fault_port}/v1"
    floors = [subprocess.Popen([sys.executable, "-m", "bench.echo_server", *args], stdout=subprocess.PIPE)
              for args in ([str(echo_port)], [str(front_port), base_url])]
    addresses = {"echo": f"127.0.0.1:{echo_port}", "direct": base_url, "front": f"127.0.0.1:{front_port}",
                 "router": f"127.0.0.1:{router_port}"}
    points: list[dict[str, Figures]] = []
    with tempfile.TemporaryDirectory(prefix="moteur-bench-router-") as data_dir:
        models_file = Path(data_dir) / "models.yaml"
        models_file.write_text(yaml.safe_dump(_registry(base_url)))
        keys = Path(data_dir) / "mesh-keys"  # the router checks the gateway's tokens and signs its own
        signing_key = write_key_pair(keys, GATEWAY_ISSUER)
        _CALLER[:] = [MeshTokenIssuer.from_pem_file(GATEWAY_ISSUER, signing_key, 3600).sign(
            Identity("bench", "bench-user", "standard"), seconds=3600).as_metadata()]
        env = {**os.environ, "MOTEUR_GRPC_PORT": str(router_port), "MOTEUR_METRICS_PORT": str(metrics_port),
               "MOTEUR_LISTEN_HOST": "127.0.0.1", "MOTEUR_MODELS_FILE": str(models_file), "MOTEUR_LOG_LEVEL": "ERROR",
               "MOTEUR_MEMORY_ADDR": f"127.0.0.1:{free_port()}", "MOTEUR_MESH_KEYS_DIR": str(keys / "public"),
               "MOTEUR_MESH_SIGNING_KEY_FILE": str(write_key_pair(keys, "router"))}
        router = ManagedProcess("router", [sys.executable, "-m", "moteur.router"], Path(data_dir) / "router.log",
                                env=env, ready=lambda: port_open(router_port))
        try:
            assert faults.stdout is not None and faults.stdout.readline().startswith(b"ready")
            assert all(f.stdout is not None and f.stdout.readline().strip() == b"ready" for f in floors)
            router.start()
            assert router.pid is not None
            flamed = {"router": router.pid, "front": floors[1].pid}
            for concurrency in CONCURRENCY:
                before = _router_seconds(metrics_port)
                with flame_graphs("router", flamed if concurrency == max(CONCURRENCY) else {}):
                    points.append(_interleaved(addresses, concurrency))
                if concurrency == 1:
                    after = _router_seconds(metrics_port)
                    inside = {k: (after[k][0] - before[k][0]) / (after[k][1] - before[k][1]) * 1000 for k in after}
            fallbacks = _fallbacks(addresses["router"])
        finally:
            router.stop()
            for process in (faults, *floors):
                process.terminate()
                process.wait()
    print("router overhead: ChatOpenAI → endpoint directly vs gRPC → router → ChatOpenAI → the same endpoint;")
    print("floors: a bare grpc.aio echo, and a bare grpc.aio server whose handler only calls the same ChatOpenAI")
    print(f"{'concurrency':>11} | {'echo p50':>8} | {'direct p50':>10} {'p99':>8} {'rps':>6} | {'bare front':>10} | "
          f"{'router p50':>10} {'p99':>8} {'rps':>6} | {'+p50 ms':>8} {'+p99 ms':>8} | {'vs front':>8}")
    for point in points:
        e, d, f, r = (point[path] for path in PATHS)
        print(f"{d.concurrency:>11} | {e.p50_ms:>8.3f} | {d.p50_ms:>10.3f} {d.p99_ms:>8.3f} {d.throughput:>6.0f} | "
              f"{f.p50_ms:>10.3f} | {r.p50_ms:>10.3f} {r.p99_ms:>8.3f} {r.throughput:>6.0f} | "
              f"{r.p50_ms - d.p50_ms:>8.3f} {r.p99_ms - d.p99_ms:>8.3f} | {r.p50_ms - f.p50_ms:>8.3f}")
    print("+p50/+p99: the router over the direct call; vs front: the router over the bare gRPC front (its own cost)")
    one = points[0]
    handler, model = inside["handler"], inside["model"]
    print("where the added time goes at concurrency 1 (means; the router's side from its own metrics):")
    print(f"  direct call {one['direct'].mean_ms:.3f} ms, routed call {one['router'].mean_ms:.3f} ms, of which:")
    print(f"  the gRPC hop (routed call minus the router's handler): {one['router'].mean_ms - handler:.3f} ms "
          f"(a bare grpc.aio echo: {one['echo'].mean_ms:.3f} ms)")
    print(f"  the router's own work (its handler minus its model call): {handler - model:.3f} ms")
    print(f"  the model call inside the router: {model:.3f} ms ({model - one['direct'].mean_ms:+.3f} ms against "
          "the same call direct)")
    base = one["router"]
    print("time to fall back (concurrency 1, one attempt per candidate), added to a routed call that succeeds first:")
    for name, figures in fallbacks.items():
        print(f"  {name:<40} p50 {figures.p50_ms:7.3f} ms (+{figures.p50_ms - base.p50_ms:.3f})  "
              f"p99 {figures.p99_ms:7.3f} ms")
    return {"ChatOpenAI → endpoint": [p["direct"] for p in points],
            "gRPC → router → endpoint": [p["router"] for p in points]}


if __name__ == "__main__":
    started = time.perf_counter()
    main()
