"""Router logic without a network: registry validation, windowing, planning and accounting.

The instant provider stands in for a model here (unit tests of routing logic); the real model is
exercised by the end-to-end tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from moteur.router.orchestrator import CompletionRequest, ModelRouter
from moteur.router.providers import Turn
from moteur.router.registry import ModelsConfig, load_models
from moteur.router.windowing import estimate_turn_tokens, window
from moteur.runtime.errors import InvalidArgument

CONFIG = ModelsConfig.model_validate({
    "default_model": "instant",
    "models": [
        {"name": "instant", "provider": "instant", "context_window": 200, "max_output_tokens": 50,
         "input_price_per_1k_usd": 0.5, "output_price_per_1k_usd": 1.5},
    ],
})


def test_the_example_registry_in_the_repository_is_valid() -> None:
    config, revision = load_models(Path(__file__).parents[1] / "config" / "models.yaml")
    assert any(route.catch_all for route in config.all_routes()) and len(revision) == 12


def test_a_registry_with_an_unknown_default_is_refused_with_the_names() -> None:
    with pytest.raises(ValidationError, match="default_model 'gpt' is not one of"):
        ModelsConfig.model_validate({"default_model": "gpt", "models": [{"name": "a", "provider": "instant"}]})


def test_an_openai_deployment_needs_its_endpoint() -> None:
    with pytest.raises(ValidationError, match="needs 'model' and 'base_url'"):
        ModelsConfig.model_validate({"default_model": "a", "models": [{"name": "a", "provider": "openai"}]})


def test_window_keeps_system_and_newest_turns_within_budget() -> None:
    turns = [Turn("system", "be brief")] + [Turn("user" if i % 2 == 0 else "assistant", "x" * 40) for i in range(10)]
    kept, dropped = window(turns, budget=60)
    assert kept[0] == turns[0]
    assert kept[1:] == turns[-(len(kept) - 1):]
    assert sum(estimate_turn_tokens(t) for t in kept) <= 60
    assert dropped == 10 - (len(kept) - 1) and dropped > 0


def test_window_always_keeps_the_last_turn() -> None:
    kept, dropped = window([Turn("user", "a" * 40), Turn("user", "b" * 4000)], budget=10)
    assert [t.content[0] for t in kept] == ["b"] and dropped == 1


async def test_completion_is_counted_and_priced() -> None:
    result = await ModelRouter(CONFIG).complete(CompletionRequest([Turn("user", "hello there")]))
    assert result.deployment.name == "instant"
    assert result.output_tokens > 0 and result.input_tokens > 0
    expected = round((result.input_tokens * 0.5 + result.output_tokens * 1.5) * 1000)
    assert result.cost_micro_usd == expected


async def test_an_unknown_model_hint_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(InvalidArgument, match="unknown model 'gpt-9'; valid: instant"):
        await ModelRouter(CONFIG).complete(CompletionRequest([Turn("user", "hi")], model_hint="gpt-9"))


async def test_a_question_larger_than_the_context_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="instant has room for 150 input tokens"):
        await ModelRouter(CONFIG).complete(CompletionRequest([Turn("user", "word " * 400)]))


async def test_streaming_yields_deltas_then_one_accounted_result() -> None:
    items = [item async for item in ModelRouter(CONFIG).stream(CompletionRequest([Turn("user", "hi")]))]
    *deltas, final = items
    assert all(isinstance(d, str) for d in deltas) and deltas
    assert final.completion.text == "".join(deltas).strip()


def test_a_deployment_with_a_tokenizer_is_counted_exactly() -> None:
    from moteur.devstack.models import CHAT_MODEL, model_path
    from moteur.router.windowing import ESTIMATE, TokenCounter

    exact = TokenCounter(f"gguf:{model_path(CHAT_MODEL)}")
    text = "The lighthouse keeper climbed the stairs every night to light the lamp. " * 8
    assert exact.exact and not ESTIMATE.exact
    assert 0 < exact.text(text) < ESTIMATE.text(text)  # the estimate errs on the safe side
    turns = [Turn("user" if i % 2 == 0 else "assistant", text) for i in range(20)]
    budget = 1000
    kept_exact, _ = window(turns, budget, exact)
    kept_estimate, _ = window(turns, budget)
    assert exact.turns(kept_exact) <= budget and len(kept_exact) > len(kept_estimate)


def test_a_tokenizer_file_that_does_not_exist_is_refused_at_load() -> None:
    with pytest.raises(ValidationError, match=r"tokenizer file '/nowhere/model\.gguf' not found"):
        ModelsConfig.model_validate({"default_model": "a", "models": [
            {"name": "a", "provider": "instant", "tokenizer": "gguf:/nowhere/model.gguf"}]})
