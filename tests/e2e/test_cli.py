"""The `moteur` CLI against the running stack (typer's runner, in-process)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from moteur.cli.main import app
from moteur.devstack.models import CHAT_MODEL, SECOND_MODEL

runner = CliRunner()


@pytest.fixture
def cli_env(stack, alice, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOTEUR_GATEWAY", stack.address("gateway"))
    monkeypatch.setenv("MOTEUR_API_KEY", alice.key)
    monkeypatch.setenv("MOTEUR_MONGO_URI", stack.mongo_uri)


def test_chat_streams_the_answer_and_the_session_shows_it(cli_env) -> None:
    result = runner.invoke(app, ["chat", "--model", "instant", "hello from the CLI"])
    assert result.exit_code == 0, result.output
    assert "instant answer to: hello from the CLI" in result.output
    session_id = re.search(r"session (\w{26})", result.output).group(1)

    shown = runner.invoke(app, ["sessions", "show", session_id])
    assert shown.exit_code == 0 and "hello from the CLI" in shown.output
    listed = runner.invoke(app, ["sessions", "list"])
    assert session_id in listed.output
    deleted = runner.invoke(app, ["sessions", "delete", session_id])
    assert "2 messages" in deleted.output
    gone = runner.invoke(app, ["sessions", "show", session_id])
    assert gone.exit_code == 1 and "NOT_FOUND" in gone.output


def test_models_lists_what_the_caller_may_use_and_the_routes(cli_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the routes' candidates on one line: model names are long
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert CHAT_MODEL in result.output and "healthy" in result.output
    assert "enterprise-only" not in result.output  # alice's tier may not name it
    assert "summarize" in result.output and f"{CHAT_MODEL} → {SECOND_MODEL}" in result.output


def test_a_bad_request_prints_the_status_and_the_field(cli_env) -> None:
    result = runner.invoke(app, ["chat", "   "])
    assert result.exit_code == 1
    assert "INVALID_ARGUMENT" in result.output and "field message" in result.output


def test_chat_without_a_key_says_how_to_get_one(cli_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOTEUR_API_KEY", "")
    result = runner.invoke(app, ["chat", "hello"])
    assert result.exit_code == 1
    assert "moteur keys create" in result.output


def test_keys_create_prints_a_key_that_works_and_list_never_shows_secrets(cli_env, monkeypatch) -> None:
    created = runner.invoke(app, ["keys", "create", "--tenant", "initech", "--user", "peter"])
    assert created.exit_code == 0, created.output
    key = re.search(r"mot_\S+", created.output).group(0)
    monkeypatch.setenv("MOTEUR_API_KEY", key)
    assert runner.invoke(app, ["chat", "--model", "instant", "--no-stream", "hi"]).exit_code == 0

    listed = runner.invoke(app, ["keys", "list", "--tenant", "initech"])
    assert "peter" in listed.output and key not in listed.output
    key_id = re.search(r"key id (\w{26})", created.output).group(1)
    assert runner.invoke(app, ["keys", "revoke", key_id, "--tenant", "initech"]).exit_code == 0


def test_an_admin_key_sets_and_shows_limits_and_lists_alerts(cli_env, monkeypatch) -> None:
    created = runner.invoke(app, ["keys", "create", "--tenant", "umbrella", "--admin"])
    monkeypatch.setenv("MOTEUR_API_KEY", re.search(r"mot_\S+", created.output).group(0))

    changed = runner.invoke(app, ["limits", "set", "user:ada", "requests_per_minute=5", "tokens_per_day=1000"])
    assert changed.exit_code == 0, changed.output
    shown = runner.invoke(app, ["limits", "show", "user:ada"])
    assert "requests_per_minute" in shown.output and "1,000" in shown.output and "unlimited" in shown.output
    bad = runner.invoke(app, ["limits", "set", "user:ada", "requests_per_minute=-5"])
    assert bad.exit_code == 1 and "INVALID_ARGUMENT" in bad.output
    assert runner.invoke(app, ["alerts"]).exit_code == 0
    assert runner.invoke(app, ["usage", "--by", "user"]).exit_code == 0


def test_an_admin_key_turns_the_response_cache_on_and_off(cli_env, monkeypatch) -> None:
    created = runner.invoke(app, ["keys", "create", "--tenant", "cyberdyne", "--admin"])
    monkeypatch.setenv("MOTEUR_API_KEY", re.search(r"mot_\S+", created.output).group(0))
    on = runner.invoke(app, ["tenant", "set", "--cache", "--cache-type", "chat", "--cache-ttl", "600"])
    assert on.exit_code == 0, on.output
    assert "response cache: on (chat; answers kept 600 s)" in runner.invoke(app, ["tenant", "show"]).output
    unknown = runner.invoke(app, ["tenant", "set", "--cache", "--cache-type", "poetry"])
    assert unknown.exit_code == 1 and "poetry" in unknown.output
    off = runner.invoke(app, ["tenant", "set", "--no-cache"])
    assert off.exit_code == 0 and "response cache: off" in off.output


def test_tools_lists_the_tenants_tools_and_chat_shows_the_calls(cli_env, mcp_ready) -> None:
    listed = runner.invoke(app, ["tools"])
    assert listed.exit_code == 0, listed.output
    assert "calculator" in listed.output and "notes__read_note" in listed.output and "mcp:notes" in listed.output
    # the instant model plays "/tool" lines: one round with the calculator, then the answer
    result = runner.invoke(app, ["chat", "--model", "instant", 'Compute.\n/tool calculator {"expression": "2+3"}'])
    assert result.exit_code == 0, result.output
    assert 'calculator({"expression": "2+3"}) → {"result": 5}' in result.output
    assert "instant answer after tools" in result.output
