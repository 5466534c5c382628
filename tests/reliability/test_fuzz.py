"""Fuzzing every RPC: hypothesis builds request messages from the protobuf descriptors (random values of
every field, huge strings, invalid UTF-8 in bytes, deep and broken JSON in JSON fields, enum numbers and
integers out of range, random ids) and sends them to the gateway (with an API key) and to the internal
services (with a signed mesh token of an admin). A call may succeed or be refused with a status that names
the caller's mistake; INTERNAL, UNKNOWN or a dead service fail the test. A second pass sends bytes that are
no valid request — random bytes, and valid requests with bytes flipped, cut or repeated — which must be
refused as INVALID_ARGUMENT (or pass, when the mutation still decodes) and never crash the service.

10,000 cases in all, spread over the RPCs; derandomized so a failure replays the same case. Chat turns go
to the instant model so the run stays within a few minutes.
"""

from __future__ import annotations

import json
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moteur.client.requests import auth_metadata
from moteur.devstack.stack import SERVICES, LocalStack
from moteur.runtime.identity import Identity
from moteur.v1 import (
    files_pb2,
    files_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
)
from tests.mesh import signed

TOTAL_CASES = 10_000
CALL_DEADLINE = 15.0
ALLOWED = frozenset({
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.ABORTED,
})
TENANT = "fuzz"
MESH = Identity(TENANT, "fuzzer", "standard", admin=True)  # admin: PutTemplate is fuzzed too
# Tool names worth aiming at (http_get is left out: a random URL would leave the machine).
TOOL_NAMES = ["calculator", "datetime_now", "convert_units", "knowledge_search", "generate_file"]

# -- values --------------------------------------------------------------------------------------------

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [v for v in (low, high, -1, 0, 1, 2, 5, 100, 10_000, 2**31 - 1) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def _deep_json() -> st.SearchStrategy[str]:
    depth = st.sampled_from([50, 1_000, 100_000])
    return st.one_of(
        depth.map(lambda n: "[" * n + "]" * n),
        depth.map(lambda n: '{"a":' * n + "1" + "}" * n),
        depth.map(lambda n: "[" * n),  # never closed
    )


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)

JSON_TEXT = st.one_of(
    _json_values.map(json.dumps),
    st.sampled_from(['{"type": "object"}', '{"type": "object", "properties": {"x": {"type": "nope"}}}',
                     '{"expression": "1+1"}', '{"expression": "__import__(\'os\')"}', "", "null", "{",
                     "NaN", '{"a": Infinity}', '{"$ref": "#"}']),
    _deep_json(),
    st.text(max_size=50),
)
ULID_CHARS = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
IDS = st.one_of(st.just(""), st.text(ULID_CHARS, min_size=26, max_size=26), st.text(max_size=40),
                st.sampled_from(["../../etc/passwd", "$where", '{"$gt": ""}', "a" * 5000, "\x00"]))
HUGE = st.sampled_from([10_000, 100_000, 300_000]).map(lambda n: "é" * n)
TEXT = st.one_of(st.text(max_size=60), st.text(string.printable, max_size=300), HUGE,
                 st.sampled_from(["{{ ''.__class__.__mro__ }}", "{% for x in range(10**9) %}{% endfor %}",
                                  "\u202e\u0000\ufeff", "🙂" * 100]))
BYTES = st.one_of(st.binary(max_size=64), st.sampled_from([b"\xff\xfe\xfd", b"\xc3\x28", b"\xed\xa0\x80",
                                                          b"%PDF-1.4\n\xff", b"\x00" * 1000]))


def _string_field(field: FieldDescriptor, overrides: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    if field.name in overrides:
        return overrides[field.name]
    if "json" in field.name or "schema" in field.name:
        return JSON_TEXT
    if field.name == "id" or field.name.endswith("_id") or field.name.endswith("_ids") or field.name == "ids":
        return IDS
    return TEXT


def _scalar(field: FieldDescriptor, overrides: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _string_field(field, overrides)
    if kind == FieldDescriptor.TYPE_BYTES:
        return BYTES
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(width=32 if kind == FieldDescriptor.TYPE_FLOAT else 64)
    if kind == FieldDescriptor.TYPE_ENUM:  # open enums: unknown numbers travel as they are
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), _integers(-3, 2**31 - 1))
    return _integers(*_INT_RANGES[kind])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30,
)


def messages(descriptor: Descriptor, cls: type[Message], overrides: dict[str, st.SearchStrategy[Any]] | None = None,
             depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor`` with a random subset of fields set to random values."""
    overrides = overrides or {}
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = field.message_type
            if sub.full_name == "google.protobuf.Struct":  # JSON objects: rows and template data
                parts[field.name] = st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=4)
                continue
            if sub.GetOptions().map_entry:
                key, value = (_scalar(sub.fields_by_name[n], overrides) for n in ("key", "value"))
                parts[field.name] = st.dictionaries(key, value, max_size=3)
                continue
            if depth >= 3:
                continue
            child = messages(sub, _message_class(cls, field), overrides, depth + 1)
            parts[field.name] = st.lists(child, max_size=3) if _repeated(field) else child
        else:
            value = _scalar(field, overrides)
            parts[field.name] = st.lists(value, max_size=4) if _repeated(field) else value
    chosen = st.fixed_dictionaries({}, optional=parts)
    return chosen.map(lambda values: _build(cls, values))


def _repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated


def _message_class(cls: type[Message], field: FieldDescriptor) -> type[Message]:
    return type(getattr(cls(), field.name)) if not _repeated(field) else type(getattr(cls(), field.name).add())


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        target = getattr(message, name)
        if isinstance(value, dict):
            target.update(value)
        elif isinstance(value, list) and value and isinstance(value[0], Message):
            for item in value:
                target.add().CopyFrom(item)
        elif isinstance(value, list):
            target.extend(value)
        elif isinstance(value, Message):
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


# -- the RPCs ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rpc:
    service: str  # the stack's process name
    stub: Callable[[grpc.Channel], Any]
    name: str
    overrides: tuple[tuple[str, st.SearchStrategy[Any]], ...] = ()

    def __str__(self) -> str:
        return f"{self.service}.{self.name}"


_INSTANT = (("model_hint", st.just("instant")), ("name", st.one_of(st.sampled_from(TOOL_NAMES), TEXT)),
            ("user_id", st.one_of(st.just(""), st.just("fuzzer"), IDS)))
_STUBS = {"gateway": gateway_pb2_grpc.GatewayStub, "router": router_pb2_grpc.RouterStub,
          "memory": memory_pb2_grpc.MemoryStub, "files": files_pb2_grpc.FilesStub, "tools": tools_pb2_grpc.ToolsStub}
_PROTOS = {"gateway": gateway_pb2, "router": router_pb2, "memory": memory_pb2, "files": files_pb2,
           "tools": tools_pb2}


def _all_rpcs() -> list[Rpc]:
    rpcs = []
    for service, module in _PROTOS.items():
        for svc in module.DESCRIPTOR.services_by_name.values():
            for method in svc.methods:
                rpcs.append(Rpc(service, _STUBS[service], method.name, _INSTANT))
    return rpcs


RPCS = _all_rpcs()
CASES_PER_RPC = TOTAL_CASES // len(RPCS) + 1
# Found by this test and not fixed yet (see the reliability notes of issue 9); each case replays with
# derandomize. Remove an entry when its fix lands: the test then guards it.
# RPCs whose findings are not fixed yet (each an xfail with its reason); empty: every RPC is held to it.
KNOWN: dict[str, str] = {}
# Statuses an RPC may answer beside ALLOWED, with why. A document of up to 300,000 characters is hundreds of
# passages for E5, embedded one after another at 20-50 a second on 2 shared cores: it may rightly outlast the
# fuzzer's 15 s deadline, and DEADLINE_EXCEEDED is then the right answer (chunks have stable ids: the caller's
# retry stores the rest without duplicates).
SLOW: dict[str, frozenset[grpc.StatusCode]] = {
    "gateway.UpsertDocument": frozenset({grpc.StatusCode.DEADLINE_EXCEEDED}),
    "memory.UpsertDocument": frozenset({grpc.StatusCode.DEADLINE_EXCEEDED}),
}
CASES = [pytest.param(rpc, marks=pytest.mark.xfail(reason=KNOWN[str(rpc)], strict=False)) if str(rpc) in KNOWN
         else rpc for rpc in RPCS]


def _request_class(rpc: Rpc) -> tuple[Descriptor, type[Message]]:
    method = next(iter(_PROTOS[rpc.service].DESCRIPTOR.services_by_name.values())).methods_by_name[rpc.name]
    return method.input_type, message_factory.GetMessageClass(method.input_type)


def _call(channel: grpc.Channel, rpc: Rpc, request: Message,
          metadata: list[tuple[str, str]]) -> tuple[grpc.StatusCode, str]:
    """The status the call ended with, and its message (which names the cause when a test fails)."""
    method = getattr(rpc.stub(channel), rpc.name)
    try:
        reply = method(request, metadata=metadata, timeout=CALL_DEADLINE)
        if not isinstance(reply, Message):  # a server stream: read it to the end
            for _ in reply:
                pass
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def _healthy(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _metadata(rpc: Rpc, fuzz_key: str) -> list[tuple[str, str]]:
    """An API key for the gateway, a fresh mesh token (tokens expire) for an internal service."""
    return auth_metadata(fuzz_key) if rpc.service == "gateway" else signed(MESH)


def _mutations(valid: Message) -> st.SearchStrategy[bytes]:
    """Bytes near a valid request: flipped, cut, repeated, or spliced with random bytes."""
    raw = valid.SerializeToString()

    def flip(data: bytes, at: int, mask: int) -> bytes:
        if not data:
            return bytes([mask])
        at %= len(data)
        return data[:at] + bytes([data[at] ^ mask]) + data[at + 1:]

    return st.one_of(
        st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)).map(lambda c: flip(raw, *c)),
        st.integers(0, max(len(raw) - 1, 0)).map(lambda n: raw[:n]),
        st.binary(min_size=1, max_size=16).map(lambda junk: raw + junk),
        st.sampled_from([b"\x0a\x02\xc3\x28", b"\x12\x03\xff\xfe\xfd", b"\x0a\xff\xff\xff\xff\x0f",
                         b"\x08", b"\xff" * 8]),
    )


def _call_raw(channel: grpc.Channel, rpc: Rpc, payload: bytes, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    """Send ``payload`` as the request's bytes, whatever they hold."""
    service = next(iter(_PROTOS[rpc.service].DESCRIPTOR.services_by_name.values()))
    path = f"/{service.full_name}/{rpc.name}"
    streaming = service.methods_by_name[rpc.name].server_streaming
    call = (channel.unary_stream if streaming else channel.unary_unary)(path)  # bytes in, bytes out
    try:
        reply = call(payload, metadata=metadata, timeout=CALL_DEADLINE)
        if streaming:
            for _ in reply:
                pass
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
async def fuzz_key(key_store) -> str:
    """A service key (no per-user limits, 6,000 requests a minute) so that fuzzing is not rate limited."""
    key, _ = await key_store.create(TENANT, "", "service")
    return key


@pytest.mark.timeout(600)
@pytest.mark.parametrize("rpc", CASES, ids=str)
def test_random_requests_get_only_the_right_statuses(stack: LocalStack, fuzz_key: str, rpc: Rpc) -> None:
    descriptor, cls = _request_class(rpc)
    seen: dict[grpc.StatusCode, int] = {}
    started = time.monotonic()
    with grpc.insecure_channel(stack.address(rpc.service), options=[
            ("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)]) as channel:

        @settings(max_examples=CASES_PER_RPC, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(request=messages(descriptor, cls, dict(rpc.overrides)))
        def one_case(request: Message) -> None:
            code, details = _call(channel, rpc, request, _metadata(rpc, fuzz_key))
            seen[code] = seen.get(code, 0) + 1
            assert code in ALLOWED | SLOW.get(str(rpc), frozenset()), \
                f"{rpc} answered {code.name} ({details!r}) to {str(request)[:2000]}"

        one_case()
    down = [s for s in SERVICES if not stack.processes[s].running() or not _healthy(stack.address(s))]
    assert not down, f"after fuzzing {rpc}: {down} not serving"
    print(f"\n{rpc}: {sum(seen.values())} cases in {time.monotonic() - started:.1f} s: "
          + ", ".join(f"{c.name} {n}" for c, n in sorted(seen.items(), key=lambda i: -i[1])))


RAW_CASES_PER_RPC = 60


@pytest.mark.timeout(600)
@pytest.mark.parametrize("rpc", RPCS, ids=str)
def test_bytes_that_are_no_valid_request_are_invalid_argument(stack: LocalStack, fuzz_key: str, rpc: Rpc) -> None:
    descriptor, cls = _request_class(rpc)
    seen: dict[grpc.StatusCode, int] = {}
    with grpc.insecure_channel(stack.address(rpc.service)) as channel:

        @settings(max_examples=RAW_CASES_PER_RPC, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(payload=st.one_of(st.binary(min_size=1, max_size=256),
                                 messages(descriptor, cls, dict(rpc.overrides)).flatmap(_mutations)))
        def one_case(payload: bytes) -> None:
            code = _call_raw(channel, rpc, payload, _metadata(rpc, fuzz_key))
            seen[code] = seen.get(code, 0) + 1
            assert code in ALLOWED, f"{rpc} answered {code.name} to the bytes {payload[:200]!r}"

        one_case()
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 0, f"{rpc}: no malformed request was refused: {seen}"
    down = [s for s in SERVICES if not stack.processes[s].running() or not _healthy(stack.address(s))]
    assert not down, f"after sending {rpc} malformed bytes: {down} not serving"
    print(f"\n{rpc} (bytes): " + ", ".join(f"{c.name} {n}" for c, n in sorted(seen.items(), key=lambda i: -i[1])))
