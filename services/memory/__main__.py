"""``python -m moteur.memory``: healthy, UNIMPLEMENTED until issue #6 (memory and semantic search)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from moteur.runtime.server import Registration, ServiceApp, not_built_servicer, run
from moteur.v1 import memory_pb2, memory_pb2_grpc

DESCRIPTOR = memory_pb2.DESCRIPTOR.services_by_name["Memory"]


async def build() -> AsyncIterator[Sequence[Registration]]:
    servicer = not_built_servicer(DESCRIPTOR, memory_pb2_grpc.MemoryServicer, "issue #6 (memory and semantic search)")
    yield [Registration(DESCRIPTOR, servicer, memory_pb2_grpc.add_MemoryServicer_to_server)]


app = ServiceApp("memory", build)

if __name__ == "__main__":
    run(app)
