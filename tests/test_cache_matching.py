"""The response cache's own rules, without the mesh: which questions count as the same (in English and French),
what the context digest depends on, and the tenant policy as stored."""

from __future__ import annotations

import pytest

from moteur.gateway.api.convert import cache_policy
from moteur.gateway.response_cache import ResponseCache
from moteur.gateway.tenants import CachePolicy
from moteur.gateway.turns import TurnInput
from moteur.gateway.wording import same_question
from moteur.runtime.errors import InvalidArgument
from moteur.runtime.identity import Identity
from moteur.runtime.memory_limits import MAX_TEXT_CHARS
from moteur.v1 import common_pb2, gateway_pb2, router_pb2


@pytest.mark.parametrize(("first", "second"), [
    ("What is the capital of France?", "what is the capital of france"),
    ("What is the capital of France?", "What's the capital of France, please?"),
    ("Quelle est la capitale de la France ?", "quelle est la capitale de la France, s'il vous plaît"),
    ("Convert 1,000 km to miles", "convert 1000 km to miles"),
    ("Convert 5.0 km to miles", "Convert 5 km to miles"),
    ("Comment modifier mon adresse de livraison ?", "comment modifier l'adresse de livraison"),
    ("What is recursion in programming?", "what's recursion (programming)?"),
])
def test_rewordings_of_one_question_are_the_same(first: str, second: str) -> None:
    assert same_question(first, second)


@pytest.mark.parametrize(("first", "second"), [
    ("Convert 5 km to miles", "Convert 5 miles to km"),  # cosine 0.997 with E5
    ("Convert 5 km to miles", "Convert 50 km to miles"),
    ("Convert 3,5 km to miles", "Convert 35 km to miles"),
    ("Convert Celsius to Fahrenheit", "Convert Fahrenheit to Celsius"),
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("Combien de jours en février 2024 ?", "Combien de jours ouvrés en février 2024 ?"),
    ("When did World War II end?", "When did World War I end?"),
    ("What is photosynthesis?", "Why is photosynthesis important?"),
])
def test_a_near_miss_is_another_question(first: str, second: str) -> None:
    assert not same_question(first, second)


def _context(cache: ResponseCache, turn: TurnInput, policy: CachePolicy | None = None,
             prompt: tuple[router_pb2.PromptMessage, ...] = (), tools: tuple[router_pb2.ModelTool, ...] = (),
             tenant: str = "acme", tier: str = "standard") -> str | None:
    policy = policy or CachePolicy(enabled=True)
    if not cache.asked(turn, policy):  # as the conversation asks it
        return None
    return cache.context(Identity(tenant=tenant, tier=tier, user="ana"), turn, policy, list(prompt), list(tools))


def test_the_context_digest_changes_with_what_the_answer_depends_on() -> None:
    revision = ["r1"]
    cache = ResponseCache(memory=None, revision=lambda: revision[0])  # type: ignore[arg-type]  # never called
    turn = TurnInput("", "ana", "What is the capital of France?")
    base = _context(cache, turn)
    assert base is not None and len(base) == 64
    assert _context(cache, TurnInput("", "bob", "Another question entirely")) == base  # not the question, nor user
    system = router_pb2.PromptMessage(role=common_pb2.ROLE_SYSTEM, content="Memory: ana lives in Lyon")
    tool = router_pb2.ModelTool(name="weather", description="today's weather", parameters_schema_json="{}")
    changed = {
        "tenant": _context(cache, turn, tenant="globex"),
        "tier": _context(cache, turn, tier="enterprise"),
        "model": _context(cache, TurnInput("", "ana", turn.message, model_hint="instant")),
        "temperature": _context(cache, TurnInput("", "ana", turn.message, temperature=0.2)),
        "schema": _context(cache, TurnInput("", "ana", turn.message, json_schema='{"type": "object"}')),
        "memories": _context(cache, turn, prompt=(system,)),
        "tools": _context(cache, turn, tools=(tool,)),
        "turned on again": _context(cache, turn, policy=CachePolicy(enabled=True, since_ms=5)),
    }
    revision[0] = "r2"
    changed["registry revision"] = _context(cache, turn)
    assert all(digest is not None and digest != base for digest in changed.values()), changed
    assert len(set(changed.values())) == len(changed)


def test_the_cache_is_asked_only_when_the_tenant_and_the_turn_allow_it() -> None:
    cache = ResponseCache(memory=None, revision=lambda: "r1", max_history=2)  # type: ignore[arg-type]
    question = "What is the capital of France?"
    assert _context(cache, TurnInput("", "ana", question), policy=CachePolicy()) is None  # off by default
    assert _context(cache, TurnInput("", "ana", question, use_cache=False)) is None
    summaries = CachePolicy(enabled=True, request_types=(common_pb2.REQUEST_TYPE_SUMMARIZE,))
    assert _context(cache, TurnInput("", "ana", question, request_type=common_pb2.REQUEST_TYPE_CHAT),
                    policy=summaries) is None
    assert _context(cache, TurnInput("", "ana", question, request_type=common_pb2.REQUEST_TYPE_SUMMARIZE),
                    policy=summaries) is not None
    assert _context(cache, TurnInput("", "ana", question, output_format=common_pb2.FILE_FORMAT_PDF)) is None
    longest = "word " * (MAX_TEXT_CHARS // 5)
    assert _context(cache, TurnInput("", "ana", longest)) is not None
    assert _context(cache, TurnInput("", "ana", longest + "more")) is None  # memory would keep it cut short
    said = [router_pb2.PromptMessage(role=common_pb2.ROLE_USER, content="hi"),
            router_pb2.PromptMessage(role=common_pb2.ROLE_ASSISTANT, content="hello")]
    assert _context(cache, TurnInput("", "ana", question), prompt=tuple(said)) is not None  # a short history
    assert _context(cache, TurnInput("", "ana", question), prompt=tuple(said * 2)) is None  # a longer one


def test_a_tenant_policy_reads_back_as_stored() -> None:
    policy = CachePolicy(True, (common_pb2.REQUEST_TYPE_CHAT,), 600, since_ms=42)
    assert CachePolicy.from_doc(policy.as_doc()) == policy
    assert CachePolicy.from_doc(None) == CachePolicy() and not CachePolicy().enabled


@pytest.mark.parametrize("request_types", [[0], [common_pb2.REQUEST_TYPE_CHAT, 99]])
def test_a_request_type_the_cache_cannot_answer_is_refused_naming_it(request_types: list[int]) -> None:
    with pytest.raises(InvalidArgument) as refused:
        cache_policy(gateway_pb2.ResponseCacheSettings(enabled=True, request_types=request_types))
    assert refused.value.violations[0].field == f"response_cache.request_types[{len(request_types) - 1}]"
