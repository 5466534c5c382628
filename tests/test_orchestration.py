"""Retries, fallbacks, breakers, load balancing, streaming fallback and accounting, over real HTTP against
the fault-injecting OpenAI-compatible server (each model id is a behaviour, see moteur.devstack.faults)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from moteur.devstack.faults import ANSWER, FaultServer
from moteur.router.deployments import CircuitBreaker
from moteur.router.orchestrator import CompletionRequest, ModelRouter, RoutedCompletion
from moteur.router.providers import ModelCallError, Turn
from moteur.router.registry import BreakerPolicy, ModelsConfig
from moteur.router.routes import RouteQuery, RouteTable, instruction_of
from moteur.runtime.context import deadline_var
from moteur.runtime.errors import DeadlineExceeded, InvalidArgument, PermissionDenied, Unavailable

# Not a unit test (`make test-unit`): a real HTTP fault server and real timeouts of about a second each: about 11 s.
pytestmark = pytest.mark.slow

HELLO = [Turn("user", "hello")]


@pytest.fixture
async def faults() -> AsyncIterator[FaultServer]:
    async with FaultServer() as server:
        yield server


def router(faults: FaultServer, models: list[dict[str, Any]], routes: list[dict[str, Any]] | None = None,
           **extra: Any) -> ModelRouter:
    deployments = [{"provider": "openai", "base_url": faults.base_url, "timeout_seconds": 5, **m} for m in models]
    routes = routes or [{"name": "chat", "candidates": [deployments[0]["name"]]}]
    return ModelRouter(ModelsConfig.model_validate({"models": deployments, "routes": routes, **extra}))


def chain(*names: str) -> list[dict[str, Any]]:
    return [{"name": "chat", "candidates": list(names)}]


def anthropic(faults: FaultServer) -> dict[str, Any]:
    """What makes a deployment speak Anthropic's Messages API to the fault server."""
    return {"provider": "anthropic", "base_url": faults.base_url.removesuffix("/v1")}


async def streamed(routed: ModelRouter, request: CompletionRequest) -> tuple[list[str], RoutedCompletion]:
    *deltas, final = [item async for item in routed.stream(request)]
    assert isinstance(final, RoutedCompletion) and all(isinstance(d, str) for d in deltas)
    return deltas, final


async def broken_off(routed: ModelRouter, request: CompletionRequest,
                     pause: float = 0) -> tuple[list[str], ModelCallError]:
    """The deltas a stream gave before it ended with an error, and the error (a caller may read slowly)."""
    received: list[str] = []
    with pytest.raises(ModelCallError) as ended:
        async for item in routed.stream(request):
            received.append(item)
            await asyncio.sleep(pause)
    return received, ended.value


async def test_a_transient_failure_is_retried_on_the_same_deployment(faults: FaultServer) -> None:
    result = await router(faults, [{"name": "a", "model": "flaky:1"}]).complete(CompletionRequest(HELLO))
    assert result.completion.text == ANSWER
    assert result.attempts == ["a:server_error", "a:ok"] and faults.calls["flaky:1"] == 2


async def test_a_deployment_that_keeps_failing_falls_back_to_the_next_candidate(faults: FaultServer) -> None:
    models = [{"name": "broken", "model": "status:500"}, {"name": "good", "model": "ok"}]
    result = await router(faults, models, chain("broken", "good")).complete(CompletionRequest(HELLO))
    assert result.deployment.name == "good"
    assert result.attempts == ["broken:server_error", "broken:server_error", "good:ok"]


@pytest.mark.parametrize(("model", "outcome"), [
    ("status:429", "rate_limited"), ("malformed", "malformed"), ("empty", "empty"),
    ("status:400-context", "context_length"),
])
async def test_failures_another_model_may_not_share_fall_back_without_retrying(
    faults: FaultServer, model: str, outcome: str
) -> None:
    # second has the larger context: a context-length refusal passes over models no larger than the refuser
    models = [{"name": "first", "model": model}, {"name": "second", "model": "ok", "context_window": 4096}]
    result = await router(faults, models, chain("first", "second")).complete(CompletionRequest(HELLO))
    assert result.attempts == [f"first:{outcome}", "second:ok"] and faults.calls[model] == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_a_context_length_refusal_falls_back_to_a_larger_context_model(faults: FaultServer, stream: bool) -> None:
    models = [{"name": "small", "model": "status:400-context", "context_window": 2048},
              {"name": "same", "model": "ok:same", "context_window": 2048},
              {"name": "large", "model": "ok:large", "context_window": 8192}]
    routed = router(faults, models, chain("small", "same", "large"))
    if stream:
        _, result = await streamed(routed, CompletionRequest(HELLO))
    else:
        result = await routed.complete(CompletionRequest(HELLO))
    assert result.deployment.name == "large" and faults.calls["ok:same"] == 0
    assert result.attempts == ["small:context_length", "same:context_too_small", "large:ok"]


async def test_a_deployment_timeout_falls_back_and_the_callers_deadline_is_kept(faults: FaultServer) -> None:
    models = [{"name": "slow", "model": "hang", "timeout_seconds": 0.3}, {"name": "good", "model": "ok"}]
    result = await router(faults, models, chain("slow", "good")).complete(CompletionRequest(HELLO))
    assert result.attempts == ["slow:timeout", "good:ok"]

    only_slow = router(faults, [{"name": "slow", "model": "hang", "timeout_seconds": 30}])
    token = deadline_var.set(time.monotonic() + 0.4)
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="before the deadline"):
            await only_slow.complete(CompletionRequest(HELLO))
        assert time.monotonic() - started < 1.5
    finally:
        deadline_var.reset(token)


async def test_a_refused_request_is_the_callers_and_is_not_retried_elsewhere(faults: FaultServer) -> None:
    models = [{"name": "strict", "model": "status:422"}, {"name": "good", "model": "ok"}]
    with pytest.raises(ModelCallError) as refused:
        await router(faults, models, chain("strict", "good")).complete(CompletionRequest(HELLO))
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT and "HTTP 422" in refused.value.message
    assert faults.calls["ok"] == 0


async def test_when_every_candidate_fails_the_answer_lists_the_attempts(faults: FaultServer) -> None:
    models = [{"name": "a", "model": "status:503"}, {"name": "b", "model": "malformed"}]
    with pytest.raises(Unavailable, match=r"tried a:server_error, a:server_error, b:malformed") as failed:
        await router(faults, models, chain("a", "b")).complete(CompletionRequest(HELLO))
    assert failed.value.retry_after_seconds is not None


async def test_the_breaker_opens_skips_the_deployment_and_lets_one_probe_through(faults: FaultServer) -> None:
    models = [{"name": "down", "model": "status:500"}, {"name": "good", "model": "ok"}]
    routed = router(faults, models, chain("down", "good"), retry={"attempts": 1},
                    breaker={"failure_threshold": 2, "open_seconds": 0.3})
    for _ in range(2):
        await routed.complete(CompletionRequest(HELLO))
    assert routed.fleet["down"].breaker.state == "open"
    skipped = await routed.complete(CompletionRequest(HELLO))
    assert skipped.attempts == ["down:breaker_open", "good:ok"] and faults.calls["status:500"] == 2

    await asyncio.sleep(0.35)  # half-open: one probe goes to the deployment, fails, and the breaker reopens
    probe = await routed.complete(CompletionRequest(HELLO))
    assert probe.attempts == ["down:server_error", "good:ok"] and routed.fleet["down"].breaker.state == "open"


def _breaker_gauge(model: str) -> float | None:
    return REGISTRY.get_sample_value("moteur_model_breaker_state", {"model": model})


async def test_a_probe_that_succeeds_closes_the_breaker(faults: FaultServer) -> None:
    models = [{"name": "recovering", "model": "flaky:2"}, {"name": "spare", "model": "ok"}]
    routed = router(faults, models, chain("recovering", "spare"), retry={"attempts": 1},
                    breaker={"failure_threshold": 2, "open_seconds": 0.3})
    for _ in range(2):
        assert (await routed.complete(CompletionRequest(HELLO))).attempts == ["recovering:server_error", "spare:ok"]
    assert routed.fleet["recovering"].breaker.state == "open" and _breaker_gauge("recovering") == 2
    await asyncio.sleep(0.35)
    assert (await routed.complete(CompletionRequest(HELLO))).attempts == ["recovering:ok"]
    assert routed.fleet["recovering"].breaker.state == "closed" and _breaker_gauge("recovering") == 0


def test_the_breaker_gauge_shows_half_open_while_the_probe_is_out() -> None:
    breaker = CircuitBreaker("gauge-probe", BreakerPolicy(failure_threshold=1, open_seconds=0.01))
    breaker.failure()
    assert _breaker_gauge("gauge-probe") == 2
    time.sleep(0.02)
    assert breaker.try_acquire() and not breaker.try_acquire()  # one probe only
    assert _breaker_gauge("gauge-probe") == 1
    breaker.failure()
    assert _breaker_gauge("gauge-probe") == 2


async def test_an_open_breaker_on_every_candidate_answers_unavailable_with_when_to_retry(faults: FaultServer) -> None:
    routed = router(faults, [{"name": "down", "model": "status:500"}], retry={"attempts": 1},
                    breaker={"failure_threshold": 1, "open_seconds": 20})
    with pytest.raises(Unavailable):
        await routed.complete(CompletionRequest(HELLO))
    with pytest.raises(Unavailable, match="down:breaker_open") as refused:
        await routed.complete(CompletionRequest(HELLO))
    assert 19 < refused.value.retry_after_seconds <= 20


async def test_load_is_balanced_across_the_deployments_of_a_group(faults: FaultServer) -> None:
    models = [{"name": f"replica-{i}", "group": "pool", "model": "slow:150", "max_concurrency": 4}
              for i in range(2)]
    routed = router(faults, models, chain("pool"))
    results = await asyncio.gather(*(routed.complete(CompletionRequest(HELLO)) for _ in range(6)))
    served = {name: sum(r.deployment.name == name for r in results) for name in ("replica-0", "replica-1")}
    assert served == {"replica-0": 3, "replica-1": 3}  # least in flight first


async def test_a_deployments_concurrency_limit_holds_and_overflow_goes_to_the_next_candidate(
    faults: FaultServer,
) -> None:
    models = [{"name": "narrow", "model": "slow:300", "max_concurrency": 1}, {"name": "wide", "model": "ok"}]
    routed = router(faults, models, chain("narrow", "wide"))
    results = await asyncio.gather(*(routed.complete(CompletionRequest(HELLO)) for _ in range(3)))
    assert faults.calls["slow:300"] == 1
    assert sorted(r.attempts for r in results) == [["narrow:busy", "wide:ok"]] * 2 + [["narrow:ok"]]


async def test_the_last_candidate_waits_for_a_free_slot_within_the_deadline(faults: FaultServer) -> None:
    routed = router(faults, [{"name": "narrow", "model": "slow:200", "max_concurrency": 1}])
    started = time.monotonic()
    results = await asyncio.gather(*(routed.complete(CompletionRequest(HELLO)) for _ in range(3)))
    assert all(r.attempts == ["narrow:ok"] for r in results) and time.monotonic() - started >= 0.6


async def test_a_stream_failing_before_its_first_token_falls_back_transparently(faults: FaultServer) -> None:
    models = [{"name": "down", "model": "status:502"}, {"name": "good", "model": "slow:200"}]
    deltas, final = await streamed(router(faults, models, chain("down", "good")), CompletionRequest(HELLO))
    assert "".join(deltas) == ANSWER and final.deployment.name == "good"
    assert final.attempts == ["down:server_error", "down:server_error", "good:ok"]
    # The wait for the first token is the caller's (fallback included), and the tokens after it take time.
    assert 200 <= final.time_to_first_token_ms < final.latency_ms


async def test_a_stream_slow_to_its_first_token_falls_back_within_the_deployments_timeout(
    faults: FaultServer,
) -> None:
    # The deployment's timeout bounds the wait for the first token, though the HTTP answer has begun.
    models = [{"name": "slow", "model": "slow:3000", "timeout_seconds": 0.3}, {"name": "good", "model": "ok"}]
    started = time.monotonic()
    deltas, final = await streamed(router(faults, models, chain("slow", "good")), CompletionRequest(HELLO))
    assert "".join(deltas) == ANSWER and final.attempts == ["slow:timeout", "good:ok"]
    assert time.monotonic() - started < 1.5


async def test_a_stream_cut_after_its_first_token_ends_with_a_clear_status(faults: FaultServer) -> None:
    models = [{"name": "cut", "model": "cut:2"}, {"name": "good", "model": "ok"}]
    received, cut = await broken_off(router(faults, models, chain("cut", "good")), CompletionRequest(HELLO))
    assert len(received) == 2 and cut.code is grpc.StatusCode.UNAVAILABLE
    assert "after the answer had begun" in cut.message
    assert faults.calls["ok"] == 0  # no silent switch to another model mid-answer


def _calls(model: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("moteur_model_calls_total", {"model": model, "outcome": outcome}) or 0


async def test_a_deployment_timeout_after_the_first_token_ends_the_stream_with_a_clear_status(
    faults: FaultServer,
) -> None:
    models = [{"name": "stalls", "model": "stall:2", "timeout_seconds": 0.5}, {"name": "good", "model": "ok"}]
    before = _calls("stalls", "timeout")
    received, stalled = await broken_off(router(faults, models, chain("stalls", "good")), CompletionRequest(HELLO))
    assert len(received) == 2 and stalled.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "within its 0.5 s timeout after the answer had begun" in stalled.message
    assert _calls("stalls", "timeout") == before + 1 and faults.calls["ok"] == 0


async def test_the_timeout_ends_the_model_call_not_a_caller_reading_slowly(faults: FaultServer) -> None:
    # The limit passes while the caller holds the stream between tokens: it must strike inside the router
    # (a clear status), never the caller's own await.
    routed = router(faults, [{"name": "stalls", "model": "stall:2", "timeout_seconds": 1.0}])
    received, stalled = await broken_off(routed, CompletionRequest(HELLO), pause=0.6)
    assert len(received) == 2 and stalled.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "after the answer had begun" in stalled.message


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_garbled_stream_falls_back_before_its_first_token_and_ends_with_a_clear_status_after(
    faults: FaultServer, provider: str
) -> None:
    dialect = anthropic(faults) if provider == "anthropic" else {}
    models = [{"name": "garbled", "model": "garbled:0", **dialect}, {"name": "late", "model": "garbled:2", **dialect},
              {"name": "good", "model": "ok", **dialect}]
    deltas, final = await streamed(router(faults, models, chain("garbled", "good")), CompletionRequest(HELLO))
    assert "".join(deltas) == ANSWER and final.attempts == ["garbled:malformed", "good:ok"]
    received, garbled = await broken_off(router(faults, models, chain("late", "good")), CompletionRequest(HELLO))
    assert len(received) == 2 and garbled.code is grpc.StatusCode.UNAVAILABLE and garbled.outcome == "malformed"
    assert "after the answer had begun" in garbled.message and faults.calls["ok"] == 1


async def test_anthropic_deployments_answer_and_fall_back_like_the_others(faults: FaultServer) -> None:
    anthropic = {"provider": "anthropic", "base_url": faults.base_url.removesuffix("/v1")}
    models = [{"name": "claude-down", "model": "status:529", **anthropic},
              {"name": "claude", "model": "ok", **anthropic, "input_price_per_1k_usd": 1.0}]
    result = await router(faults, models, chain("claude-down", "claude")).complete(CompletionRequest(HELLO))
    assert result.completion.text == ANSWER and result.completion.finish_reason == "stop"
    assert result.attempts == ["claude-down:server_error", "claude-down:server_error", "claude:ok"]
    assert result.input_tokens == 12 and result.cost_micro_usd == 12 * 1000


async def test_anthropic_deployments_stream_token_by_token_with_their_usage_accounted(faults: FaultServer) -> None:
    models = [{"name": "claude-down", "model": "status:529", **anthropic(faults)},
              {"name": "claude", "model": "ok", **anthropic(faults),
               "input_price_per_1k_usd": 1.0, "output_price_per_1k_usd": 2.0}]
    deltas, final = await streamed(router(faults, models, chain("claude-down", "claude")), CompletionRequest(HELLO))
    words = len(ANSWER.split())
    assert "".join(deltas) == ANSWER and len(deltas) == words and faults.requests["ok"][-1]["stream"] is True
    assert final.completion.text == ANSWER and final.completion.finish_reason == "stop"
    assert final.attempts == ["claude-down:server_error", "claude-down:server_error", "claude:ok"]
    assert (final.input_tokens, final.output_tokens) == (12, words)  # as the provider reported them
    assert final.cost_micro_usd == 12 * 1000 + words * 2000


async def test_usage_comes_from_the_provider_or_is_counted_and_priced(faults: FaultServer) -> None:
    models = [{"name": "reports", "model": "ok", "input_price_per_1k_usd": 1.0, "output_price_per_1k_usd": 2.0},
              {"name": "silent", "model": "nousage"}]
    reported = await router(faults, models, chain("reports")).complete(CompletionRequest(HELLO))
    assert (reported.input_tokens, reported.output_tokens) == (12, len(ANSWER.split()))
    assert reported.cost_micro_usd == 12 * 1000 + len(ANSWER.split()) * 2000
    counted = await router(faults, models, chain("silent")).complete(CompletionRequest(HELLO))
    assert counted.output_tokens == (len(ANSWER) + 3) // 4 and counted.input_tokens > 0


async def test_a_request_larger_than_every_candidate_is_refused_with_the_sizes(faults: FaultServer) -> None:
    models = [{"name": "small", "model": "ok", "context_window": 512, "max_output_tokens": 128},
              {"name": "medium", "model": "ok", "context_window": 1024, "max_output_tokens": 128}]
    with pytest.raises(InvalidArgument) as refused:
        await router(faults, models, chain("small", "medium")).complete(CompletionRequest([Turn("user", "w " * 2000)]))
    assert "small has room for 384" in refused.value.message and "medium has room for 896" in refused.value.message
    assert "about 1004 tokens" in refused.value.message


async def test_a_request_too_long_for_the_first_candidate_goes_to_a_larger_one(faults: FaultServer) -> None:
    models = [{"name": "small", "model": "ok", "context_window": 512, "max_output_tokens": 128},
              {"name": "large", "model": "ok", "context_window": 8192}]
    routed = router(faults, models, chain("small", "large"))
    result = await routed.complete(CompletionRequest([Turn("user", "w " * 1000)]))
    assert result.deployment.name == "large" and result.attempts == ["large:ok"]


async def test_a_model_hint_is_honoured_only_for_the_tiers_it_allows(faults: FaultServer) -> None:
    models = [{"name": "base", "model": "ok"}, {"name": "premium", "model": "ok", "tiers": ["enterprise"]}]
    routed = router(faults, models, chain("base"))
    hinted = await routed.complete(CompletionRequest(HELLO, model_hint="premium", tier="enterprise"))
    assert hinted.deployment.name == "premium"
    with pytest.raises(PermissionDenied, match="tier 'standard' may not choose model 'premium'"):
        await routed.complete(CompletionRequest(HELLO, model_hint="premium", tier="standard"))


def _substitutions(model: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("moteur_model_substitutions_total", {"model": model, "outcome": outcome}) or 0.0


# "fake" is one model served by two deployments; "other" is a different model, the route's own candidate.
NAMED = [{"name": "fake-a", "group": "fake", "model": "status:500"},
         {"name": "fake-b", "group": "fake", "model": "status:503"},
         {"name": "other", "model": "ok"}]


async def answered(routed: ModelRouter, request: CompletionRequest, stream: bool) -> RoutedCompletion:
    return (await streamed(routed, request))[1] if stream else await routed.complete(request)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_named_model_that_fails_is_unavailable_naming_it_not_answered_by_another(
    faults: FaultServer, stream: bool
) -> None:
    refused = _substitutions("fake", "refused")
    with pytest.raises(Unavailable) as failed:
        await answered(router(faults, NAMED, chain("other"), retry={"attempts": 1}),
                       CompletionRequest(HELLO, model_hint="fake"), stream)
    message = failed.value.message
    assert message.startswith("model 'fake' is unavailable (all 2 deployments failed: ")
    assert {"fake-a:server_error", "fake-b:server_error"} <= set(message.split(": ")[1].split(")")[0].split(", "))
    assert message.endswith("set allow_model_substitution to let moteur answer with another model")
    assert faults.calls["ok"] == 0 and _substitutions("fake", "refused") == refused + 1


async def test_a_named_deployment_falls_back_to_the_other_deployments_of_its_model_only(faults: FaultServer) -> None:
    models = [{"name": "fake-a", "group": "fake", "model": "status:500"},
              {"name": "fake-b", "group": "fake", "model": "ok:b"},
              {"name": "other", "model": "ok"}]
    routed = router(faults, models, chain("other"), retry={"attempts": 1})
    result = await routed.complete(CompletionRequest(HELLO, model_hint="fake-a"))
    assert result.deployment.name == "fake-b" and result.attempts == ["fake-a:server_error", "fake-b:ok"]

    alone = router(faults, [{"name": "solo", "model": "status:500"}, {"name": "other", "model": "ok"}],
                   chain("other"), retry={"attempts": 1})
    with pytest.raises(Unavailable, match=r"model 'solo' is unavailable \(its one deployment failed: solo:server_"):
        await alone.complete(CompletionRequest(HELLO, model_hint="solo"))
    assert faults.calls["ok"] == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_a_caller_who_allows_substitution_gets_the_routes_model_and_is_told_which(
    faults: FaultServer, stream: bool
) -> None:
    allowed = _substitutions("fake", "allowed")
    result = await answered(router(faults, NAMED, chain("other"), retry={"attempts": 1}),
                            CompletionRequest(HELLO, model_hint="fake", allow_model_substitution=True), stream)
    assert result.deployment.name == "other" and result.attempts[-1] == "other:ok"
    assert {"fake-a:server_error", "fake-b:server_error"} <= set(result.attempts)
    assert _substitutions("fake", "allowed") == allowed + 1


async def test_a_named_model_that_answers_is_no_substitution_and_unnamed_routes_keep_their_fallbacks(
    faults: FaultServer,
) -> None:
    models = [{"name": "broken", "model": "status:500"}, {"name": "good", "model": "ok"}]
    routed = router(faults, models, chain("broken", "good"), retry={"attempts": 1})
    allowed = _substitutions("good", "allowed")
    named = await routed.complete(CompletionRequest(HELLO, model_hint="good", allow_model_substitution=True))
    assert named.attempts == ["good:ok"] and _substitutions("good", "allowed") == allowed
    unnamed = await routed.complete(CompletionRequest(HELLO))
    assert unnamed.deployment.name == "good" and unnamed.attempts == ["broken:server_error", "good:ok"]


async def test_json_output_is_asked_of_the_provider_and_checked(faults: FaultServer) -> None:
    models = [{"name": "texty", "model": "ok", "supports_json": True},
              {"name": "nojson", "model": "ok"}]
    routed = router(faults, models, chain("nojson", "texty"))
    with pytest.raises(Unavailable, match="nojson:no_json, texty:malformed"):
        await routed.complete(CompletionRequest(HELLO, json_output=True))
    assert faults.requests["ok"][-1]["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    with pytest.raises(Unavailable, match="texty:malformed"):
        await routed.complete(CompletionRequest(HELLO, json_output=True, json_schema=schema))
    assert faults.requests["ok"][-1]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


async def test_sampling_settings_reach_the_provider(faults: FaultServer) -> None:
    routed = router(faults, [{"name": "plain", "model": "ok"}], chain("plain"))
    await routed.complete(CompletionRequest(HELLO, temperature=0.3, top_p=0.8, stop=["###"]))
    sent = faults.requests["ok"][-1]
    assert (sent["temperature"], sent["top_p"], sent["stop"]) == (0.3, 0.8, ["###"])
    await routed.complete(CompletionRequest(HELLO))
    assert "top_p" not in faults.requests["ok"][-1]  # unset: the model's own


async def test_routes_follow_request_type_and_conditions_and_render_their_system_prompt(faults: FaultServer) -> None:
    models = [{"name": "coder", "model": "ok:coder"}, {"name": "big", "model": "ok", "context_window": 8192},
              {"name": "general", "model": "ok:general"}]
    routes = [
        {"name": "code", "request_types": ["code"], "candidates": ["coder"],
         "system_prompt": "You write {request_type} for tier {tier}."},
        {"name": "long", "when": {"min_input_tokens": 500}, "candidates": ["big"]},
        {"name": "chat", "candidates": ["general"]},
    ]
    routed = router(faults, models, routes)
    code = await routed.complete(CompletionRequest(HELLO, request_type="code", tier="pro"))
    assert code.decision.route.name == "code" and code.deployment.name == "coder"
    sent = faults.requests["ok:coder"][-1]["messages"]
    assert sent[0] == {"role": "system", "content": "You write code for tier pro."} and sent[-1]["role"] == "user"
    long = await routed.complete(CompletionRequest([Turn("user", "x" * 2400)], request_type="chat"))
    assert long.decision.route.name == "long"
    chat = await routed.complete(CompletionRequest(HELLO, request_type="chat"))
    assert (chat.decision.route.name, chat.decision.how) == ("chat", "request_type")
    assert [m["role"] for m in faults.requests["ok:general"][-1]["messages"]] == ["user"]  # no prompt, none sent


async def test_the_classifier_picks_the_route_with_the_nearest_examples() -> None:
    # A bag-of-words embedding stands in for the memory service here; the e2e test uses the real one.
    vocabulary = ["summary", "summarize", "code", "python", "function", "hello", "weather"]

    async def embed(texts: list[str]) -> list[list[float]]:
        return [[float(word in text.lower()) for word in vocabulary] for text in texts]

    config = ModelsConfig.model_validate({
        "models": [{"name": "m", "provider": "instant"}],
        "routes": [
            {"name": "code", "request_types": ["code"], "candidates": ["m"],
             "examples": ["write a python function", "fix my code"]},
            {"name": "summarize", "request_types": ["summarize"], "candidates": ["m"],
             "examples": ["summarize this", "give me a summary"]},
            {"name": "chat", "candidates": ["m"], "examples": ["hello there"]},
        ],
    })
    table = RouteTable(config, embed)

    def query(text: str) -> RouteQuery:
        return RouteQuery("", "standard", 10, False, False, text)

    code = await table.decide(query("a python function to sort"))
    assert (code.route.name, code.how, code.classified_as) == ("code", "classifier", "code") and code.score > 0.5
    vague = await table.decide(query("what is the weather"))  # near no route: below classifier_min_score
    assert (vague.route.name, vague.how) == ("chat", "default") and vague.score < config.classifier_min_score


async def test_a_classifier_that_cannot_embed_leaves_the_request_on_the_default_route() -> None:
    async def embed(texts: list[str]) -> list[list[float]]:
        raise Unavailable("the memory service is unreachable")

    config = ModelsConfig.model_validate({
        "models": [{"name": "m", "provider": "instant"}],
        "routes": [{"name": "code", "request_types": ["code"], "candidates": ["m"], "examples": ["code"]},
                   {"name": "chat", "candidates": ["m"]}],
    })
    decision = await RouteTable(config, embed).decide(RouteQuery("", "", 1, False, False, "code"))
    assert (decision.route.name, decision.how) == ("chat", "classifier_unavailable")


def test_a_route_naming_a_missing_model_or_an_unknown_prompt_variable_is_refused() -> None:
    with pytest.raises(ValueError, match=r"route 'chat' names unknown models \['gpt-5'\]"):
        ModelsConfig.model_validate({"models": [{"name": "m", "provider": "instant"}],
                                     "routes": [{"name": "chat", "candidates": ["gpt-5"]}]})
    with pytest.raises(ValueError, match=r"uses \['user_name'\]"):
        route = {"name": "chat", "candidates": ["m"], "system_prompt": "Hi {user_name}"}
        ModelsConfig.model_validate({"models": [{"name": "m", "provider": "instant"}], "routes": [route]})
    with pytest.raises(ValueError, match="no route matches every request"):
        ModelsConfig.model_validate({"models": [{"name": "m", "provider": "instant"}],
                                     "routes": [{"name": "code", "request_types": ["code"], "candidates": ["m"]}]})


def test_dispatch_capacity_counts_each_deployment_once_per_kind_of_request() -> None:
    config = ModelsConfig.model_validate({
        "models": [{"name": "a", "group": "g", "provider": "instant", "max_concurrency": 2},
                   {"name": "b", "group": "g", "provider": "instant", "max_concurrency": 3},
                   {"name": "c", "provider": "instant", "max_concurrency": 5}],
        "routes": [{"name": "code", "request_types": ["code"], "candidates": ["c", "g"]},
                   {"name": "chat", "candidates": ["g"]}],
    })
    pools = config.dispatch_capacity()
    assert pools["code"] == 10 and pools["chat"] == 5 and pools["any"] == 10
    assert pools["model:g"] == 5 and pools["model:c"] == 5 and pools["model:a"] == 2


def test_the_classifier_reads_the_instruction_not_the_material() -> None:
    assert instruction_of("Summarize: the lighthouse keeper climbed the stairs") == "Summarize"
    assert instruction_of("Fix this bug\ndef f(): return 1/0") == "Fix this bug"
    assert instruction_of("word " * 40).split() == ["word"] * 16
