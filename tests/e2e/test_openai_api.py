"""The gateway's OpenAI-compatible HTTP API, called with the official openai SDK and LangChain's ChatOpenAI as other
services call it (issue 19): the same keys, models, limits and turns as the gRPC API, and errors the SDK turns
into its own types. The instant model answers "instant answer to: <question>", calls the tools a question names
on "/tool <name> <arguments>" lines, and answers JSON when asked to."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from moteur.devstack.stack import LocalStack
from moteur.runtime.ids import new_id


async def test_the_sdk_lists_the_models_the_key_may_name(stack: LocalStack, make_caller) -> None:
    caller = await make_caller("openai-acme", "olga")
    async with openai.AsyncOpenAI(base_url=stack.http_url, api_key=caller.key, max_retries=0) as client:
        listed = [model async for model in client.models.list()]
    over_grpc = await caller.client.list_models()
    assert [m.id for m in listed] == [m.name for m in over_grpc.models]
    assert "instant" in {m.id for m in listed} and "enterprise-only" not in {m.id for m in listed}  # tier
    assert {m.owned_by for m in listed} == {m.provider for m in over_grpc.models}
    assert all(m.object == "model" for m in listed)


async def test_the_sync_sdk_works_the_same(stack: LocalStack, make_caller) -> None:
    caller = await make_caller("openai-acme", "otto")

    def listed() -> list[str]:
        with openai.OpenAI(base_url=stack.http_url, api_key=caller.key, max_retries=0) as client:
            return [model.id for model in client.models.list()]

    over_grpc = await caller.client.list_models()
    assert await asyncio.to_thread(listed) == [m.name for m in over_grpc.models]


async def test_a_wrong_or_missing_key_is_the_sdks_authentication_error(stack: LocalStack) -> None:
    async with openai.AsyncOpenAI(base_url=stack.http_url, api_key="mot_not-a-key", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as wrong:
            await client.models.list()
    assert wrong.value.status_code == 401
    assert "not recognised" in wrong.value.message
    assert wrong.value.body["type"] == "authentication_error"  # type: ignore[index]
    async with httpx.AsyncClient() as http:
        missing = await http.get(f"{stack.http_url}/models")
    assert missing.status_code == 401
    assert "missing API key" in missing.json()["error"]["message"]


async def test_an_unknown_endpoint_answers_in_openais_error_json(stack: LocalStack) -> None:
    async with httpx.AsyncClient() as http:
        unknown = await http.post(f"{stack.http_url}/completions/legacy", json={})
        health = await http.get(stack.http_url.removesuffix("/v1") + "/healthz")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found_error"
    assert health.status_code == 200


def _sdk(stack: LocalStack, key: str, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.http_url, api_key=key, max_retries=0, default_headers=headers or None)


async def test_a_stateless_completion_answers_in_french_and_stores_nothing_but_usage(stack, make_caller) -> None:
    caller = await make_caller(f"oa-{new_id().lower()}", "sophie")
    async with _sdk(stack, caller.key) as client:
        reply = await client.chat.completions.with_raw_response.create(
            model="instant", messages=[{"role": "user", "content": "Quelle est la capitale de la France ?"}])
    completion = reply.parse()
    assert completion.choices[0].message.content == "instant answer to: Quelle est la capitale de la France ?"
    assert completion.choices[0].finish_reason == "stop" and completion.model == "instant"
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert "x-moteur-session" not in reply.headers
    assert int(reply.headers["x-ratelimit-remaining-requests"]) >= 0
    assert (await caller.client.list_sessions()).sessions == []  # stateless: no session, no message
    usage = await caller.client.get_usage()
    assert usage.total.input_tokens == completion.usage.prompt_tokens  # the turn is accounted all the same


async def test_the_history_a_stateless_request_brings_is_the_prompt(stack, make_caller) -> None:
    caller = await make_caller(f"oa-{new_id().lower()}", "henri")
    question = {"role": "user", "content": "And in English?"}
    history = [{"role": "system", "content": "Answer briefly."},
               {"role": "user", "content": "Bonjour, comment vas-tu aujourd'hui ?"},
               {"role": "assistant", "content": "Très bien, merci ! Et toi ?"}]
    async with _sdk(stack, caller.key) as client:
        alone = await client.chat.completions.create(model="instant", messages=[question])
        after = await client.chat.completions.create(model="instant", messages=[*history, question])
    assert after.choices[0].message.content == alone.choices[0].message.content == "instant answer to: And in English?"
    assert after.usage.prompt_tokens > alone.usage.prompt_tokens + 10  # the three earlier messages were read


async def test_a_streamed_completion_arrives_in_chunks_with_its_usage_last(stack, make_caller) -> None:
    caller = await make_caller(f"oa-{new_id().lower()}", "stella")
    async with _sdk(stack, caller.key) as client:
        stream = await client.chat.completions.create(
            model="instant", messages=[{"role": "user", "content": "Tell me about lighthouses."}], stream=True,
            stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "instant answer to: Tell me about lighthouses."
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert len({c.id for c in chunks}) == 1


async def test_the_callers_tools_are_called_and_their_results_answered(stack, make_caller) -> None:
    caller = await make_caller(f"oa-{new_id().lower()}", "tom")
    weather = {"type": "function", "function": {
        "name": "lookup_forecast", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    asked = [{"role": "user", "content": '/tool lookup_forecast {"city": "Lyon"}'}]
    async with _sdk(stack, caller.key) as client:
        first = await client.chat.completions.create(model="instant", messages=asked, tools=[weather])
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
        call = choice.message.tool_calls[0]
        assert call.function.name == "lookup_forecast" and json.loads(call.function.arguments) == {"city": "Lyon"}
        answered = await client.chat.completions.create(model="instant", tools=[weather], messages=[
            *asked, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear", "celsius": 21}'}])
    assert answered.choices[0].finish_reason == "stop"
    assert answered.choices[0].message.content == 'instant answer after tools: {"sky": "clear", "celsius": 21}'


async def test_a_json_schema_response_format_gets_json(stack, make_caller) -> None:
    caller = await make_caller(f"oa-{new_id().lower()}", "jason")
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    async with _sdk(stack, caller.key) as client:
        reply = await client.chat.completions.create(
            model="instant", messages=[{"role": "user", "content": "Name a river."}],
            response_format={"type": "json_schema", "json_schema": {"name": "river", "schema": schema}})
    assert json.loads(reply.choices[0].message.content or "") == {"answer": "Name a river."}


async def test_a_session_keeps_the_history_across_requests(stack, make_caller) -> None:
    caller = await make_caller(f"oa-{new_id().lower()}", "sam")
    async with _sdk(stack, caller.key) as client:
        first = await client.chat.completions.with_raw_response.create(
            model="instant", messages=[{"role": "user", "content": "My name is Sam."}],
            extra_headers={"x-moteur-session": "new"})
        session_id = first.headers["x-moteur-session"]
        second = await client.chat.completions.create(
            model="instant", messages=[{"role": "user", "content": "What is my name?"}],
            extra_headers={"x-moteur-session": session_id})
    assert second.usage.prompt_tokens > first.parse().usage.prompt_tokens  # the session's history was read
    stored = await caller.client.get_session(session_id)
    assert [m.content for m in stored.messages][::2] == ["My name is Sam.", "What is my name?"]


async def test_refusals_are_the_sdks_error_types(stack, make_caller) -> None:
    caller = await make_caller(f"oa-{new_id().lower()}", "rita")
    service = await make_caller(f"oa-{new_id().lower()}", "")
    question = [{"role": "user", "content": "Hello"}]
    async with _sdk(stack, caller.key) as client:
        with pytest.raises(openai.BadRequestError) as unknown:
            await client.chat.completions.create(model="no-such-model", messages=question)
        assert "unknown model" in unknown.value.message
        with pytest.raises(openai.BadRequestError) as empty:
            await client.chat.completions.create(model="instant", messages=[])
        assert empty.value.body["param"] == "messages"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="instant", messages=question,
                                                 extra_headers={"x-moteur-session": new_id()})
    async with _sdk(stack, service.key) as client:
        with pytest.raises(openai.BadRequestError) as no_user:
            await client.chat.completions.create(model="instant", messages=question)
        assert no_user.value.body["param"] == "user"  # type: ignore[index]


async def test_a_limit_reached_is_a_rate_limit_error_with_retry_after(stack, make_caller) -> None:
    tenant = f"oa-{new_id().lower()}"
    admin = await make_caller(tenant, "", admin=True)
    await admin.client.set_limits("user:lim", requests_per_minute=2)
    limited = await make_caller(tenant, "lim")
    async with _sdk(stack, limited.key) as client:
        for _ in range(2):
            await client.chat.completions.create(model="instant", messages=[{"role": "user", "content": "Hi"}])
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(model="instant", messages=[{"role": "user", "content": "Hi"}])
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert "requests_per_minute" in refused.value.message


async def test_langchain_chat_openai_pointed_at_moteur(stack, make_caller) -> None:
    from langchain_openai import ChatOpenAI

    caller = await make_caller(f"oa-{new_id().lower()}", "lang")
    model = ChatOpenAI(base_url=stack.http_url, api_key=caller.key, model="instant", max_retries=0)
    answer = await model.ainvoke("Où se trouve Lyon ?")
    assert answer.content == "instant answer to: Où se trouve Lyon ?"
    streamed = "".join([str(part.content) async for part in model.astream("Et Marseille ?")])
    assert streamed == "instant answer to: Et Marseille ?"


async def test_a_sessions_turn_waiting_for_the_callers_tools_goes_on_with_the_tool_messages(stack, make_caller) -> None:
    caller = await make_caller(f"oa-{new_id().lower()}", "tess")
    forecast = {"type": "function", "function": {
        "name": "lookup_forecast", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    asked = {"role": "user", "content": '/tool lookup_forecast {"city": "Brest"}'}
    async with _sdk(stack, caller.key) as client:
        first = await client.chat.completions.with_raw_response.create(
            model="instant", messages=[asked], tools=[forecast], extra_headers={"x-moteur-session": "new"})
        session_id, call = first.headers["x-moteur-session"], first.parse().choices[0].message.tool_calls[0]
        answered = await client.chat.completions.create(
            model="instant", tools=[forecast], extra_headers={"x-moteur-session": session_id}, messages=[
                asked, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": "rain, 12 °C"}])
    assert answered.choices[0].message.content == 'instant answer after tools: "rain, 12 °C"'
    stored = await caller.client.get_session(session_id)
    assert [m.content for m in stored.messages][-1] == answered.choices[0].message.content


async def test_embeddings_come_back_as_the_sdk_decodes_them_in_french_and_english(stack, make_caller) -> None:
    caller = await make_caller(f"oa-{new_id().lower()}", "emma")
    texts = ["Le chat dort sur le canapé.", "The cat is sleeping on the sofa.", "Income tax is due in April."]
    async with _sdk(stack, caller.key) as client:
        # The SDK asks for base64 unless told otherwise, and decodes it; float comes as JSON numbers.
        batch = await client.embeddings.create(model="text-embedding-3-small", input=texts)
        floats = await client.embeddings.create(model="auto", input=texts[0], encoding_format="float")
        with pytest.raises(openai.BadRequestError) as empty:
            await client.embeddings.create(model="auto", input=[])
        with pytest.raises(openai.BadRequestError) as token_ids:
            await client.embeddings.create(model="auto", input=[[101, 2023]])
    vectors = [d.embedding for d in sorted(batch.data, key=lambda d: d.index)]
    assert len(vectors) == 3 and len(vectors[0]) == len(floats.data[0].embedding) > 0
    assert max(abs(a - b) for a, b in zip(vectors[0], floats.data[0].embedding, strict=True)) < 1e-6

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True)) / (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.05  # the same sentence, two languages
    assert batch.model == floats.model != "text-embedding-3-small"  # memory's one model, named
    assert batch.usage.prompt_tokens > 0
    assert empty.value.body["param"] == "input" and token_ids.value.body["param"] == "input"  # type: ignore[index]
