"""Security checks on the session stack that other files do not already make.

Already proved elsewhere (not repeated here): another tenant's session is NOT_FOUND for GetSession, Chat and
DeleteSession (e2e/test_bad_input.py), its pending turn for SubmitToolResults (e2e/test_tool_loop.py), its
files for GetFile/DeleteFile (e2e/test_chat_files.py, e2e/test_files.py), its MCP tools for tools Invoke
(e2e/test_tools.py), its memories in search and recall (e2e/test_memory.py, e2e/test_recall.py); the
calculator never evaluates ``__import__`` (e2e/test_tools.py); http_get refuses loopback and metadata
addresses as a unit (test_http_get.py); a template reaching ``__subclasses__`` is refused (e2e/test_files.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import pytest
import yaml
from bson import json_util

from moteur.client import MoteurClientError
from moteur.devstack.stack import LocalStack
from moteur.runtime.api_keys import hash_key
from moteur.runtime.identity import Identity
from moteur.v1 import common_pb2, router_pb2, router_pb2_grpc, tools_pb2, tools_pb2_grpc
from tests.mesh import signed

PROVIDER_SECRET = "sk-provider-" + "7f3a9c" * 6  # what a provider key in a Secret looks like to the router


async def _refused(call) -> grpc.StatusCode:
    with pytest.raises(MoteurClientError) as refused:
        await call
    return refused.value.code


async def _dump(mongo) -> str:
    """Every document of every collection of the moteur database, as text."""
    db = mongo["moteur"]
    parts = []
    for name in await db.list_collection_names():
        parts += [json_util.dumps(doc) async for doc in db[name].find({})]
    return "\n".join(parts)


async def test_api_keys_are_stored_hashed_and_never_in_plaintext(alice, mallory, mongo) -> None:
    await alice.client.chat("Remember that I like tea.", model_hint="instant")
    stored = await mongo["moteur"]["api_keys"].find_one({"hash": hash_key(alice.key)})
    assert stored is not None and stored["hash"] != alice.key and len(stored["hash"]) == 64
    dump = await _dump(mongo)
    for key in (alice.key, mallory.key):
        assert key not in dump and key.split("_", 1)[-1] not in dump, "a plaintext API key is in the database"


async def test_another_tenants_memories_and_documents_are_not_found(alice, mallory) -> None:
    document = await alice.client.upsert_document("The acme vault code is 4711.", title="vault")
    memories = await alice.client.list_memories()
    memory_id = memories.records[0].id
    for call in (mallory.client.update_memory(memory_id, "owned"), mallory.client.delete_memory(memory_id),
                 mallory.client.delete_document(document.document_id)):
        assert await _refused(call) is grpc.StatusCode.NOT_FOUND
    assert memory_id not in {r.id for r in (await mallory.client.list_memories()).records}
    assert memory_id in {r.id for r in (await alice.client.list_memories()).records}, "alice's memory was touched"


async def test_another_tenants_session_lists_none_of_its_files(alice, mallory) -> None:
    reply = await alice.client.chat("A table please.", model_hint="instant")
    assert not (await mallory.client.list_files(session_id=reply.session_id)).files


async def test_a_template_reaching_for_python_internals_is_refused(make_caller) -> None:
    admin = await make_caller("acme", "", admin=True)  # templates are the tenant admin's
    code = await _refused(admin.client.put_template("mro", "{{ ''.__class__.__mro__ }}", ["markdown"]))
    assert code is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/", "http://169.254.169.254/latest/meta-data/",
                                 "http://[::1]/", "http://localhost/"])
async def test_http_get_through_the_tools_service_refuses_internal_addresses(stack: LocalStack, url: str) -> None:
    call = common_pb2.ToolCall(id="c1", name="http_get", arguments_json=json.dumps({"url": url}))
    async with grpc.aio.insecure_channel(stack.address("tools")) as channel:
        result = await tools_pb2_grpc.ToolsStub(channel).Invoke(
            tools_pb2.InvokeRequest(call=call), metadata=signed(Identity("acme", "alice", "standard")),
            timeout=10)
    assert not result.ok and result.error_code in {"host_not_allowed", "address_not_allowed"}, result


@pytest.fixture(scope="module")
def secret_router(stack: LocalStack, fault_server: str):
    """A router replica with one provider whose key comes from an environment variable, as in a cluster."""
    models = yaml.safe_load(stack.models_file.read_text())
    models["models"].append({"name": "keyed", "provider": "openai", "model": "keyed", "base_url": f"{fault_server}/v1",
                             "api_key_env": "MOTEUR_TEST_PROVIDER_KEY", "timeout_seconds": 5})
    path = Path(stack.data_dir, "models-keyed.yaml")
    path.write_text(yaml.safe_dump(models))
    process, address = stack.extra_service("router", "router-keyed", MOTEUR_MODELS_FILE=str(path),
                                           MOTEUR_TEST_PROVIDER_KEY=PROVIDER_SECRET, MOTEUR_LOG_LEVEL="DEBUG")
    process.start()
    yield address
    process.stop()


async def test_no_secret_is_ever_written_to_a_log(stack: LocalStack, secret_router: str, alice, mallory) -> None:
    async with grpc.aio.insecure_channel(secret_router) as channel:
        request = router_pb2.CompleteRequest(model_hint="keyed", messages=[
            router_pb2.PromptMessage(role=common_pb2.ROLE_USER, content="hello")])
        try:
            await router_pb2_grpc.RouterStub(channel).Complete(
                request, metadata=signed(Identity("acme", "alice", "standard")), timeout=15)
        except grpc.aio.AioRpcError:
            pass  # answered or not, the key went over the wire; what matters is what was logged
    for client in (alice, mallory):
        await client.client.chat(f"{USER_TEXT} {client.user}", model_hint="instant")
        await client.client.list_sessions()
    with pytest.raises(MoteurClientError):
        await alice.client.get_session("01ZZZZZZZZZZZZZZZZZZZZZZZZ")  # an error path logs too
    with pytest.raises(MoteurClientError):  # refused in the runtime: a NUL in a metadata key
        await alice.client.chat(USER_TEXT, model_hint="instant", metadata={"k\x00": USER_TEXT})
    # A mesh token is a JWT: its header always starts with "eyJ" (base64 of '{"').
    leaks = _logs_containing(Path(stack.data_dir, "logs"), [alice.key, mallory.key, PROVIDER_SECRET, USER_TEXT,
                                                             "eyJ"])
    assert not leaks, f"secrets, tokens or user text written to {leaks}"


async def test_request_log_lines_name_the_tenant_and_user_in_every_service(stack: LocalStack, alice) -> None:
    await alice.client.chat("Note that I like tea", model_hint="instant")
    await alice.client.list_memories()  # the gateway, then memory on alice's behalf

    def rpc_lines(service: str) -> list[dict[str, object]]:
        lines = Path(stack.data_dir, "logs", f"{service}.log").read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{") and '"event": "rpc"' in line]

    for service in ("gateway", "router", "memory"):
        named = {(line.get("tenant"), line.get("user")) for line in rpc_lines(service)}
        assert ("acme", "alice") in named, f"{service}: no request line names acme/alice: {sorted(map(str, named))}"


USER_TEXT = "zanzibar platypus 7731"  # what a user wrote: no log line may hold it


def _logs_containing(logs: Path, secrets: list[str]) -> list[str]:
    files = sorted(logs.glob("*.log"))
    assert files, f"no logs under {logs}"
    return [f.name for f in files if any(s in f.read_text(errors="replace") for s in secrets)]


async def test_bytes_that_are_no_request_get_a_status_and_a_json_log_line(stack: LocalStack, alice) -> None:
    request_id = "01BADBYTESREQUEST000000000"
    async with grpc.aio.insecure_channel(stack.address("gateway")) as channel:
        chat = channel.unary_unary("/moteur.v1.Gateway/Chat")  # bytes in, bytes out
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await chat(b"\x0a\x02\xc3\x28", metadata=[("authorization", f"Bearer {alice.key}"),
                                                      ("x-request-id", request_id)], timeout=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid UTF-8" in (refused.value.details() or "")
    logged = await asyncio.to_thread(_logged, Path(stack.data_dir, "logs", "gateway.log"), request_id)
    assert [(e["event"], e["method"], e["code"]) for e in logged] == [("rpc", "Chat", "INVALID_ARGUMENT")]


def _logged(log: Path, request_id: str) -> list[dict[str, object]]:
    """The JSON lines of one request, once written (the service writes them as the call ends)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in log.read_text(errors="replace").splitlines() if request_id in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)
