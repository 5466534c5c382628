"""``python -m moteur.memory``: healthy, UNIMPLEMENTED until issue #6 (memory and semantic search)."""

from __future__ import annotations

from moteur.runtime.server import not_built_app, run
from moteur.v1 import memory_pb2, memory_pb2_grpc

app = not_built_app(
    "memory", memory_pb2.DESCRIPTOR.services_by_name["Memory"], memory_pb2_grpc.MemoryServicer,
    memory_pb2_grpc.add_MemoryServicer_to_server, "issue #6 (memory and semantic search)",
)

if __name__ == "__main__":
    run(app)
