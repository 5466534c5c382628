"""``python -m moteur.tools``: healthy, UNIMPLEMENTED until issue #7 (function calling)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from moteur.runtime.server import Registration, ServiceApp, not_built_servicer, run
from moteur.v1 import tools_pb2, tools_pb2_grpc

DESCRIPTOR = tools_pb2.DESCRIPTOR.services_by_name["Tools"]


async def build() -> AsyncIterator[Sequence[Registration]]:
    servicer = not_built_servicer(DESCRIPTOR, tools_pb2_grpc.ToolsServicer, "issue #7 (function calling)")
    yield [Registration(DESCRIPTOR, servicer, tools_pb2_grpc.add_ToolsServicer_to_server)]


app = ServiceApp("tools", build)

if __name__ == "__main__":
    run(app)
