"""``python -m moteur.files``: healthy, UNIMPLEMENTED until issue #8 (file generation)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from moteur.runtime.server import Registration, ServiceApp, not_built_servicer, run
from moteur.v1 import files_pb2, files_pb2_grpc

DESCRIPTOR = files_pb2.DESCRIPTOR.services_by_name["Files"]


async def build() -> AsyncIterator[Sequence[Registration]]:
    servicer = not_built_servicer(DESCRIPTOR, files_pb2_grpc.FilesServicer, "issue #8 (file generation)")
    yield [Registration(DESCRIPTOR, servicer, files_pb2_grpc.add_FilesServicer_to_server)]


app = ServiceApp("files", build)

if __name__ == "__main__":
    run(app)
