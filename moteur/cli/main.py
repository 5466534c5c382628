"""``moteur``: chat with the gateway, look at sessions, manage API keys.

Reads ``MOTEUR_GATEWAY``, ``MOTEUR_API_KEY`` and ``MOTEUR_MONGO_URI`` from the environment or from
``.data/cli.env`` (written by ``make run``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from google.rpc import error_details_pb2
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.table import Table

from moteur.client import ChatOptions, MoteurClient, MoteurClientError, cache_settings
from moteur.runtime.protonames import ROLE_NAMES
from moteur.runtime.settings import MongoSettings
from moteur.v1 import common_pb2, gateway_pb2, memory_pb2, router_pb2

if TYPE_CHECKING:
    from moteur.runtime.api_keys import ApiKeyStore

app = typer.Typer(help="moteur: a GPT engine behind one gRPC API.", no_args_is_help=True)
sessions_app = typer.Typer(help="Sessions of the key's user.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (talks to MongoDB directly: an operator's tool).", no_args_is_help=True)
limits_app = typer.Typer(help="Rate limits and quotas of your tenant (setting them needs an admin key).",
                         no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")
app.add_typer(keys_app, name="keys")
app.add_typer(limits_app, name="limits")
tenant_app = typer.Typer(help="Tenant-wide switches (setting them needs an admin key).", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
files_app = typer.Typer(help="Files rendered from your answers.", no_args_is_help=True)
app.add_typer(files_app, name="files")
templates_app = typer.Typer(help="Templates answers are rendered with (storing one needs an admin key).",
                            no_args_is_help=True)
app.add_typer(templates_app, name="templates")
memories_app = typer.Typer(help="What moteur remembers of you: facts and past messages.", no_args_is_help=True)
app.add_typer(memories_app, name="memories")

console = Console()
errors = Console(stderr=True)
T = TypeVar("T")


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOTEUR_", env_file=".data/cli.env", extra="ignore")

    gateway: str = Field("localhost:50051", description="host:port of the gateway")
    api_key: str = Field("", description="API key (moteur keys create)")
    mongo_uri: str = Field("mongodb://localhost:27017", description="MongoDB, for the keys commands")


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(1)


@contextmanager
def _client() -> Iterator[MoteurClient]:
    settings = CliSettings()
    if not settings.api_key:
        raise _fail("no API key: set MOTEUR_API_KEY, run `make run` (it writes .data/cli.env), "
                    "or create one with `moteur keys create --tenant T --user U`")
    try:
        with MoteurClient(settings.gateway, settings.api_key) as client:
            yield client
    except MoteurClientError as error:
        raise _fail(_describe(error)) from None


def _describe(error: MoteurClientError) -> str:
    text = f"{error.code.name}: {error.message}"
    for detail in error.details:
        if isinstance(detail, error_details_pb2.BadRequest):
            text += "".join(f"\n  field {v.field}: {v.description}" for v in detail.field_violations)
    if error.retry_after_seconds is not None:
        text += f"\n  retry after {error.retry_after_seconds:.1f} s"
    return text


@app.command()
def chat(
    message: Annotated[str, typer.Argument(help="What to ask.")],
    session: Annotated[str, typer.Option("--session", "-s", help="Continue this session.")] = "",
    user: Annotated[str, typer.Option(help="Act for this user (service keys only).")] = "",
    request_type: Annotated[str, typer.Option("--type", help="chat, summarize, extract or code.")] = "",
    model: Annotated[str, typer.Option(
        help="A model from the registry, e.g. qwen2.5-coder-1.5b (the local default), qwen2.5-coder-0.5b, instant."
    )] = "",
    allow_substitution: Annotated[bool, typer.Option(
        "--allow-substitution", help="If --model cannot answer, let another model answer (else: an error)."
    )] = False,
    priority: Annotated[str, typer.Option(help="critical, high, normal, low or batch.")] = "",
    max_tokens: Annotated[int, typer.Option(help="Longest answer in tokens; 0: the model's default.")] = 0,
    stream: Annotated[bool, typer.Option(help="Print the answer as it is generated.")] = True,
    memory: Annotated[bool, typer.Option(help="Recall what earlier conversations taught about you.")] = True,
    tools: Annotated[bool, typer.Option(help="Let the model call your tenant's tools (see `moteur tools`).")] = True,
    tool_choice: Annotated[str, typer.Option(help="auto, none, required, or a tool's name to force it.")] = "",
    as_file: Annotated[str, typer.Option("--as", help="Also render the answer: pdf, csv, json, markdown, html, "
                                         "xlsx or docx; saved in --out.")] = "",
    template: Annotated[str, typer.Option(help="The template to render with (see `moteur templates list`).")] = "",
    out: Annotated[Path, typer.Option(help="Where --as saves the file.")] = Path("."),
) -> None:
    """Ask a question; the answer streams to the terminal, with the tools the model calls."""
    options: ChatOptions = {
        "session_id": session, "user_id": user, "request_type": request_type, "model_hint": model,
        "allow_model_substitution": allow_substitution,
        "priority": priority, "max_output_tokens": max_tokens, "use_memory": memory, "use_tools": tools,
        "tool_choice": tool_choice, "output_format": as_file, "output_template": template}
    try:
        with _client() as client:
            if stream:
                final = None
                for event in client.chat_stream(message, **options):
                    if event.HasField("delta"):
                        console.print(event.delta.text, end="", markup=False, highlight=False)
                    elif event.HasField("tool") and event.tool.HasField("result"):
                        _print_tool(event.tool)
                    elif event.HasField("final"):
                        final = event.final
                console.print()
            else:
                final = client.chat(message, **options)
                console.print(final.message.content, markup=False, highlight=False)
    except ValueError as error:  # a friendly enum name that does not exist
        raise _fail(str(error)) from None
    if final is not None and final.status == gateway_pb2.TURN_STATUS_REQUIRES_ACTION:
        calls = ", ".join(f"{c.name}({c.arguments_json}) [{c.id}]" for c in final.pending_tool_calls)
        console.print(f"[yellow]waiting for your tools: {calls}[/yellow]")
    if final is not None:
        usage = final.usage
        console.print(
            f"[dim]session {final.session_id} · {final.model} · {usage.input_tokens} in / "
            f"{usage.output_tokens} out tokens[/dim]"
        )
    if final is not None and final.message.HasField("file"):
        with _client() as client:
            saved = client.save_file(final.message.file.file_id, out)
        ref = final.message.file
        console.print(f"saved {saved} ({ref.size_bytes:,} bytes, {ref.mime_type}; file {ref.file_id})")
        if final.route.entries.get("file_note"):
            console.print(f"[yellow]{final.route.entries['file_note']}[/yellow]")


def _print_tool(event: gateway_pb2.ToolEvent) -> None:
    result = event.result
    outcome = (result.content_json[:120] if result.ok else f"{result.error_code}: {result.error_message[:120]}")
    console.print(f"[dim]⚙ {event.call.name}({event.call.arguments_json[:120]}) → {outcome} "
                  f"({result.duration_ms} ms)[/dim]", highlight=False)


@sessions_app.command("list")
def sessions_list(
    user: Annotated[str, typer.Option(help="Whose sessions (service keys only).")] = "",
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
) -> None:
    """The newest sessions."""
    with _client() as client:
        page = client.list_sessions(user_id=user, page_size=limit)
    # Listed newest created first, so the table shows that column first and the last activity beside it.
    table = Table("created", "title", "messages", "last message")
    table.add_column("id", no_wrap=True, min_width=26)  # ids are copied into other commands: never cut them
    for s in page.sessions:
        created = s.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M")
        updated = s.updated_at.ToDatetime().strftime("%Y-%m-%d %H:%M")
        table.add_row(created, s.title, str(s.message_count), updated, s.id)
    console.print(table)


@sessions_app.command("show")
def sessions_show(session_id: Annotated[str, typer.Argument(help="The session's id.")]) -> None:
    """A session's messages, oldest first."""
    with _client() as client:
        page = client.get_session(session_id, page_size=500)
    console.print(f"[bold]{page.session.title or page.session.id}[/bold] · {page.session.message_count} messages")
    for m in page.messages:
        who = ROLE_NAMES.get(m.role, "?")
        console.print(f"[bold]{who}[/bold]" + (f" [dim]({m.model})[/dim]" if m.model else ""))
        console.print(m.content, markup=False, highlight=False)


@sessions_app.command("delete")
def sessions_delete(session_id: Annotated[str, typer.Argument(help="The session's id.")]) -> None:
    """Delete a session and its messages."""
    with _client() as client:
        deleted = client.delete_session(session_id)
    console.print(f"deleted session {session_id} and {deleted.deleted_messages} messages")


def _key_store_call(action: Callable[[ApiKeyStore], Awaitable[T]]) -> T:
    from moteur.runtime.api_keys import ApiKeyStore
    from moteur.runtime.errors import MoteurError
    from moteur.runtime.mongo import connect_mongo, database

    async def main() -> T:
        settings = MongoSettings(mongo_uri=CliSettings().mongo_uri)
        mongo = connect_mongo(settings)
        try:
            store = ApiKeyStore(database(mongo, settings))
            await store.ensure_indexes()
            return await action(store)
        finally:
            await mongo.close()

    try:
        return asyncio.run(main())
    except MoteurError as error:
        raise _fail(error.message) from None
    except Exception as error:  # MongoDB unreachable and the like: say where we looked
        raise _fail(f"cannot reach MongoDB at {CliSettings().mongo_uri}: {error}") from None


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key belongs to.")],
    user: Annotated[str, typer.Option(help="The user it acts for; empty: a service key for any user.")] = "",
    tier: Annotated[str, typer.Option(help="free, standard, pro, enterprise or service.")] = "standard",
    name: Annotated[str, typer.Option(help="A label for people.")] = "",
    admin: Annotated[bool, typer.Option(help="May change the tenant's limits.")] = False,
) -> None:
    """Create an API key; its plaintext is printed once and never stored."""
    plaintext, key = _key_store_call(lambda store: store.create(tenant, user, tier, name, admin))
    console.print(f"key id {key.key_id} · tenant {key.tenant} · user {key.user or '(service)'} · tier {key.tier}")
    console.print(plaintext, markup=False, highlight=False)
    errors.print("[yellow]store it now: only its hash is kept, it cannot be shown again.[/yellow]")


@keys_app.command("list")
def keys_list(tenant: Annotated[str, typer.Option(help="Whose keys.")]) -> None:
    """A tenant's active keys (never their secrets)."""
    keys = _key_store_call(lambda store: store.list(tenant))
    table = Table("user", "tier", "name", "created")
    table.add_column("key id", no_wrap=True, min_width=26)
    for key in keys:
        table.add_row(key.user or "(service)", key.tier, key.name, key.created_at.strftime("%Y-%m-%d"), key.key_id)
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (moteur keys list).")],
    tenant: Annotated[str, typer.Option(help="The key's tenant.")],
) -> None:
    """Revoke a key; gateways stop accepting it within their 30 s cache."""
    if not _key_store_call(lambda store: store.revoke(tenant, key_id)):
        raise _fail(f"no active key {key_id} in tenant {tenant}")
    console.print(f"revoked {key_id}")


_LIMIT_NAMES = ("requests_per_minute", "tokens_per_minute", "concurrent_requests", "tokens_per_day",
                "tokens_per_month", "cost_micro_usd_per_month", "cost_micro_usd_per_day")


def _print_limits(limits: gateway_pb2.Limits) -> None:
    table = Table("limit", "value", title=f"{limits.scope} (tier {limits.tier})")
    for name in _LIMIT_NAMES:
        value = getattr(limits, name)
        table.add_row(name, f"{value:,}" if value else "unlimited")
    console.print(table)


@limits_app.command("show")
def limits_show(
    scope: Annotated[str, typer.Argument(help='"tenant", "key:<key id>" or "user:<user id>".')] = "tenant",
) -> None:
    """The limits in force for a scope of your tenant."""
    with _client() as client:
        _print_limits(client.get_limits(scope))


@limits_app.command("set")
def limits_set(
    scope: Annotated[str, typer.Argument(help='"tenant", "key:<key id>" or "user:<user id>".')],
    limits: Annotated[list[str], typer.Argument(help="name=value pairs, e.g. requests_per_minute=60; 0 is unlimited.")],
) -> None:
    """Replace a scope's limits (unnamed ones become unlimited); applies within seconds, no restart."""
    values: dict[str, int] = {}
    for pair in limits:
        name, _, value = pair.partition("=")
        if name not in _LIMIT_NAMES or not value.lstrip("-").isdigit():
            raise _fail(f"{pair!r}: expected name=integer with name one of {', '.join(_LIMIT_NAMES)}")
        values[name] = int(value)
    with _client() as client:
        _print_limits(client.set_limits(scope, **values))


@tenant_app.command("show")
def tenant_show() -> None:
    """Whether memory recall and fact extraction are on for your tenant."""
    with _client() as client:
        _print_switches(client.get_tenant_settings())


@tenant_app.command("set")
def tenant_set(
    recall: Annotated[bool | None, typer.Option("--recall/--no-recall", help="Memory recall in chat.")] = None,
    extraction: Annotated[bool | None, typer.Option("--extraction/--no-extraction",
                                                    help="Fact extraction from chat.")] = None,
    messages: Annotated[bool | None, typer.Option("--messages/--no-messages",
                                                  help="Chat messages stored in memory at all.")] = None,
    cache: Annotated[bool | None, typer.Option("--cache/--no-cache", help="The semantic response cache: a question "
                                               "near one answered before gets that answer again.")] = None,
    cache_types: Annotated[list[str] | None, typer.Option("--cache-type", help="With --cache: a request type it "
                                                          "answers (chat, summarize, extract, code); repeat; none: "
                                                          "every one.")] = None,
    cache_ttl: Annotated[int, typer.Option(help="With --cache: seconds an answer is kept (0: one hour).")] = 0,
) -> None:
    """Turn memory recall, fact extraction, message memory or the response cache on or off for your whole tenant."""
    try:
        caching = None if cache is None else cache_settings(cache, cache_types or (), cache_ttl)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    with _client() as client:
        _print_switches(client.set_tenant_settings(memory_recall=recall, fact_extraction=extraction,
                                                   message_memory=messages, response_cache=caching))


def _print_switches(settings: gateway_pb2.TenantSettings) -> None:
    on = {True: "on", False: "off"}
    cache = settings.response_cache
    types = ", ".join(common_pb2.RequestType.Name(t).removeprefix("REQUEST_TYPE_").lower()
                      for t in cache.request_types) or "every request type"
    caching = f"on ({types}; answers kept {cache.ttl_seconds} s)" if cache.enabled else "off"
    console.print(f"memory recall: {on[settings.memory_recall]}; fact extraction: {on[settings.fact_extraction]}; "
                  f"message memory: {on[settings.message_memory]}")
    console.print(f"response cache: {caching}", soft_wrap=True)


_USER = typer.Option(help="Whose memories (service keys); a user key sees its own.")


@memories_app.command("list")
def memories_list(
    user: Annotated[str, _USER] = "",
    kind: Annotated[list[str], typer.Option(help="fact, message, reply or document_chunk; repeat for several.")] = [],  # noqa: B006
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
) -> None:
    """Your memories, newest first."""
    with _client() as client:
        page = client.list_memories(user_id=user, kinds=kind, page_size=limit)
    _memory_table([(r, None) for r in page.records])


@memories_app.command("migration")
def memories_migration(user: Annotated[str, _USER] = "") -> None:
    """Where your tenant's memories stand against the embedding model: how many vectors a former model made,
    still to re-embed in the background (left out of searches until then)."""
    with _client() as client:
        status = client.list_memories(user_id=user, page_size=1).migration
    state = "re-embedding" if status.running else "idle"
    console.print(f"embedding model: {status.model} ({status.current:,} vectors); former models: "
                  f"{', '.join(status.from_models) or 'none'} ({status.remaining:,} vectors left to re-embed); {state}")


@memories_app.command("search")
def memories_search(
    text: Annotated[str, typer.Argument(help="What to look for, by meaning.")],
    user: Annotated[str, _USER] = "",
    limit: Annotated[int, typer.Option(help="How many.")] = 5,
    session: Annotated[str, typer.Option(help="Only what came from this session.")] = "",
) -> None:
    """Memories nearest in meaning to TEXT."""
    with _client() as client:
        found = client.search_memories(text, user_id=user, top_k=limit, session_id=session)
    _memory_table([(h.record, h.score) for h in found.hits])


@memories_app.command("edit")
def memories_edit(memory_id: str, text: str, user: Annotated[str, _USER] = "") -> None:
    """Replace a memory's text (the change is kept in its history)."""
    with _client() as client:
        record = client.update_memory(memory_id, text, user_id=user)
    console.print(f"updated {record.id}: {record.text}")


@memories_app.command("history")
def memories_history(memory_id: str, user: Annotated[str, _USER] = "") -> None:
    """How a fact changed: added, updated from a conversation, edited, deleted (oldest first)."""
    with _client() as client:
        history = client.memory_history(memory_id, user_id=user)
    table = Table("when", "change", "text", "before", "session")
    for change in history.changes:
        action = memory_pb2.FactAction.Name(change.action).removeprefix("FACT_ACTION_").lower()
        table.add_row(change.at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"), action, change.text,
                      change.previous_text or "-", change.session_id or "-")
    console.print(table)


@memories_app.command("delete")
def memories_delete(memory_id: str, user: Annotated[str, _USER] = "") -> None:
    """Delete one memory."""
    with _client() as client:
        client.delete_memory(memory_id, user_id=user)
    console.print(f"deleted {memory_id}")


@memories_app.command("forget")
def memories_forget(
    user: Annotated[str, _USER] = "",
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Forget everything memory holds of a user: memories, facts and their history."""
    if not yes:
        typer.confirm("Forget every memory of this user?", abort=True)
    with _client() as client:
        deleted = client.forget_user(user_id=user)
    console.print(f"forgot {deleted.deleted} memories")


def _memory_table(rows: list[tuple[memory_pb2.MemoryRecord, float | None]]) -> None:
    table = Table("id", "kind", "when", "text", *(["score"] if any(s is not None for _, s in rows) else []))
    for record, score in rows:
        kind = memory_pb2.MemoryKind.Name(record.kind).removeprefix("MEMORY_KIND_").lower()
        when = record.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M")
        table.add_row(record.id, kind, when, record.text, *([f"{score:.2f}"] if score is not None else []))
    console.print(table)


@app.command()
def models() -> None:
    """The models you may name with --model, their health, and the routes that choose among them."""
    with _client() as client:
        listed = client.list_models()
    table = Table("model", "group", "provider", "context", "$ in/out per 1k", "health", "in flight")
    for m in listed.models:
        health = router_pb2.ModelHealth.Name(m.health).removeprefix("MODEL_HEALTH_").lower()
        prices = f"{m.input_price_micro_usd_per_1k / 1e6:g} / {m.output_price_micro_usd_per_1k / 1e6:g}"
        table.add_row(m.name, m.group, m.provider, f"{m.context_window:,}", prices, health, str(m.in_flight))
    console.print(table)
    routes = Table("route", "request types", "conditions", "candidates, in order")
    for r in listed.routes:
        types = ", ".join(common_pb2.RequestType.Name(t).removeprefix("REQUEST_TYPE_").lower() for t in r.request_types)
        routes.add_row(r.name, types or "any", r.conditions or "-", " → ".join(r.candidates))
    console.print(routes)


@files_app.command("list")
def files_list(
    session: Annotated[str, typer.Option("--session", "-s", help="Only this session's files.")] = "",
    user: Annotated[str, typer.Option(help="Whose files (service keys only).")] = "",
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
) -> None:
    """Your files, newest first."""
    with _client() as client:
        page = client.list_files(user_id=user, session_id=session, page_size=limit)
    table = Table("name", "format", "size", "created", "expires")
    table.add_column("id", no_wrap=True, min_width=26)
    for f in page.files:
        fmt = common_pb2.FileFormat.Name(f.format).removeprefix("FILE_FORMAT_").lower()
        created = f.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M")
        expires = f.expires_at.ToDatetime().strftime("%Y-%m-%d") if f.HasField("expires_at") else "-"
        table.add_row(f.ref.name, fmt, f"{f.ref.size_bytes:,}", created, expires, f.ref.file_id)
    console.print(table)


@files_app.command("get")
def files_get(
    file_id: Annotated[str, typer.Argument(help="The file's id (moteur files list).")],
    out: Annotated[Path, typer.Option(help="The directory to save it in.")] = Path("."),
) -> None:
    """Download a file (streamed) under its own name."""
    with _client() as client:
        saved = client.save_file(file_id, out)
    console.print(f"saved {saved} ({saved.stat().st_size:,} bytes)")


@files_app.command("delete")
def files_delete(file_id: Annotated[str, typer.Argument(help="The file's id.")]) -> None:
    """Delete a file."""
    with _client() as client:
        client.delete_file(file_id)
    console.print(f"deleted {file_id}")


@templates_app.command("list")
def templates_list(
    file_format: Annotated[str, typer.Option("--format", help="Only templates for this format.")] = "",
) -> None:
    """The templates your answers can be rendered with."""
    try:
        with _client() as client:
            listed = client.list_templates(file_format)
    except ValueError as error:
        raise _fail(str(error)) from None
    table = Table("template", "formats", "yours", "description")
    for t in listed.templates:
        formats = ", ".join(common_pb2.FileFormat.Name(f).removeprefix("FILE_FORMAT_").lower() for f in t.formats)
        table.add_row(t.name, formats, "no" if t.built_in else "yes", t.description)
    console.print(table)


@templates_app.command("put")
def templates_put(
    name: Annotated[str, typer.Argument(help="The template's name; yours overrides a built-in of that name.")],
    source: Annotated[Path, typer.Argument(help="A Jinja2 file.", exists=True, dir_okay=False)],
    formats: Annotated[str, typer.Option(help="Comma-separated formats it renders, e.g. html,pdf.")] = "html,pdf",
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
) -> None:
    """Store a template for your tenant (validated in a sandbox first)."""
    try:
        with _client() as client:
            stored = client.put_template(name, source.read_text(), formats.split(","), description)
    except ValueError as error:
        raise _fail(str(error)) from None
    console.print(f"stored template {stored.name}")


@app.command()
def tools() -> None:
    """The tools the model may call in your chat turns (built-ins and your tenant's MCP servers)."""
    with _client() as client:
        listed = client.list_tools()
    table = Table()
    # names are typed into --tool-choice: never cut them, however long the descriptions
    table.add_column("tool", no_wrap=True, min_width=max((len(t.name) for t in listed.tools), default=4))
    table.add_column("source", no_wrap=True, min_width=max((len(t.source) for t in listed.tools), default=6))
    for column in ("arguments", "timeout", "description"):
        table.add_column(column)
    for t in listed.tools:
        arguments = ", ".join(json.loads(t.input_schema_json or "{}").get("properties", {})) or "-"
        table.add_row(t.name, t.source, arguments, f"{t.timeout_ms / 1000:g} s", t.description)
    console.print(table)


@app.command()
def alerts(limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20) -> None:
    """Quota alerts of your tenant (80 % and 100 % of a quota, once per period)."""
    with _client() as client:
        page = client.list_alerts(page_size=limit)
    table = Table("when", "scope", "limit", "threshold", "used")
    for a in page.alerts:
        when = a.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M")
        table.add_row(when, a.scope, a.limit, f"{a.threshold_percent} %", f"{a.used:,} / {a.limit_value:,}")
    console.print(table)


@app.command()
def usage(
    group_by: Annotated[str, typer.Option("--by", help='"", model, user, key or day.')] = "model",
    user: Annotated[str, typer.Option(help="One user (service keys); a user key sees its own only.")] = "",
) -> None:
    """Today's requests, tokens and cost (UTC), from the usage ledger."""
    with _client() as client:
        report = client.get_usage(user_id=user, group_by=group_by)
    table = Table(group_by or "all", "requests", "input tokens", "output tokens", "cost (USD)")
    for row in report.rows:
        table.add_row(row.group or "-", f"{row.requests:,}", f"{row.usage.input_tokens:,}",
                      f"{row.usage.output_tokens:,}", f"{row.usage.cost_micro_usd / 1e6:.4f}")
    console.print(table)
