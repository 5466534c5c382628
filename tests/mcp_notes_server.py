"""A small MCP server for the tests: a tenant's notes, kept in memory. ``python tests/mcp_notes_server.py``
serves it over stdio; :func:`build` gives the server for streamable HTTP. One tool answers with structured
content (it has an output schema), one with text only, one always fails, one waits (to show that
calls run side by side), and two change the server's own tool list (to show that clients notice)."""

from __future__ import annotations

import asyncio
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel

NOTES = {"welcome": "Notes are kept in memory for the life of the server.",
         "launch": "The launch is on Thursday at 10:00."}


class Waited(BaseModel):
    seconds: float
    most_at_once: int  # calls of this tool in progress together while this one waited


class Note(BaseModel):
    title: str
    text: str
    words: int


def build(name: str = "notes") -> MCPServer:
    server = MCPServer(name, log_level="WARNING")

    @server.tool(description="Read one note by its title.")
    def read_note(title: str) -> Note:
        if title not in NOTES:
            raise ToolError(f"no note titled {title!r}")
        return Note(title=title, text=NOTES[title], words=len(NOTES[title].split()))

    @server.tool(description="The titles of every note, one per line.", structured_output=False)
    def list_titles() -> str:
        return "\n".join(sorted(NOTES))

    @server.tool(description="Save a note. (Always fails: the disk is full.)", structured_output=False)
    def save_note(title: str, text: str) -> str:
        raise ToolError("the disk is full")

    running = [0, 0]  # in progress now, most seen at once

    @server.tool(description="Wait a moment (at most 2 s), then say how many waits ran at the same time.")
    async def wait(seconds: float) -> Waited:
        running[0] += 1
        running[1] = max(running)
        try:
            await asyncio.sleep(min(seconds, 2.0))
            return Waited(seconds=seconds, most_at_once=running[1])
        finally:
            running[0] -= 1
            if running[0] == 0:
                running[1] = 0

    @server.tool(description="Add a tool with this name that answers with the given text.", structured_output=False)
    def learn(name: str, answer: str) -> str:
        server.add_tool(lambda: answer, name=name, description=f"Says {answer!r}.", structured_output=False)
        return f"learned {name}"

    @server.tool(description="Remove a tool added by learn.", structured_output=False)
    def forget(name: str) -> str:
        server.remove_tool(name)
        return f"forgot {name}"

    return server


if __name__ == "__main__":
    build(*sys.argv[1:2]).run()  # its name, if given, shows which server a process is
