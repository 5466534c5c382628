"""``python -m moteur.files``: renders answers into files through templates, stores and streams them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial

from moteur.files.service import FileService
from moteur.files.servicer import FilesServicer
from moteur.files.settings import FilesSettings
from moteur.files.storage import open_storage
from moteur.files.store import FileStore, TemplateStore
from moteur.files.tables import AskModel
from moteur.runtime.channels import open_channel
from moteur.runtime.completion import complete_json
from moteur.runtime.identity import SCOPE_FILES_READ, SCOPE_FILES_WRITE, SCOPE_TEMPLATES_WRITE, Identity
from moteur.runtime.mongo import connect_mongo, database
from moteur.runtime.server import Registration, ServiceApp, run
from moteur.runtime.settings import MeshSettings, MongoSettings
from moteur.runtime.tasks import cancel_and_wait
from moteur.v1 import files_pb2, files_pb2_grpc, router_pb2_grpc

TABLE_MAX_OUTPUT_TOKENS = 2048


def table_model(router: router_pb2_grpc.RouterStub, settings: FilesSettings) -> Callable[[Identity], AskModel]:
    """The model call that finds rows in a text, on behalf of the caller (the router accounts it to them)."""

    def for_caller(identity: Identity) -> AskModel:
        return partial(complete_json, router, identity, timeout=settings.files_table_timeout_seconds,
                       max_output_tokens=TABLE_MAX_OUTPUT_TOKENS, model_hint=settings.files_table_model)

    return for_caller


async def build() -> AsyncIterator[Sequence[Registration]]:
    settings, mongo_settings = FilesSettings(), MongoSettings()
    mongo = connect_mongo(mongo_settings)
    db = database(mongo, mongo_settings)
    files, templates = FileStore(db), TemplateStore(db)
    await files.ensure_indexes()
    await templates.ensure_indexes()
    service = FileService(files, templates, open_storage(settings), settings)
    await service.start()  # warm render workers before the first call
    router_channel = open_channel(MeshSettings().router_addr)
    servicer = FilesServicer(service, table_model(router_pb2_grpc.RouterStub(router_channel), settings))
    sweeper = asyncio.create_task(service.sweep_forever())
    try:
        yield [Registration(files_pb2.DESCRIPTOR.services_by_name["Files"], servicer,
                            files_pb2_grpc.add_FilesServicer_to_server)]
    finally:
        await cancel_and_wait(sweeper)
        service.close()
        await router_channel.close()
        await mongo.close()


app = ServiceApp("files", build, scopes={
    "Render": SCOPE_FILES_WRITE, "DeleteFile": SCOPE_FILES_WRITE, "GetFile": SCOPE_FILES_READ,
    "ListFiles": SCOPE_FILES_READ, "ListTemplates": SCOPE_FILES_READ, "PutTemplate": SCOPE_TEMPLATES_WRITE,
    # asyncio's loop: on uvloop every render ran out its time and its worker was killed as crashed (CI,
    # 2026-12-07). The render pool waits for workers with add_reader on pipes and process sentinels
    # (moteur.files.pool); why uvloop misses them there, when a bare repro wakes, is not known yet.
}, event_loop="asyncio")

if __name__ == "__main__":
    run(app)
