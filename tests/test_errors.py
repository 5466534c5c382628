"""The one mapping from domain errors (and store failures) to gRPC status and google.rpc details."""

from __future__ import annotations

import asyncio

import grpc
import pymongo.errors
import pytest
from google.rpc import error_details_pb2, status_pb2

from moteur.runtime.errors import (
    InvalidArgument,
    NotFound,
    QuotaViolation,
    ResourceExhausted,
    Unavailable,
    to_grpc_status,
)
from moteur.runtime.interceptors import translate_exception
from moteur.runtime.mongo import Insert, connect_mongo, write_together
from moteur.runtime.settings import MongoSettings


def _decode(status: grpc.Status) -> status_pb2.Status:
    (value,) = [v for k, v in status.trailing_metadata if k == "grpc-status-details-bin"]
    return status_pb2.Status.FromString(value)


def test_invalid_argument_names_the_field_in_bad_request() -> None:
    status = to_grpc_status(InvalidArgument("message", "must not be empty"))
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == "message: must not be empty"
    bad_request = error_details_pb2.BadRequest()
    assert _decode(status).details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [("message", "must not be empty")]


def test_resource_exhausted_carries_quota_failure_and_a_computed_retry_delay() -> None:
    error = ResourceExhausted(
        "too many requests", retry_after_seconds=1.25,
        violations=[QuotaViolation("tenant:acme", "requests_per_minute limit of 60 reached")],
    )
    details = _decode(to_grpc_status(error)).details
    failure, retry = error_details_pb2.QuotaFailure(), error_details_pb2.RetryInfo()
    assert details[0].Unpack(failure) and details[1].Unpack(retry)
    assert failure.violations[0].subject == "tenant:acme"
    assert retry.retry_delay.ToNanoseconds() == 1_250_000_000


def test_errors_without_details_still_map_their_code() -> None:
    status = to_grpc_status(NotFound("session X not found"))
    assert status.code is grpc.StatusCode.NOT_FOUND
    assert _decode(status).details == []


async def _cut_on(marker: bytes, upstream: tuple[str, int]) -> asyncio.Server:
    """A TCP relay to MongoDB that drops the connection when a command containing ``marker`` goes through."""

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*upstream)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, watch: bool) -> None:
            while chunk := await source.read(65536):
                if watch and marker in chunk:
                    break
                sink.write(chunk)
                await sink.drain()
            writer.close()
            server_writer.close()

        await asyncio.gather(pipe(reader, server_writer, True), pipe(server_reader, writer, False),
                             return_exceptions=True)

    return await asyncio.start_server(relay, "127.0.0.1", 0)


async def test_a_connection_lost_in_a_multi_collection_write_is_unavailable(stack) -> None:
    # PyMongo wraps a network error of client.bulk_write in ClientBulkWriteException: it was INTERNAL once.
    host, port = stack.mongo_uri.removeprefix("mongodb://").split("/")[0].split(":")
    relay = await _cut_on(b"bulkWrite", (host, int(port)))
    relay_port = relay.sockets[0].getsockname()[1]
    client = connect_mongo(MongoSettings(mongo_uri=f"mongodb://127.0.0.1:{relay_port}/?directConnection=true"))
    try:
        with pytest.raises(pymongo.errors.PyMongoError) as lost:
            await write_together(client, [Insert("moteur.relay_test", {"_id": 1, "x": 1})])
        error = translate_exception(lost.value)
        assert isinstance(error, Unavailable) and "MongoDB" in error.message
    finally:
        await client.close()
        relay.close()
