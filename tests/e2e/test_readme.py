"""The README's examples are a test: every `.venv/bin/moteur …` line of "Running it", in order, against the
real stack and the real local model, with the ids it shows (`01K…`) filled in from what earlier lines
printed. Each must succeed; the capital question answers Paris and the memory example recalls Lyon."""

from __future__ import annotations

import asyncio
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moteur.cli.main import app
from moteur.runtime.ids import new_id

README = Path(__file__).parents[2] / "README.md"
PLACEHOLDER = "01K…"
ULID = re.compile(r"\b[0-9A-HJKMNP-TV-Z]{26}\b")
# What a line's output must say, for the lines whose answer can be checked.
EXPECTED = {"What is the capital of France?": "Paris", "Where do I live?": "Lyon"}


def readme_commands() -> list[list[str]]:
    """The CLI lines of the "Running it" section's first shell block, comments dropped."""
    section = README.read_text().split("## Running it", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 2)[2].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        if line.startswith(".venv/bin/moteur "):
            words = shlex.split(line, comments=True)
            commands.append(words[1:])
    return commands


def test_the_readme_has_the_examples_this_test_checks() -> None:
    commands = readme_commands()
    assert len(commands) >= 20
    said = {word for command in commands for word in command}
    assert set(EXPECTED) <= said


@pytest.mark.timeout(900)
async def test_every_readme_example_runs_and_answers_sensibly(stack, make_caller, monkeypatch) -> None:
    # As `make run`'s development key: an admin of its own tenant, with a user.
    caller = await make_caller(f"readme-{new_id().lower()}", "dev", admin=True)
    monkeypatch.setenv("MOTEUR_GATEWAY", stack.address("gateway"))
    monkeypatch.setenv("MOTEUR_API_KEY", caller.key)
    monkeypatch.setenv("MOTEUR_MONGO_URI", stack.mongo_uri)
    runner = CliRunner()
    session_id = key_id = ""
    for command in readme_commands():
        filled = [_fill(word, command, session_id, key_id) for word in command]
        result = await asyncio.to_thread(runner.invoke, app, filled)  # the CLI's own client, off the loop
        assert result.exit_code == 0, f"moteur {shlex.join(filled)}:\n{result.output}"
        if command[0] == "chat" and "--session" not in command and session_id == "":
            session_id = re.search(r"session (\w{26})", result.output).group(1)
        if command[:2] == ["keys", "create"] and not key_id:
            key_id = ULID.findall(result.output)[0]
        for question, answer in EXPECTED.items():
            if question in command:
                assert answer.lower() in result.output.lower(), f"moteur {shlex.join(filled)}:\n{result.output}"


def _fill(word: str, command: list[str], session_id: str, key_id: str) -> str:
    if word != PLACEHOLDER:
        return word
    value = key_id if command[0] == "keys" else session_id
    assert value, f"no id yet for {command}"
    return value
