"""``python -m moteur.tools``: the tool registry, its built-in tools and each tenant's MCP servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from functools import partial

from moteur.runtime.channels import open_channel
from moteur.runtime.identity import SCOPE_TOOLS
from moteur.runtime.mongo import connect_mongo, database
from moteur.runtime.reload import reload, watch
from moteur.runtime.server import Registration, ServiceApp, run
from moteur.runtime.settings import MeshSettings, MongoSettings
from moteur.runtime.tasks import cancel_and_wait
from moteur.tools.access import ToolAccess
from moteur.tools.builtins import register_builtins
from moteur.tools.mcp import McpServers
from moteur.tools.metrics import TOOLS_CONFIG_RELOADS
from moteur.tools.policy import ToolsPolicy, load_policy
from moteur.tools.registry import Registry
from moteur.tools.servicer import ToolsServicer
from moteur.tools.settings import ToolsSettings
from moteur.v1 import files_pb2_grpc, memory_pb2_grpc, tools_pb2, tools_pb2_grpc

MCP_STARTUP_WAIT_SECONDS = 10.0  # before the service says it is ready: MCP servers connect first


def _describe(policy: ToolsPolicy) -> dict[str, object]:
    return {"tenants": sorted(policy.tenants), "mcp_servers": len(policy.mcp_servers())}


async def build() -> AsyncIterator[Sequence[Registration]]:
    settings, mongo_settings = ToolsSettings(), MongoSettings()
    mongo = connect_mongo(mongo_settings)
    mesh = MeshSettings()
    memory_channel, files_channel = open_channel(mesh.memory_addr), open_channel(mesh.files_addr)
    registry = Registry()
    register_builtins(registry, settings, memory_pb2_grpc.MemoryStub(memory_channel),
                      files_pb2_grpc.FilesStub(files_channel))
    mcp_servers = McpServers(registry, settings.mcp_refresh_seconds)
    access = ToolAccess(registry, mcp_servers, *load_policy(settings.tools_file),
                        max_calls_per_tenant=settings.max_tool_calls_per_tenant)
    servicer = ToolsServicer(registry, access, database(mongo, mongo_settings))
    await servicer.ensure_indexes()
    await mcp_servers.first_attempts(MCP_STARTUP_WAIT_SECONDS)
    apply_changes = partial(reload, access, settings.tools_file, load_policy, "tools", TOOLS_CONFIG_RELOADS,
                            _describe)
    watcher = asyncio.create_task(watch(settings.tools_file, apply_changes))
    try:
        yield [Registration(tools_pb2.DESCRIPTOR.services_by_name["Tools"], servicer,
                            tools_pb2_grpc.add_ToolsServicer_to_server)]
    finally:
        await cancel_and_wait(watcher)
        await mcp_servers.close()
        await memory_channel.close()
        await files_channel.close()
        await mongo.close()


app = ServiceApp("tools", build, scopes={"ListTools": SCOPE_TOOLS, "Invoke": SCOPE_TOOLS})

if __name__ == "__main__":
    run(app)
