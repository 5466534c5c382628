"""A JSON answer from a model through the router, for services that need structured output (memory's fact
extraction, files' tables): one system prompt, one user message, a JSON Schema the answer should match."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from moteur.runtime.channels import call_service
from moteur.runtime.identity import Identity
from moteur.v1 import common_pb2, router_pb2, router_pb2_grpc

# (system, user, schema) -> the model's JSON text, unchecked: callers validate what they use.
Complete = Callable[[str, str, dict[str, object]], Awaitable[str]]


async def complete_json(
    router: router_pb2_grpc.RouterStub, identity: Identity, system: str, user: str, schema: dict[str, object], *,
    timeout: float, max_output_tokens: int, model_hint: str = "",
) -> str:
    """The model's answer text; router failures raise as the status to pass on (see call_service)."""
    request = router_pb2.CompleteRequest(
        messages=[router_pb2.PromptMessage(role=common_pb2.ROLE_SYSTEM, content=system),
                  router_pb2.PromptMessage(role=common_pb2.ROLE_USER, content=user)],
        request_type=common_pb2.REQUEST_TYPE_EXTRACT, json_output=True, json_schema=json.dumps(schema),
        max_output_tokens=max_output_tokens, temperature=0.0, model_hint=model_hint,
    )
    answer = await call_service(router.Complete, request, "router", identity, timeout)
    return answer.text
