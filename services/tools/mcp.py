"""MCP servers as tool sources: each tenant's configured servers, their tools in the registry as
``<server>__<tool>`` (that tenant's only), called through the same protocol as the built-ins.

One background task per server holds its connection, because the SDK's context managers (the stdio
subprocess, the HTTP client, the session's task group) must be entered and exited in the same task. The
task connects, lists the tools and registers them, then lists them again every ``refresh_seconds`` until the
connection breaks: that both notices a dead idle connection (``ping`` is gone from the 2026-07-28 protocol:
servers answer "Method not found") and picks up a server whose tools changed. On a break it unregisters them
and reconnects with exponential backoff. A server that cannot start only makes its tools
absent (log line ``mcp.server_failed``, gauge ``moteur_mcp_servers{state="failed"}``), never stops the
service. Calls come from the gRPC handlers' tasks and go through the session the task holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

import httpx2  # the HTTP client the MCP SDK is built on (one of its dependencies): headers go through it
import jsonschema
import mcp
import structlog
from mcp.client.streamable_http import streamable_http_client

from moteur.runtime.tasks import cancel_and_wait
from moteur.tools.metrics import MCP_CONNECTS, MCP_SERVERS, MCP_STATES, MCP_TOOLS
from moteur.tools.policy import MCP_SEPARATOR, McpServerConfig
from moteur.tools.registry import JSON, TOOL_NAME, Registry, ToolError, ToolSpec

log = structlog.get_logger("moteur.tools.mcp")

CONNECT_TIMEOUT_SECONDS = 20.0  # start, handshake and tool listing
BACKOFF_SECONDS = (1.0, 60.0)  # first and longest wait before reconnecting
MAX_LIST_PAGES = 20
CLIENT_INFO = mcp.Implementation(name="moteur-tools", version="1")


class McpServer:
    """One tenant's connection to one MCP server, held by a background task (:meth:`start`, :meth:`stop`)."""

    def __init__(self, tenant: str, config: McpServerConfig, registry: Registry, refresh_seconds: float) -> None:
        self.tenant, self.config = tenant, config
        self._refresh_seconds = refresh_seconds
        self._registry = registry
        self._client: mcp.Client | None = None
        self._broken = asyncio.Event()
        self._registered: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._retired = False  # stopping: the metrics belong to a server that may replace it
        self.tried = asyncio.Event()  # the first connection attempt ended, either way

    @property
    def tool_names(self) -> list[str]:
        return list(self._registered)

    def start(self) -> None:
        self._set_state("connecting")
        self._task = asyncio.create_task(self._hold(), name=f"mcp:{self.tenant}/{self.config.name}")

    async def stop(self) -> None:
        self.retire()
        await cancel_and_wait(self._task)

    def retire(self) -> None:
        """Its tools go now; the connection closes when :meth:`stop` is awaited."""
        self._unregister()
        self._retired = True

    async def call(self, tool: str, arguments: Mapping[str, Any]) -> JSON:
        client = self._client
        if client is None:
            raise ToolError("unavailable", f"the MCP server {self.config.name} is not connected; try again later")
        try:
            result = await client.call_tool(tool, dict(arguments))
        except Exception as exc:  # closed streams, a dead process, HTTP errors: the transport is gone
            if isinstance(exc, mcp.MCPError) and exc.code != mcp.types.CONNECTION_CLOSED:
                raise ToolError("tool_error", exc.message) from None  # the server answered with a protocol error
            self._broken.set()  # the holding task reconnects
            raise ToolError("unavailable", f"lost the connection to the MCP server {self.config.name} "
                                           f"({_describe(exc)}); try again later") from None
        text = "\n".join(part.text for part in result.content if isinstance(part, mcp.types.TextContent))
        if result.is_error:
            raise ToolError("tool_error", text or f"{tool} reported an error")
        if result.structured_content is not None:
            return result.structured_content
        return {"text": text}

    # -- the holding task ----------------------------------------------------------------------------
    async def _hold(self) -> None:
        backoff = BACKOFF_SECONDS[0]
        while True:
            self._set_state("connecting")
            try:
                async with AsyncExitStack() as stack:
                    async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                        client = await stack.enter_async_context(await self._client_for(stack))
                        tools = await _list_tools(client)
                    self._register(tools)
                    self._client, backoff = client, BACKOFF_SECONDS[0]
                    self._set_state("ready")
                    MCP_CONNECTS.labels(self.tenant, self.config.name).inc()
                    self.tried.set()
                    log.info("mcp.server_ready", tenant=self.tenant, server=self.config.name,
                             transport=self.config.transport, tools=self._registered)
                    await self._watch(client, tools)
            except Exception as exc:  # any failure of a server is its own, never the service's
                log.warning("mcp.server_failed", tenant=self.tenant, server=self.config.name,
                            transport=self.config.transport, error=_describe(exc), retry_in_seconds=backoff)
            finally:
                self._client = None
                self._unregister()
            self._set_state("failed")
            self.tried.set()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_SECONDS[1])

    async def _client_for(self, stack: AsyncExitStack) -> mcp.Client:
        config = self.config
        if config.transport == "stdio":
            server: Any = mcp.StdioServerParameters(command=config.command[0], args=config.command[1:],
                                                    env=config.env or None)
        elif config.headers:
            http = await stack.enter_async_context(httpx2.AsyncClient(
                headers=config.headers, timeout=httpx2.Timeout(30.0, read=300.0)))
            server = streamable_http_client(config.url, http_client=http)
        else:
            server = config.url
        # No response cache: the listing is read once per connection, and calls must always reach the server.
        return mcp.Client(server, cache=None, client_info=CLIENT_INFO)

    async def _watch(self, client: mcp.Client, listed: list[mcp.types.Tool]) -> None:
        """Returns never: raises when the connection breaks; re-registers the tools when their list changed."""
        self._broken.clear()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._broken.wait(), self._refresh_seconds)
            if self._broken.is_set():
                raise ConnectionError("a call found the connection broken")
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                tools = await _list_tools(client)
            if tools != listed:
                self._unregister()
                self._register(tools)
                listed = tools
                log.info("mcp.tools_changed", tenant=self.tenant, server=self.config.name, tools=self._registered)

    def _register(self, tools: list[mcp.types.Tool]) -> None:
        for tool in tools:
            name = f"{self.config.name}{MCP_SEPARATOR}{tool.name}"
            if not TOOL_NAME.fullmatch(name):
                log.warning("mcp.tool_skipped", tenant=self.tenant, server=self.config.name, tool=tool.name,
                            reason="its name is not [a-zA-Z0-9_-] or is longer than 64 characters with the prefix")
                continue
            spec = ToolSpec(
                name, (tool.description or tool.title or tool.name)[:1024], tool.input_schema,
                tool.output_schema or {}, timeout_ms=self.config.timeout_ms,
                side_effects=not (tool.annotations and tool.annotations.read_only_hint),
                max_concurrency=self.config.max_concurrency, source=f"mcp:{self.config.name}",
                tiers=tuple(self.config.tiers),
            )
            try:
                self._registry.register(spec, _bound(self, tool.name), tenant=self.tenant)
            except (ValueError, jsonschema.SchemaError) as exc:
                log.warning("mcp.tool_skipped", tenant=self.tenant, server=self.config.name, tool=tool.name,
                            reason=str(exc)[:200])
                continue
            self._registered.append(name)
        MCP_TOOLS.labels(self.tenant, self.config.name).set(len(self._registered))

    def _unregister(self) -> None:
        for name in self._registered:
            self._registry.unregister(name, tenant=self.tenant)
        self._registered = []
        if not self._retired:
            MCP_TOOLS.labels(self.tenant, self.config.name).set(0)

    def _set_state(self, state: str) -> None:
        if self._retired:
            return
        for each in MCP_STATES:
            MCP_SERVERS.labels(self.tenant, self.config.name, each).set(1 if each == state else 0)


class McpServers:
    """Every tenant's MCP servers, kept in line with the policy: :meth:`apply` starts the new ones and stops
    the removed or changed ones (a changed server is a new connection)."""

    def __init__(self, registry: Registry, refresh_seconds: float) -> None:
        self._registry, self._refresh_seconds = registry, refresh_seconds
        self._servers: dict[tuple[str, str], McpServer] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    def apply(self, wanted: Mapping[tuple[str, str], McpServerConfig]) -> None:
        for key, server in list(self._servers.items()):
            if wanted.get(key) != server.config:
                del self._servers[key]
                self._stop_soon(server)
                log.info("mcp.server_removed", tenant=key[0], server=key[1], replaced=key in wanted)
                if key not in wanted:
                    _forget_metrics(*key)
        for key, config in wanted.items():
            if key not in self._servers:
                self._servers[key] = McpServer(key[0], config, self._registry, self._refresh_seconds)
                self._servers[key].start()

    def _stop_soon(self, server: McpServer) -> None:
        server.retire()  # its tools disappear now, the connection closes in the background
        task = asyncio.create_task(server.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def first_attempts(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until every server has tried to connect once, so that a service that
        says it is ready lists the tools of the servers that work; a server still trying is not waited for."""
        waits = [s.tried.wait() for s in self._servers.values()]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*waits)

    async def close(self) -> None:
        servers, self._servers = list(self._servers.values()), {}
        await asyncio.gather(*(s.stop() for s in servers), *self._stopping, return_exceptions=True)


def _forget_metrics(tenant: str, server: str) -> None:
    for state in MCP_STATES:
        with contextlib.suppress(KeyError):
            MCP_SERVERS.remove(tenant, server, state)
    for gone in (MCP_TOOLS, MCP_CONNECTS):
        with contextlib.suppress(KeyError):
            gone.remove(tenant, server)


def _bound(server: McpServer, tool: str) -> Any:
    async def call(arguments: Mapping[str, Any]) -> JSON:
        return await server.call(tool, arguments)

    return call


async def _list_tools(client: mcp.Client) -> list[mcp.types.Tool]:
    tools: list[mcp.types.Tool] = []
    cursor: str | None = None
    for _ in range(MAX_LIST_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _describe(exc: BaseException) -> str:
    """One line for the log; task groups wrap the real cause in exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:500]
