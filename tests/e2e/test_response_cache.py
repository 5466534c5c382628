"""The semantic response cache through the public APIs (issue 19): opt-in per tenant and request type, answers
kept per tenant, found again for the same question reworded (in English and French) and never for a near miss.

The instant model answers "instant answer to: <question>": an answer from the cache names the question it was
first given to, so each test sees which kept answer came back."""

from __future__ import annotations

import grpc
import openai
import pytest

from moteur.client import MoteurClientError, cache_settings
from moteur.devstack.stack import LocalStack
from moteur.runtime.ids import new_id
from tests.waiting import eventually

ANSWER = "instant answer to: "


async def _cached_tenant(make_caller, user: str = "ana", **settings):  # type: ignore[no-untyped-def]
    tenant = f"cache-{new_id().lower()}"
    admin = await make_caller(tenant, "", admin=True)  # a service key: acts for any user
    await admin.client.set_tenant_settings(response_cache=cache_settings(True, **settings))
    return admin, await make_caller(tenant, user)


async def _kept(caller, question: str, **options) -> None:  # type: ignore[no-untyped-def]
    """Ask ``question`` (its answer is kept in the background) and wait until the cache answers it."""
    first = await caller.client.chat(question, model_hint="instant", **options)
    assert not first.cached and first.route.entries["cache"] == "miss"
    assert first.usage.total_tokens > 0

    async def answered_from_cache() -> bool:
        again = await caller.client.chat(question, model_hint="instant", **options)
        return again.cached

    await eventually(answered_from_cache, timeout=20, message="the answer was not kept")


async def test_a_reworded_question_gets_the_kept_answer_and_a_near_miss_does_not(make_caller) -> None:
    _, ana = await _cached_tenant(make_caller)
    await _kept(ana, "Convert 5 km to miles")
    reworded = await ana.client.chat("convert 5 km to miles, please", model_hint="instant")
    assert reworded.cached and reworded.message.content == ANSWER + "Convert 5 km to miles"
    assert reworded.usage.total_tokens == 0 and reworded.usage.cost_micro_usd == 0  # no model call
    route = reworded.route.entries
    assert route["cache"] == "hit" and float(route["cache_score"]) >= 0.9 and route["cached_at"]
    for near_miss in ("Convert 5 miles to km", "Convert 50 km to miles", "Convert 5 km to feet"):
        answered = await ana.client.chat(near_miss, model_hint="instant")
        assert not answered.cached and answered.message.content == ANSWER + near_miss
    # A hit is a turn of the session like any other: question and answer are stored.
    stored = await ana.client.get_session(reworded.session_id)
    assert [m.content for m in stored.messages] == ["convert 5 km to miles, please", ANSWER + "Convert 5 km to miles"]


async def test_in_french_too(make_caller) -> None:
    _, lea = await _cached_tenant(make_caller, "lea")
    await _kept(lea, "Quelle est la capitale de la France ?")
    reworded = await lea.client.chat("quelle est la capitale de la France, s'il vous plaît", model_hint="instant")
    assert reworded.cached and reworded.message.content == ANSWER + "Quelle est la capitale de la France ?"
    other = await lea.client.chat("Quelle est la capitale de l'Espagne ?", model_hint="instant")
    assert not other.cached


async def test_an_answer_never_crosses_tenants(make_caller) -> None:
    _, ana = await _cached_tenant(make_caller)
    _, bob = await _cached_tenant(make_caller, "bob")
    await _kept(ana, "How do I reset my password?")
    theirs = await bob.client.chat("How do I reset my password?", model_hint="instant")
    assert not theirs.cached and theirs.route.entries["cache"] == "miss"


async def test_the_cache_is_off_unless_the_tenant_turns_it_on_and_a_turn_may_refuse_it(make_caller) -> None:
    plain = await make_caller(f"nocache-{new_id().lower()}", "ana")
    answered = await plain.client.chat("What is the capital of Italy?", model_hint="instant")
    assert "cache" not in answered.route.entries and not answered.cached
    _, ana = await _cached_tenant(make_caller)
    await _kept(ana, "What is the capital of Italy?")
    refused = await ana.client.chat("What is the capital of Italy?", model_hint="instant", use_cache=False)
    assert not refused.cached and "cache" not in refused.route.entries and refused.usage.total_tokens > 0


async def test_only_the_request_types_named_and_short_histories_are_cached(make_caller) -> None:
    _, ana = await _cached_tenant(make_caller, request_types=["summarize"])
    chat = await ana.client.chat("Summarise the French Revolution", model_hint="instant", request_type="chat")
    assert "cache" not in chat.route.entries
    await _kept(ana, "Summarise the French Revolution", request_type="summarize")
    # In a session, the history is part of what the answer depends on; past two messages it is not cached.
    first = await ana.client.chat("Summarise the French Revolution", model_hint="instant", request_type="summarize")
    assert first.cached
    second = await ana.client.chat("And the Russian one?", session_id=first.session_id, model_hint="instant",
                                   request_type="summarize")
    assert second.route.entries["cache"] == "miss"  # one exchange before it: asked, not found
    third = await ana.client.chat("And the American one?", session_id=first.session_id, model_hint="instant",
                                  request_type="summarize")
    assert "cache" not in third.route.entries  # two exchanges before it: not asked


async def test_turning_the_cache_off_forgets_what_it_kept(make_caller) -> None:
    admin, ana = await _cached_tenant(make_caller)
    await _kept(ana, "What is the boiling point of water?")
    off = await admin.client.set_tenant_settings(response_cache=cache_settings(False))
    assert not off.response_cache.enabled
    await admin.client.set_tenant_settings(response_cache=cache_settings(True))
    shown = await ana.client.get_tenant_settings()
    assert shown.response_cache.enabled and shown.response_cache.ttl_seconds == 3600

    async def asked_again() -> bool:  # tenant settings are read through a 2 s cache on each replica
        answered = await ana.client.chat("What is the boiling point of water?", model_hint="instant")
        return "cache" in answered.route.entries and not answered.cached

    await eventually(asked_again, timeout=10, message="the answer kept before the cache was turned off came back")


async def test_forgetting_a_user_drops_the_answers_to_their_questions(make_caller) -> None:
    admin, ana = await _cached_tenant(make_caller)
    await _kept(ana, "What is the speed of light?")
    await admin.client.forget_user("ana")
    bob = await make_caller(ana.tenant, "bob")
    answered = await bob.client.chat("What is the speed of light?", model_hint="instant")
    assert not answered.cached


async def test_bad_cache_settings_are_refused_naming_the_field(make_caller) -> None:
    admin = await make_caller(f"cache-{new_id().lower()}", "admin", admin=True)
    with pytest.raises(MoteurClientError) as short:
        await admin.client.set_tenant_settings(response_cache=cache_settings(True, ttl_seconds=5))
    assert short.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "response_cache.ttl_seconds" in str(short.value)
    user = await make_caller(admin.tenant, "ana")
    with pytest.raises(MoteurClientError) as denied:
        await user.client.set_tenant_settings(response_cache=cache_settings(True))
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED


async def test_the_http_api_marks_a_hit_and_takes_the_opt_out_header(stack: LocalStack, make_caller) -> None:
    _, ana = await _cached_tenant(make_caller)
    await _kept(ana, "What is the tallest mountain in Europe?")
    async with openai.AsyncOpenAI(base_url=stack.http_url, api_key=ana.key, max_retries=0) as client:
        reply = await client.chat.completions.with_raw_response.create(
            model="instant", messages=[{"role": "user", "content": "what is the tallest mountain in Europe"}])
        refused = await client.chat.completions.with_raw_response.create(
            model="instant", messages=[{"role": "user", "content": "What is the tallest mountain in Europe?"}],
            extra_headers={"X-Moteur-Cache": "off"})
        streamed = await client.chat.completions.create(
            model="instant", messages=[{"role": "user", "content": "What is the tallest mountain in Europe ?"}],
            stream=True)
        chunks = [chunk async for chunk in streamed]
    completion = reply.parse()
    assert reply.headers["x-moteur-cache"] == "hit"
    assert completion.choices[0].message.content == ANSWER + "What is the tallest mountain in Europe?"
    assert completion.usage is not None and completion.usage.total_tokens == 0
    assert completion.model_extra is not None and completion.model_extra["moteur"]["cache"] == "hit"
    assert "x-moteur-cache" not in refused.headers and refused.parse().usage.total_tokens > 0  # type: ignore[union-attr]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER + "What is the tallest mountain in Europe?"
    assert chunks[-1].model_extra is not None and chunks[-1].model_extra["moteur"]["cache"] == "hit"
