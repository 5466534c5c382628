"""``moteur``: chat with the gateway, look at sessions, manage API keys.

Reads ``MOTEUR_GATEWAY``, ``MOTEUR_API_KEY`` and ``MOTEUR_MONGO_URI`` from the environment or from
``.data/cli.env`` (written by ``make run``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from google.rpc import error_details_pb2
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.table import Table

from moteur.client import MoteurClient, MoteurClientError
from moteur.runtime.settings import MongoSettings
from moteur.v1 import common_pb2

app = typer.Typer(help="moteur: a GPT engine behind one gRPC API.", no_args_is_help=True)
sessions_app = typer.Typer(help="Sessions of the key's user.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (talks to MongoDB directly: an operator's tool).", no_args_is_help=True)
limits_app = typer.Typer(help="Rate limits and quotas of your tenant (setting them needs an admin key).",
                         no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")
app.add_typer(keys_app, name="keys")
app.add_typer(limits_app, name="limits")

console = Console()
errors = Console(stderr=True)


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
    model: Annotated[str, typer.Option(help="A model from the registry, e.g. smollm2, instant.")] = "",
    priority: Annotated[str, typer.Option(help="critical, high, normal, low or batch.")] = "",
    max_tokens: Annotated[int, typer.Option(help="Longest answer in tokens; 0: the model's default.")] = 0,
    stream: Annotated[bool, typer.Option(help="Print the answer as it is generated.")] = True,
) -> None:
    """Ask a question; the answer streams to the terminal."""
    options = {"session_id": session, "user_id": user, "request_type": request_type, "model_hint": model,
               "priority": priority, "max_output_tokens": max_tokens}
    try:
        with _client() as client:
            if stream:
                final = None
                for event in client.chat_stream(message, **options):
                    if event.HasField("delta"):
                        console.print(event.delta.text, end="", markup=False, highlight=False)
                    elif event.HasField("final"):
                        final = event.final
                console.print()
            else:
                final = client.chat(message, **options)
                console.print(final.message.content, markup=False, highlight=False)
    except ValueError as error:  # a friendly enum name that does not exist
        raise _fail(str(error)) from None
    if final is not None:
        usage = final.usage
        console.print(
            f"[dim]session {final.session_id} · {final.model} · {usage.input_tokens} in / "
            f"{usage.output_tokens} out tokens[/dim]"
        )


@sessions_app.command("list")
def sessions_list(
    user: Annotated[str, typer.Option(help="Whose sessions (service keys only).")] = "",
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
) -> None:
    """The newest sessions."""
    with _client() as client:
        page = client.list_sessions(user_id=user, page_size=limit)
    table = Table("title", "messages", "updated")
    table.add_column("id", no_wrap=True, min_width=26)  # ids are copied into other commands: never cut them
    for s in page.sessions:
        updated = s.updated_at.ToDatetime().strftime("%Y-%m-%d %H:%M")
        table.add_row(s.title, str(s.message_count), updated, s.id)
    console.print(table)


_ROLE_NAMES = {common_pb2.ROLE_USER: "user", common_pb2.ROLE_ASSISTANT: "assistant",
               common_pb2.ROLE_SYSTEM: "system", common_pb2.ROLE_TOOL: "tool"}


@sessions_app.command("show")
def sessions_show(session_id: Annotated[str, typer.Argument(help="The session's id.")]) -> None:
    """A session's messages, oldest first."""
    with _client() as client:
        page = client.get_session(session_id, page_size=500)
    console.print(f"[bold]{page.session.title or page.session.id}[/bold] · {page.session.message_count} messages")
    for m in page.messages:
        who = _ROLE_NAMES.get(m.role, "?")
        console.print(f"[bold]{who}[/bold]" + (f" [dim]({m.model})[/dim]" if m.model else ""))
        console.print(m.content, markup=False, highlight=False)


@sessions_app.command("delete")
def sessions_delete(session_id: Annotated[str, typer.Argument(help="The session's id.")]) -> None:
    """Delete a session and its messages."""
    with _client() as client:
        deleted = client.delete_session(session_id)
    console.print(f"deleted session {session_id} and {deleted.deleted_messages} messages")


def _key_store_call(action: Callable[..., object]) -> object:
    from moteur.gateway.auth import ApiKeyStore
    from moteur.runtime.errors import MoteurError
    from moteur.runtime.mongo import connect_mongo, database

    async def main() -> object:
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
    plaintext, key = _key_store_call(lambda store: store.create(tenant, user, tier, name, admin))  # type: ignore[misc]
    console.print(f"key id {key.key_id} · tenant {key.tenant} · user {key.user or '(service)'} · tier {key.tier}")
    console.print(plaintext, markup=False, highlight=False)
    errors.print("[yellow]store it now: only its hash is kept, it cannot be shown again.[/yellow]")


@keys_app.command("list")
def keys_list(tenant: Annotated[str, typer.Option(help="Whose keys.")]) -> None:
    """A tenant's active keys (never their secrets)."""
    keys = _key_store_call(lambda store: store.list(tenant))
    table = Table("user", "tier", "name", "created")
    table.add_column("key id", no_wrap=True, min_width=26)
    for key in keys:  # type: ignore[attr-defined]
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
                "tokens_per_month", "cost_micro_usd_per_month")


def _print_limits(limits: object) -> None:
    table = Table("limit", "value", title=f"{limits.scope} (tier {limits.tier})")  # type: ignore[attr-defined]
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
