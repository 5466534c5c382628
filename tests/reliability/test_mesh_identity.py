"""Inside the mesh nothing is trusted by address: every RPC of every internal service refuses a caller that
cannot show a mesh token the gateway signed for it, before any handler runs, and a valid token of one tenant
reaches none of another tenant's resources."""

from __future__ import annotations

import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import message_factory

from moteur.devstack.stack import LocalStack
from moteur.runtime.identity import SCOPE_MEMORY_WRITE, TOKEN_HEADER, Identity
from moteur.runtime.mesh_tokens import MeshTokenIssuer, key_id
from moteur.v1 import (
    common_pb2,
    files_pb2,
    files_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    router_pb2,
    tools_pb2,
)
from tests.mesh import signed

PROTOS = {"router": router_pb2, "memory": memory_pb2, "files": files_pb2, "tools": tools_pb2}
INTERNAL_RPCS = [(service, method) for service, module in PROTOS.items()
                 for svc in module.DESCRIPTOR.services_by_name.values() for method in svc.methods]
ALICE = Identity("acme", "alice", "standard")
# What a caller without the gateway's key might send: the headers internal services used to believe.
FORGED_HEADERS = [("x-moteur-tenant", "acme"), ("x-moteur-user", "alice"), ("x-moteur-tier", "enterprise")]


def _call(stack: LocalStack, service: str, method: object, metadata: list[tuple[str, str]]) -> grpc.RpcError:
    request = message_factory.GetMessageClass(method.input_type)()
    path = f"/{method.containing_service.full_name}/{method.name}"
    with grpc.insecure_channel(stack.address(service)) as channel:
        streaming = method.server_streaming
        call = (channel.unary_stream if streaming else channel.unary_unary)(
            path, request_serializer=lambda m: m.SerializeToString())
        with pytest.raises(grpc.RpcError) as refused:
            reply = call(request, metadata=metadata, timeout=10)
            if streaming:
                list(reply)
    return refused.value


def _gateway_key(stack: LocalStack) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key((stack.mesh_keys_dir / "gateway.key").read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def _token(stack: LocalStack, **claims: object) -> str:
    """A token signed with the gateway's real key, with ``claims`` over the usual ones."""
    base = jwt.decode(stack.mesh_issuer().sign(ALICE, seconds=60).token, options={"verify_signature": False})
    private = _gateway_key(stack)
    return jwt.encode({**base, **claims}, private, algorithm="EdDSA", headers={"kid": key_id(private.public_key())})


def _bad_credentials(stack: LocalStack) -> dict[str, list[tuple[str, str]]]:
    now = int(time.time())
    stranger = Ed25519PrivateKey.generate()
    gateway_kid = key_id(_gateway_key(stack).public_key())
    return {
        "no token": [],
        "forged headers": FORGED_HEADERS,
        "forged headers and a made-up token": [*FORGED_HEADERS, (TOKEN_HEADER, "eyJhbGciOiJub25lIn0.e30.")],
        "expired token": [(TOKEN_HEADER, _token(stack, iat=now - 120, exp=now - 60))],
        "token signed by another key": [(TOKEN_HEADER, MeshTokenIssuer("gateway", stranger).sign(ALICE).token)],
        "another key claiming the gateway's key id": [(TOKEN_HEADER, jwt.encode(
            jwt.decode(_token(stack), options={"verify_signature": False}), stranger, algorithm="EdDSA",
            headers={"kid": gateway_kid}))],
        "token for no internal service": [(TOKEN_HEADER, _token(stack, aud=["gateway-http"]))],
    }


@pytest.mark.parametrize(("service", "method"), INTERNAL_RPCS, ids=lambda v: getattr(v, "name", v))
def test_every_internal_rpc_refuses_a_caller_without_a_valid_token(stack: LocalStack, service: str,
                                                                     method: object) -> None:
    for what, metadata in _bad_credentials(stack).items():
        refused = _call(stack, service, method, metadata)
        assert refused.code() is grpc.StatusCode.UNAUTHENTICATED, (what, refused.code(), refused.details())
        assert refused.details(), what


def test_a_token_for_one_service_is_refused_by_another(stack: LocalStack) -> None:
    """The outbox relay's identity may write memories and let memory ask a model; files never see it."""
    relay = stack.mesh_issuer().sign(Identity("acme", "", "internal", scopes=frozenset({SCOPE_MEMORY_WRITE})),
                                     audience={"memory", "router"})
    method = files_pb2.DESCRIPTOR.services_by_name["Files"].methods_by_name["ListFiles"]
    refused = _call(stack, "files", method, relay.as_metadata())
    assert refused.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "not meant for the files service" in refused.details()
    search = memory_pb2.DESCRIPTOR.services_by_name["Memory"].methods_by_name["Search"]
    refused = _call(stack, "memory", search, relay.as_metadata())
    assert refused.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "memory.read" in refused.details()


def test_only_an_admin_token_may_store_a_template(stack: LocalStack) -> None:
    method = files_pb2.DESCRIPTOR.services_by_name["Files"].methods_by_name["PutTemplate"]
    refused = _call(stack, "files", method, signed(ALICE))
    assert refused.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "templates.write" in refused.details()


async def test_a_valid_token_of_one_tenant_reaches_none_of_another_tenants_resources(stack: LocalStack) -> None:
    bob = Identity("globex", "bob", "standard")
    async with grpc.aio.insecure_channel(stack.address("files")) as channel:
        files = files_pb2_grpc.FilesStub(channel)
        theirs = await files.Render(files_pb2.RenderRequest(format=common_pb2.FILE_FORMAT_MARKDOWN,
                                                            markdown="globex only"), metadata=signed(bob), timeout=60)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await files.DeleteFile(files_pb2.DeleteFileRequest(file_id=theirs.ref.file_id), metadata=signed(ALICE),
                                   timeout=10)
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in files.GetFile(files_pb2.GetFileRequest(file_id=theirs.ref.file_id),
                                         metadata=signed(ALICE), timeout=10):
                pass
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        listed = await files.ListFiles(files_pb2.ListFilesRequest(), metadata=signed(ALICE), timeout=10)
        assert theirs.ref.file_id not in {f.ref.file_id for f in listed.files}
    async with grpc.aio.insecure_channel(stack.address("memory")) as channel:
        memory = memory_pb2_grpc.MemoryStub(channel)
        stored = await memory.Upsert(memory_pb2.UpsertRequest(records=[memory_pb2.MemoryRecord(
            user_id="bob", text="Bob's locker code is 4711", kind=memory_pb2.MEMORY_KIND_FACT)]),
            metadata=signed(bob), timeout=30)
        acme_service = signed(Identity("acme", "", "service"))  # may act for any user, of its own tenant only
        found = await memory.Search(memory_pb2.SearchRequest(text="locker code", user_id="bob", top_k=5),
                                    metadata=acme_service, timeout=30)
        assert not found.hits
        listed_memories = await memory.List(memory_pb2.ListMemoriesRequest(user_id="bob", ids=list(stored.ids)),
                                            metadata=acme_service, timeout=30)
        assert not listed_memories.records
        mine = await memory.List(memory_pb2.ListMemoriesRequest(user_id="bob", ids=list(stored.ids)),
                                 metadata=signed(bob), timeout=30)
        assert [r.id for r in mine.records] == list(stored.ids)  # the same call with bob's token finds it
