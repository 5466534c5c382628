"""A fault-injecting OpenAI-compatible server: proves retries, fallbacks, breakers and streaming fallback
over real HTTP. The behaviour is chosen by the request's model id, so one server plays many deployments:

- ``ok`` — a normal answer (streamed when asked), with usage; ``nousage`` — the same without usage;
  ``ok:<label>`` — ``ok``, under a label that tells deployments apart in the request log (below)
- ``status:<code>`` — that HTTP status (``status:400-context``: a context-length refusal)
- ``flaky:<n>`` — HTTP 500 for the first n calls of this model id, then ``ok``
- ``hang`` — never answers; ``slow:<ms>`` — waits that long before answering; a stream sends its headers
  at once and its first token that late (a model slow to start)
- ``malformed`` — HTTP 200 with a body that is not JSON; ``empty`` — a completion with no text
- ``cut:<n>`` — streams n tokens, then drops the connection; ``garbled:<n>`` — streams n tokens, then an
  event whose data is not JSON; ``stall:<n>`` — streams n tokens, then nothing more, the connection open
- ``script`` — plays tool calls scripted for the conversation's last user message (below)
- ``POST /v1/embeddings``: a seeded vector per input text (``dims=<n>`` in the model id sets its size)

Scripts: ``POST /scripts`` with ``{"match": "<user message>", "steps": [step, …]}`` where a step is
``{"text": "…"}`` or ``{"text": "…", "tool_calls": [{"name": "…", "arguments": {…} or "raw text"}]}``.
A request is at step n when n assistant messages follow its last user message (n tool rounds done), so
concurrent turns each play their own script; past the last step, the last step repeats (a model that
never stops calling tools). ``GET /scripts`` returns the requests each script received.

``POST /v1/messages`` speaks Anthropic's Messages API with the same behaviours but scripts, streamed too
(its event sequence: message_start, content_block_start, content_block_delta…, content_block_stop,
message_delta with the usage, message_stop).
``GET /requests`` shows the last request bodies per model id (what a deployment was sent: its system
prompt, its response_format); ``GET /stats`` counts calls per model id; ``POST /reset`` forgets both.
Loopback only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections import Counter, defaultdict, deque
from typing import Any

from aiohttp import web

ANSWER = "The fault server answers politely."
LOGGED = 20  # request bodies kept per model id: enough for a test, bounded for a long-lived server
BREAKS = ("cut", "garbled", "stall")  # modes that break a stream after n tokens


class FaultServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.calls: Counter[str] = Counter()
        self.scripts: dict[str, list[dict[str, Any]]] = {}
        self.script_requests: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        self.requests: defaultdict[str, deque[dict[str, Any]]] = defaultdict(lambda: deque(maxlen=LOGGED))
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._stats)
        app.router.add_get("/requests", self._request_log)
        app.router.add_post("/reset", self._reset)
        app.router.add_post("/scripts", self._add_script)
        app.router.add_get("/scripts", self._script_log)
        # Handlers that hang are cut at shutdown rather than awaited.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the port bound (the one asked for may be 0)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FaultServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [], "object": "list"})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self.calls))

    async def _request_log(self, request: web.Request) -> web.Response:
        return web.json_response({model: list(bodies) for model, bodies in self.requests.items()})

    async def _reset(self, request: web.Request) -> web.Response:
        self.calls.clear()
        self.requests.clear()
        return web.json_response({})

    async def _add_script(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.scripts[body["match"]] = body["steps"]
        return web.json_response({})

    async def _script_log(self, request: web.Request) -> web.Response:
        return web.json_response(self.script_requests)

    def _scripted(self, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        """The text and tool calls this request's script plays at its step."""
        messages = body.get("messages", [])
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        match = messages[last_user].get("content", "") if last_user >= 0 else ""
        steps = self.scripts.get(match) if isinstance(match, str) else None
        if not steps:
            return ANSWER, []
        self.script_requests[match].append(body)
        done = sum(1 for m in messages[last_user + 1:] if m.get("role") == "assistant")
        step = steps[min(done, len(steps) - 1)]
        calls = [{"id": f"call_{done}_{n}", "type": "function",
                  "function": {"name": c["name"], "arguments": c["arguments"] if isinstance(c["arguments"], str)
                               else json.dumps(c["arguments"])}}
                 for n, c in enumerate(step.get("tool_calls", []))]
        return step.get("text", ""), calls

    async def _misbehave(self, request: web.Request) -> tuple[str, str, str, dict[str, Any], web.Response | None]:
        """The behaviour the model id asks for; a response when it is an early one (error, garbage)."""
        body = await request.json()
        model: str = body.get("model", "ok")
        self.calls[model] += 1
        self.requests[model].append(body)
        mode, _, arg = model.partition(":")
        if mode == "flaky":
            mode = "status" if self.calls[model] <= int(arg) else "ok"
            arg = "500"
        if mode == "status":
            code, _, kind = arg.partition("-")
            message = "This model's maximum context length is 2048 tokens" if kind == "context" else f"error {code}"
            error = {"error": {"message": message, "type": "fault", "code": kind or None}}
            return model, mode, arg, body, web.json_response(error, status=int(code))
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "slow" and not body.get("stream"):  # a stream is slow to its first token (see _stream)
            await asyncio.sleep(int(arg) / 1000)
        if mode == "malformed":
            return model, mode, arg, body, web.Response(text="{this is not json", content_type="application/json")
        return model, mode, arg, body, None

    async def _embeddings(self, request: web.Request) -> web.Response:
        model, _, _, body, early = await self._misbehave(request)
        if early is not None:
            return early
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        size = int(model.partition("dims=")[2] or 8)
        data = [{"object": "embedding", "index": i, "embedding": _vector(str(text), size)}
                for i, text in enumerate(inputs)]
        return web.json_response({"object": "list", "data": data, "model": model,
                                  "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        model, mode, arg, body, early = await self._misbehave(request)
        if early is not None:
            return early
        text = "" if mode == "empty" else ANSWER
        usage = {"input_tokens": 12, "output_tokens": len(text.split())}
        if not body.get("stream"):
            return web.json_response({
                "id": "msg_fault", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": None, "usage": usage,
            })
        start: dict[str, Any] = {
            "id": "msg_fault", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 1}}
        head = [_event("message_start", {"message": start}),
                _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})]
        tokens = [_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": word}})
                  for word in _words(text)]
        # The usage in message_delta is cumulative, input tokens included: what langchain-anthropic reads.
        tail = [_event("content_block_stop", {"index": 0}),
                _event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                         "usage": usage}),
                _event("message_stop", {})]
        return await self._stream(request, mode, arg, head + tokens + tail, first=len(head), tokens=len(tokens),
                                  garbage=b"event: content_block_delta\ndata: {this is not json\n\n")

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        model, mode, arg, body, early = await self._misbehave(request)
        if early is not None:
            return early
        text, calls = self._scripted(body) if mode == "script" else ("" if mode == "empty" else ANSWER, [])
        if not body.get("stream"):
            return web.json_response(_completion(model, text, usage=mode != "nousage", calls=calls))
        tokens = [_sse(_chunk(model, {"content": word}, None)) for word in _words(text)]
        # as OpenAI streams tool calls: one indexed fragment per call
        tail = [_sse(_chunk(model, {"tool_calls": [{"index": index, **call}]}, None))
                for index, call in enumerate(calls)]
        tail.append(_sse(_chunk(model, {}, "tool_calls" if calls else "stop")))
        if mode != "nousage":
            tail.append(_sse({**_chunk(model, {}, None), "choices": [], "usage": _usage(text)}))
        tail.append(b"data: [DONE]\n\n")
        return await self._stream(request, mode, arg, tokens + tail, first=0, tokens=len(tokens),
                                  garbage=b"data: {this is not json\n\n")

    async def _stream(self, request: web.Request, mode: str, arg: str, events: list[bytes], first: int,
                      tokens: int, garbage: bytes) -> web.StreamResponse:
        """Server-sent ``events``, of which ``events[first:first + tokens]`` carry the text; the mode may
        delay the first event or break the stream after n tokens."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if mode == "slow":
            await asyncio.sleep(int(arg) / 1000)
        breaks_at = first + int(arg) if mode in BREAKS and int(arg) < tokens else None
        for index, event in enumerate(events):
            if index == breaks_at:
                await self._break(request, response, mode, garbage)
                return response
            await response.write(event)
            if first <= index < first + tokens:
                await asyncio.sleep(0.005)  # tokens come one by one, as a model writes them
        return response

    async def _break(self, request: web.Request, response: web.StreamResponse, mode: str, garbage: bytes) -> None:
        if mode == "cut":  # drop the connection mid-stream, as a crashed server would
            assert request.transport is not None
            request.transport.close()
        elif mode == "garbled":
            await response.write(garbage)
        else:  # stall: a server that stops writing but keeps the connection open
            await asyncio.sleep(3600)


def _vector(text: str, size: int) -> list[float]:
    """The same text, the same vector: a seeded random direction."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    return [rng.uniform(-1, 1) for _ in range(size)]


def _usage(text: str) -> dict[str, int]:
    output = len(text.split())
    return {"prompt_tokens": 12, "completion_tokens": output, "total_tokens": 12 + output}


def _completion(model: str, text: str, usage: bool, calls: list[dict[str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    answer: dict[str, Any] = {
        "id": "chatcmpl-fault", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
    }
    if usage:
        answer["usage"] = _usage(text)
    return answer


def _chunk(model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"id": "chatcmpl-fault", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _words(text: str) -> list[str]:
    """A text in the deltas a model would stream: words, each after the first with its leading space."""
    words = text.split(" ") if text else []
    return [word if index == 0 else " " + word for index, word in enumerate(words)]


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    """An Anthropic stream event: its SDK reads only events that name their type."""
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **payload})}\n\n".encode()


async def _serve(port: int) -> None:
    async with FaultServer(port=port) as server:
        print("ready", server.port, flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":  # python -m moteur.devstack.faults PORT: for benchmarks, in its own process
    import sys

    asyncio.run(_serve(int(sys.argv[1])))
