"""``python -m moteur.tools``: healthy, UNIMPLEMENTED until issue #7 (function calling)."""

from __future__ import annotations

from moteur.runtime.server import not_built_app, run
from moteur.v1 import tools_pb2, tools_pb2_grpc

app = not_built_app(
    "tools", tools_pb2.DESCRIPTOR.services_by_name["Tools"], tools_pb2_grpc.ToolsServicer,
    tools_pb2_grpc.add_ToolsServicer_to_server, "issue #7 (function calling)",
)

if __name__ == "__main__":
    run(app)
