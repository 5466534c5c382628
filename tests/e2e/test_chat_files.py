"""Answers rendered into files through the public API: ChatRequest.output_format, the files RPCs of the
gateway (scoped to the key's user and tenant), the generate_file tool, and what happens when rendering
fails (the answer is kept)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re

import grpc
import pytest
from typer.testing import CliRunner

from moteur.cli.main import app
from moteur.client import MoteurClientError
from moteur.v1 import common_pb2


async def download(client, file_id: str) -> tuple[object, bytes]:
    info, data = None, b""
    async for chunk in client.get_file(file_id):
        info = info or chunk.info
        data += chunk.data
    return info, data


async def test_an_answer_rendered_as_pdf_is_kept_with_the_answer_and_downloads_whole(alice) -> None:
    reply = await alice.client.chat("Résumé de la réunion: «budget» validé, œuvre à l'été.", model_hint="instant",
                                    output_format="pdf")
    ref = reply.message.file
    assert ref.file_id and ref.mime_type == "application/pdf" and ref.name.endswith(".pdf")
    info, data = await download(alice.client, ref.file_id)
    assert data.startswith(b"%PDF") and len(data) == ref.size_bytes
    assert hashlib.sha256(data).hexdigest() == ref.sha256 and info.session_id == reply.session_id
    stored = (await alice.client.get_session(reply.session_id)).messages
    assert stored[-1].file.file_id == ref.file_id  # the persisted answer carries its file
    listed = await alice.client.list_files(session_id=reply.session_id)
    assert [f.ref.file_id for f in listed.files] == [ref.file_id]


async def test_a_csv_asked_of_an_answer_with_a_markdown_table_holds_its_rows(alice) -> None:
    table = "Cities:\n\n| city | people |\n|---|---|\n| Lyon | 522000 |\n| Nantes | 320000 |"
    reply = await alice.client.chat(table, model_hint="instant", output_format="csv")  # the answer repeats it
    _, data = await download(alice.client, reply.message.file.file_id)
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert ["Lyon", "522000"] in rows and ["Nantes", "320000"] in rows


async def test_another_users_or_tenants_file_is_not_found_and_a_deleted_file_is_gone(alice, mallory,
                                                                                      make_caller) -> None:
    reply = await alice.client.chat("A short note.", model_hint="instant", output_format="markdown")
    file_id = reply.message.file.file_id
    bob = await make_caller("acme", "bob")
    for other in (mallory, bob):
        with pytest.raises(MoteurClientError) as hidden:
            await download(other.client, file_id)
        assert hidden.value.code is grpc.StatusCode.NOT_FOUND
        with pytest.raises(MoteurClientError) as kept:
            await other.client.delete_file(file_id)
        assert kept.value.code is grpc.StatusCode.NOT_FOUND
    await alice.client.delete_file(file_id)
    with pytest.raises(MoteurClientError) as gone:
        await download(alice.client, file_id)
    assert gone.value.code is grpc.StatusCode.NOT_FOUND


async def test_an_unknown_template_is_refused_before_the_model_is_called(alice) -> None:
    with pytest.raises(MoteurClientError) as refused:
        await alice.client.chat("hello", model_hint="instant", output_format="pdf", output_template="no-such")
    assert refused.value.code is grpc.StatusCode.NOT_FOUND and "no-such" in refused.value.message
    assert "report" in refused.value.message  # it names the templates that exist
    with pytest.raises(MoteurClientError) as no_format:
        await alice.client.chat("hello", model_hint="instant", output_template="report")
    assert no_format.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert no_format.value.message.startswith("output_template")


async def test_when_rendering_fails_the_answer_is_kept_and_the_error_says_where(stack, alice) -> None:
    first = await alice.client.chat("Start.", model_hint="instant")
    with stack.stopped("files"):
        with pytest.raises(MoteurClientError) as failed:
            await alice.client.chat("Make it a PDF.", session_id=first.session_id, model_hint="instant",
                                    output_format="pdf")
    # the template check needs no files service when no template is named: the failure is the render's
    assert failed.value.code is grpc.StatusCode.UNAVAILABLE
    assert f"the answer is saved (session {first.session_id}" in failed.value.message
    stored = (await alice.client.get_session(first.session_id)).messages
    assert stored[-1].role == common_pb2.ROLE_ASSISTANT and stored[-1].content == "instant answer to: Make it a PDF."
    assert not stored[-1].HasField("file")


async def test_the_model_makes_a_file_with_the_generate_file_tool(alice) -> None:
    rows = [{"product": "crème brûlée", "price": 7.5}, {"product": "œuf cocotte", "price": 9}]
    arguments = json.dumps({"format": "xlsx", "rows": rows, "title": "menu"}, ensure_ascii=False)
    reply = await alice.client.chat(f"Make a spreadsheet.\n/tool generate_file {arguments}", model_hint="instant")
    stored = (await alice.client.get_session(reply.session_id)).messages
    result = json.loads(stored[2].tool_result.content_json)
    assert stored[2].tool_result.ok, stored[2].tool_result
    info, data = await download(alice.client, result["file_id"])
    assert data[:2] == b"PK" and info.session_id == reply.session_id  # a zip: the xlsx container


async def test_storing_a_template_needs_an_admin_key(alice) -> None:
    with pytest.raises(MoteurClientError) as refused:
        await alice.client.put_template("mine", "<h1>{{ title }}</h1>", ["html"])
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED


def test_the_cli_saves_the_rendered_answer_and_lists_it(stack, alice, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MOTEUR_GATEWAY", stack.address("gateway"))
    monkeypatch.setenv("MOTEUR_API_KEY", alice.key)
    runner = CliRunner()
    result = runner.invoke(app, ["chat", "--model", "instant", "--as", "docx", "--out", str(tmp_path), "Notes."])
    assert result.exit_code == 0, result.output
    [saved] = list(tmp_path.iterdir())
    assert saved.suffix == ".docx" and saved.read_bytes()[:2] == b"PK" and f"saved {saved}" in result.output
    printed = result.output.replace("\n", " ")  # rich wraps at the runner's 80 columns
    file_id = re.search(r"file\s+(\w{26})\)", printed).group(1)
    listed = runner.invoke(app, ["files", "list"])
    assert listed.exit_code == 0 and file_id in listed.output
    templates = runner.invoke(app, ["templates", "list", "--format", "pdf"])
    assert templates.exit_code == 0 and "report" in templates.output
