"""``python -m moteur.files``: healthy, UNIMPLEMENTED until issue #8 (file generation)."""

from __future__ import annotations

from moteur.runtime.server import not_built_app, run
from moteur.v1 import files_pb2, files_pb2_grpc

app = not_built_app(
    "files", files_pb2.DESCRIPTOR.services_by_name["Files"], files_pb2_grpc.FilesServicer,
    files_pb2_grpc.add_FilesServicer_to_server, "issue #8 (file generation)",
)

if __name__ == "__main__":
    run(app)
