"""The files service through gRPC: every format rendered and read back with a parser, real typesetting (accents,
long tables across pages, a page that is not blank), templates (built-in, tenant, sandboxed), tables found in
text, tenancy, limits, retention, streaming in flat memory, and S3 storage against a local S3 server."""

from __future__ import annotations

import asyncio
import csv
import datetime
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import docx
import grpc
import openpyxl
import pypdf
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

from moteur.devstack.processes import ManagedProcess, free_port, port_open
from moteur.files.storage import DirectoryStorage
from moteur.files.store import FileRecord, FileStore
from moteur.runtime.identity import Identity
from moteur.runtime.ids import new_id
from moteur.runtime.mongo import database
from moteur.runtime.settings import MongoSettings
from moteur.v1 import common_pb2, files_pb2, files_pb2_grpc
from tests.mesh import signed

ACME = Identity("acme", "alice", "standard")
ACME_BOB = Identity("acme", "bob", "standard")
GLOBEX = Identity("globex", "mallory", "standard")
INITECH = Identity("initech", "peter", "standard")  # the tenant that overrides "report"
INITECH_BILL = Identity("initech", "bill", "standard")
ACME_ADMIN = Identity("acme", "alice", "standard", admin=True)  # templates are stored with admin keys only
INITECH_ADMIN = Identity("initech", "peter", "standard", admin=True)
F = common_pb2
FRENCH = "L'été à Besançon : ça œuvre « bien », déjà naïf."
REPORT = f"""# Rapport trimestriel

{FRENCH}

## Points clés

- Ventes en **hausse**
- Coûts *maîtrisés*
  - dont énergie

1. Premier
2. Second

```python
print("café")
```

| Produit | Ville | Prix |
|---|---|---|
| Crème brûlée | Besançon | 4.5 |
| Pâté | Orléans | 12 |
"""


def _struct(value: dict[str, object]) -> struct_pb2.Struct:
    data = struct_pb2.Struct()
    data.update(value)
    return data


@pytest.fixture
async def files(stack):
    async with grpc.aio.insecure_channel(stack.address("files")) as channel:
        yield files_pb2_grpc.FilesStub(channel)


async def _render(files, metadata=None, **fields) -> files_pb2.FileInfo:
    if isinstance(fields.get("data"), dict):
        fields["data"] = _struct(fields["data"])
    return await files.Render(files_pb2.RenderRequest(**fields), metadata=metadata or signed(ACME), timeout=60)


async def _fetch(files, file_id: str, metadata=None) -> tuple[files_pb2.FileInfo, bytes]:
    info, content = None, bytearray()
    request = files_pb2.GetFileRequest(file_id=file_id)
    async for chunk in files.GetFile(request, metadata=metadata or signed(ACME), timeout=60):
        if chunk.HasField("info"):
            info = chunk.info
        content += chunk.data
    assert info is not None
    return info, bytes(content)


async def _error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def _stream_error(stream) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    return caught.value


def _pdf_text(content: bytes) -> list[str]:
    return [page.extract_text() for page in pypdf.PdfReader(io.BytesIO(content)).pages]


def _docx_text(content: bytes) -> str:
    document = docx.Document(io.BytesIO(content))
    cells = [c.text for t in document.tables for r in t.rows for c in r.cells]
    return "\n".join([p.text for p in document.paragraphs] + cells)


# -- every format, read back -----------------------------------------------------------------------------
async def test_a_pdf_reads_back_with_its_accents_headings_lists_code_and_table(files) -> None:
    info = await _render(files, format=F.FILE_FORMAT_PDF, markdown=REPORT)
    assert info.ref.name == "rapport-trimestriel.pdf" and info.ref.mime_type == "application/pdf"
    assert info.template == "report" and info.tenant_id == "acme" and info.user_id == "alice"
    fetched, content = await _fetch(files, info.ref.file_id)
    assert content.startswith(b"%PDF") and len(content) == info.ref.size_bytes == fetched.ref.size_bytes
    assert hashlib.sha256(content).hexdigest() == info.ref.sha256
    text = "\n".join(_pdf_text(content))
    for expected in (FRENCH, "Rapport trimestriel", "Points clés", "Ventes en hausse", "dont énergie",
                     'print("café")', "Crème brûlée Besançon 4.5"):
        assert expected in text
    assert info.expires_at.ToDatetime() - info.created_at.ToDatetime() == datetime.timedelta(days=30)


async def test_a_rendered_pdf_page_is_not_blank(files, tmp_path: Path) -> None:
    info = await _render(files, format=F.FILE_FORMAT_PDF, markdown=REPORT)
    pdf = tmp_path / "page.pdf"
    pdf.write_bytes((await _fetch(files, info.ref.file_id))[1])
    await asyncio.to_thread(subprocess.run, ["pdftoppm", "-png", "-r", "50", "-f", "1", "-l", "1", "-singlefile",
                                             str(pdf), str(tmp_path / "page")], check=True)
    image = Image.open(tmp_path / "page.png").convert("L")
    histogram = image.histogram()
    dark = sum(histogram[:128])
    assert image.width > 300 and dark > 0.005 * image.width * image.height  # ink on the page, not only white


async def test_long_tables_break_across_pages_and_repeat_their_header(files) -> None:
    rows = [{"Numéro": i, "Libellé": f"Ligne numéro {i} — œuvre"} for i in range(200)]
    data = {"rows": rows, "columns": ["Numéro", "Libellé"]}
    info = await _render(files, format=F.FILE_FORMAT_PDF, template="table", title="Inventaire", data=data)
    pages = _pdf_text((await _fetch(files, info.ref.file_id))[1])
    assert len(pages) >= 4
    assert all("Numéro Libellé" in page for page in pages)  # the header row on every page
    assert "Ligne numéro 199 — œuvre" in pages[-1]
    word = await _render(files, format=F.FILE_FORMAT_DOCX, template="table", data=data)
    table = docx.Document(io.BytesIO((await _fetch(files, word.ref.file_id))[1])).tables[0]
    assert len(table.rows) == 201 and table.rows[0]._tr.xpath("./w:trPr/w:tblHeader")


async def test_html_renders_markdown_structure_and_escapes_raw_html(files) -> None:
    text = REPORT + "\n<script>alert(1)</script>\n"
    info = await _render(files, format=F.FILE_FORMAT_HTML, markdown=text)
    html = (await _fetch(files, info.ref.file_id))[1].decode()
    for tag in ("<h1>Rapport trimestriel</h1>", "<ul>", "<ol>", "<pre><code", "<table>", "<thead>",
                "<strong>hausse</strong>", FRENCH):
        assert tag in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert info.ref.mime_type == "text/html; charset=utf-8"


async def test_docx_has_word_headings_lists_code_and_a_table(files) -> None:
    info = await _render(files, format=F.FILE_FORMAT_DOCX, markdown=REPORT)
    content = (await _fetch(files, info.ref.file_id))[1]
    document = docx.Document(io.BytesIO(content))
    styles = {(p.style.name, p.text) for p in document.paragraphs}
    assert ("Heading 1", "Rapport trimestriel") in styles and ("Heading 2", "Points clés") in styles
    assert ("List Bullet", "Ventes en hausse") in styles and ("List Bullet 2", "dont énergie") in styles
    assert ("List Number", "Premier") in styles and ("No Spacing", 'print("café")') in styles
    assert ("Normal", FRENCH) in styles
    assert [c.text for c in document.tables[0].rows[1].cells] == ["Crème brûlée", "Besançon", "4.5"]


async def test_a_docx_title_longer_than_office_takes_is_cut_in_its_properties_only(files) -> None:
    title = "Compte rendu détaillé " * 20  # 440 characters; Office keeps 255 in a property (found by the fuzzer)
    info = await _render(files, format=F.FILE_FORMAT_DOCX, markdown="Texte.", title=title)
    document = docx.Document(io.BytesIO((await _fetch(files, info.ref.file_id))[1]))
    assert document.core_properties.title == title[:255]


async def test_markdown_and_json_keep_the_text_and_the_tables(files) -> None:
    info = await _render(files, format=F.FILE_FORMAT_MARKDOWN, markdown=REPORT)
    assert (await _fetch(files, info.ref.file_id))[1].decode() == REPORT
    info = await _render(files, format=F.FILE_FORMAT_JSON, markdown=REPORT, data={"source": "ventes"})
    document = json.loads((await _fetch(files, info.ref.file_id))[1])
    assert document["title"] == "Rapport trimestriel" and document["text"] == REPORT
    assert document["data"] == {"source": "ventes"}
    assert document["tables"][0]["rows"][1] == {"Produit": "Pâté", "Ville": "Orléans", "Prix": 12}


async def test_csv_and_xlsx_take_the_rows_of_the_data(files) -> None:
    rows = [{"nom": "Élodie", "ville": "Besançon", "montant": 12.5}, {"nom": "François", "ville": "Nîmes",
                                                                        "montant": 3, "note": "=1+1"}]
    columns = ["nom", "ville", "montant", "note"]
    info = await _render(files, format=F.FILE_FORMAT_CSV, data={"rows": rows, "columns": columns}, name="clients")
    assert info.ref.name == "clients.csv" and not info.note
    text = (await _fetch(files, info.ref.file_id))[1].decode("utf-8-sig")
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert parsed[0] == {"nom": "Élodie", "ville": "Besançon", "montant": "12.5", "note": ""}
    assert parsed[1]["note"] == "'=1+1"  # never a formula in a spreadsheet
    info = await _render(files, format=F.FILE_FORMAT_XLSX, data={"rows": rows})  # no columns: sorted by name
    sheet = openpyxl.load_workbook(io.BytesIO((await _fetch(files, info.ref.file_id))[1])).active
    values = list(sheet.iter_rows(values_only=True))
    assert values[0] == ("montant", "nom", "note", "ville") and sheet["A1"].font.b
    assert values[1] == (12.5, "Élodie", None, "Besançon") and values[2] == (3, "François", "=1+1", "Nîmes")
    assert sheet["C3"].data_type == "s"


async def test_table_formats_take_the_markdown_tables_of_a_text(files) -> None:
    text = REPORT + "\n| Clé | Valeur |\n|---|---|\n| œ | « » |\n"
    info = await _render(files, format=F.FILE_FORMAT_CSV, markdown=text)
    rows = list(csv.reader(io.StringIO((await _fetch(files, info.ref.file_id))[1].decode("utf-8-sig"))))
    assert rows == [["Produit", "Ville", "Prix"], ["Crème brûlée", "Besançon", "4.5"], ["Pâté", "Orléans", "12"]]
    assert "2 tables" in info.note
    info = await _render(files, format=F.FILE_FORMAT_XLSX, markdown=text)
    book = openpyxl.load_workbook(io.BytesIO((await _fetch(files, info.ref.file_id))[1]))
    assert len(book.worksheets) == 2 and list(book.worksheets[1].iter_rows(values_only=True))[1] == ("œ", "« »")


# -- templates ---------------------------------------------------------------------------------------------
async def test_the_built_in_templates_are_listed_with_their_formats(files) -> None:
    answer = await files.ListTemplates(files_pb2.ListTemplatesRequest(), metadata=signed(GLOBEX))
    listed = {t.name: t for t in answer.templates}
    assert {"report", "table", "letter", "meeting_notes", "transcript"} <= set(listed)
    assert all(t.built_in for t in listed.values())
    assert F.FILE_FORMAT_CSV in listed["table"].formats and F.FILE_FORMAT_CSV not in listed["letter"].formats
    assert json.loads(listed["transcript"].data_schema_json)["required"] == ["messages"]
    csv_only = await files.ListTemplates(files_pb2.ListTemplatesRequest(format=F.FILE_FORMAT_CSV),
                                         metadata=signed(GLOBEX))
    assert [t.name for t in csv_only.templates] == ["table"]


async def test_a_transcript_renders_each_message_of_the_conversation(files) -> None:
    messages = [{"role": "user", "content": "Où se trouve la gare ?", "at": "10:02"},
                {"role": "assistant", "content": "Place de la **Gare**, à deux pas."}]
    info = await _render(files, format=F.FILE_FORMAT_PDF, template="transcript", data={"messages": messages})
    text = "\n".join(_pdf_text((await _fetch(files, info.ref.file_id))[1]))
    assert "Conversation transcript" in text and "User · 10:02" in text and "Où se trouve la gare ?" in text
    assert "Place de la Gare, à deux pas." in text and info.template == "transcript"


async def test_letter_and_meeting_notes_render_their_data(files) -> None:
    letter = await _render(files, format=F.FILE_FORMAT_DOCX, template="letter", markdown="Je vous écris…",
                           data={"recipient": ["M. Dupont", "1 rue de la Paix"], "subject": "Objet : réunion"})
    text = _docx_text((await _fetch(files, letter.ref.file_id))[1])
    assert "M. Dupont" in text and "Objet : réunion" in text and "Je vous écris…" in text
    notes = await _render(files, format=F.FILE_FORMAT_MARKDOWN, template="meeting_notes", markdown="On a parlé.",
                          data={"attendees": ["Zoé", "Noël"], "actions": [{"owner": "Zoé", "task": "Relire"}]})
    body = (await _fetch(files, notes.ref.file_id))[1].decode()
    assert "**Attendees:** Zoé, Noël" in body and "| Zoé | Relire |  |" in body


@pytest.mark.parametrize(("fields", "code", "words"), [
    ({"format": F.FILE_FORMAT_UNSPECIFIED, "markdown": "x"}, grpc.StatusCode.INVALID_ARGUMENT, "format"),
    ({"format": 42, "markdown": "x"}, grpc.StatusCode.INVALID_ARGUMENT, "format"),
    ({"format": F.FILE_FORMAT_PDF, "template": "brochure", "markdown": "x"}, grpc.StatusCode.NOT_FOUND,
     "known templates: letter, meeting_notes, report"),
    ({"format": F.FILE_FORMAT_CSV, "template": "letter", "markdown": "x"}, grpc.StatusCode.INVALID_ARGUMENT,
     "does not render csv"),
    ({"format": F.FILE_FORMAT_PDF, "template": "letter", "markdown": "Bonjour", "data": {"sender": "Moi"}},
     grpc.StatusCode.INVALID_ARGUMENT, "'recipient' is a required property"),
    ({"format": F.FILE_FORMAT_PDF, "template": "letter", "data": {"recipient": "Vous"}},
     grpc.StatusCode.INVALID_ARGUMENT, "needs the text"),
    ({"format": F.FILE_FORMAT_HTML, "template": "transcript", "data": {"messages": [{"role": "user"}]}},
     grpc.StatusCode.INVALID_ARGUMENT, "data.messages.0: 'content' is a required property"),
    ({"format": F.FILE_FORMAT_PDF, "template": "table", "markdown": "no table here"},
     grpc.StatusCode.INVALID_ARGUMENT, "needs rows"),
    ({"format": F.FILE_FORMAT_CSV, "data": {"rows": [1, 2]}}, grpc.StatusCode.INVALID_ARGUMENT, "data.rows"),
    ({"format": F.FILE_FORMAT_MARKDOWN, "markdown": "x" * (4 * 1024 * 1024 + 1)},
     grpc.StatusCode.INVALID_ARGUMENT, "MOTEUR_FILES_MAX_INPUT_BYTES"),
])
async def test_bad_render_requests_say_what_to_change(files, fields, code, words) -> None:
    error = await _error(_render(files, **fields))
    assert error.code() is code and words in error.details(), error.details()


async def test_a_tenant_template_overrides_a_built_in_for_that_tenant_only(files) -> None:
    source = "# {{ title | default('Rapport ACME', true) }}\n\n{{ markdown }}\n\n*Confidentiel — ACME*\n"
    stored = await files.PutTemplate(files_pb2.PutTemplateRequest(
        name="report", formats=[F.FILE_FORMAT_PDF, F.FILE_FORMAT_MARKDOWN], source=source,
        description="Initech's report"), metadata=signed(INITECH_ADMIN))
    assert not stored.built_in and set(stored.formats) == {F.FILE_FORMAT_PDF, F.FILE_FORMAT_MARKDOWN}
    mine = await _render(files, format=F.FILE_FORMAT_MARKDOWN, markdown="Texte", metadata=signed(INITECH_BILL))
    assert "*Confidentiel — ACME*" in (await _fetch(files, mine.ref.file_id, signed(INITECH_BILL)))[1].decode()
    theirs = await _render(files, format=F.FILE_FORMAT_MARKDOWN, markdown="Texte", metadata=signed(GLOBEX))
    assert "Confidentiel" not in (await _fetch(files, theirs.ref.file_id, signed(GLOBEX)))[1].decode()
    answer = await files.ListTemplates(files_pb2.ListTemplatesRequest(), metadata=signed(INITECH))
    listed = {t.name: t for t in answer.templates}
    assert not listed["report"].built_in and listed["letter"].built_in
    # Its formats are its own: Initech's report no longer renders DOCX.
    error = await _error(_render(files, format=F.FILE_FORMAT_DOCX, markdown="x", metadata=signed(INITECH)))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and "renders markdown, pdf" in error.details()


async def test_an_html_template_escapes_the_data_it_shows(files) -> None:
    source = "<h1>{{ title }}</h1>\n<p class=\"who\">{{ data.who }}</p>\n{{ markdown | markdown }}"
    await files.PutTemplate(files_pb2.PutTemplateRequest(name="card", formats=[F.FILE_FORMAT_HTML], source=source),
                            metadata=signed(ACME_ADMIN))
    info = await _render(files, format=F.FILE_FORMAT_HTML, template="card", title="Fiche",
                         markdown="**gras**", data={"who": "<img src=x onerror=alert(1)>"})
    html = (await _fetch(files, info.ref.file_id))[1].decode()
    assert '<p class="who">&lt;img src=x onerror=alert(1)&gt;</p>' in html and "<strong>gras</strong>" in html


@pytest.mark.parametrize(("source", "words"), [
    ("Bonjour\n{% for x in data.items %}\n{{ x }\n{% endfor %}", "line 3"),
    ("Un\nDeux\n{{ ''.__class__.__mro__[1].__subclasses__() }}", "line 3: '__subclasses__' is not allowed"),
    ("{{ data | attr('__class__') }}", "line 1: '__class__' is not allowed"),
    ("{{ cycler.__init__.__globals__ }}", "is not allowed"),
    ("ok\n{{ 'x' * 100000000 }}", "line 2: fails on sample data"),
    ("{{ 1 / 0 }}", "line 1: fails on sample data: division by zero"),
])
async def test_templates_with_errors_or_escapes_are_refused_naming_the_line(files, source: str, words: str) -> None:
    request = files_pb2.PutTemplateRequest(name="evil", formats=[F.FILE_FORMAT_MARKDOWN], source=source)
    error = await _error(files.PutTemplate(request, metadata=signed(ACME_ADMIN)))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and words in error.details(), error.details()
    listed = await files.ListTemplates(files_pb2.ListTemplatesRequest(), metadata=signed(ACME))
    assert "evil" not in {t.name for t in listed.templates}


async def test_template_uploads_need_a_name_and_document_formats(files) -> None:
    for request, words in [
        (files_pb2.PutTemplateRequest(name="Bad Name", formats=[F.FILE_FORMAT_PDF], source="x"), "name"),
        (files_pb2.PutTemplateRequest(name="rows", formats=[F.FILE_FORMAT_CSV], source="x"), "made from rows"),
        (files_pb2.PutTemplateRequest(name="none", source="x"), "formats"),
    ]:
        error = await _error(files.PutTemplate(request, metadata=signed(ACME_ADMIN)))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and words in error.details()


# -- stored files: tenancy, listing, deletion ---------------------------------------------------------------
async def test_another_tenants_or_users_file_is_not_found(files) -> None:
    info = await _render(files, format=F.FILE_FORMAT_MARKDOWN, markdown="secret", metadata=signed(ACME))
    for metadata in (signed(GLOBEX), signed(ACME_BOB)):
        error = await _stream_error(files.GetFile(files_pb2.GetFileRequest(file_id=info.ref.file_id),
                                                  metadata=metadata))
        assert error.code() is grpc.StatusCode.NOT_FOUND
        error = await _error(files.DeleteFile(files_pb2.DeleteFileRequest(file_id=info.ref.file_id), metadata=metadata))
        assert error.code() is grpc.StatusCode.NOT_FOUND
    service_key = signed(Identity("acme", "", "service"))  # a service key sees its tenant's files
    assert (await _fetch(files, info.ref.file_id, service_key))[1] == b"secret\n"


async def test_files_are_listed_newest_first_by_session_in_pages(files) -> None:
    session = new_id()
    made = [await _render(files, format=F.FILE_FORMAT_MARKDOWN, markdown=f"n°{i}", session_id=session, name=f"f{i}")
            for i in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await files.ListFiles(files_pb2.ListFilesRequest(session_id=session, page_size=2, page_token=token),
                                     metadata=signed(ACME))
        seen += [f.ref.name for f in page.files]
        if not (token := page.next_page_token):
            break
    assert seen == [f"f{i}.md" for i in reversed(range(5))]
    assert {f.session_id for f in made} == {session}
    other = await files.ListFiles(files_pb2.ListFilesRequest(session_id=session), metadata=signed(GLOBEX))
    assert list(other.files) == []


async def test_a_deleted_file_is_gone_with_its_bytes(files, stack) -> None:
    info = await _render(files, format=F.FILE_FORMAT_CSV, data={"rows": [{"a": 1}]})
    stored = list((stack.data_dir / "files").rglob(f"{info.ref.file_id}.csv"))
    assert len(stored) == 1
    await files.DeleteFile(files_pb2.DeleteFileRequest(file_id=info.ref.file_id), metadata=signed(ACME))
    assert not stored[0].exists()
    error = await _stream_error(files.GetFile(files_pb2.GetFileRequest(file_id=info.ref.file_id),
                                              metadata=signed(ACME)))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    error = await _error(files.DeleteFile(files_pb2.DeleteFileRequest(file_id=info.ref.file_id), metadata=signed(ACME)))
    assert error.code() is grpc.StatusCode.NOT_FOUND


async def test_a_malformed_file_id_is_invalid(files) -> None:
    error = await _stream_error(files.GetFile(files_pb2.GetFileRequest(file_id="../../etc/passwd"),
                                              metadata=signed(ACME)))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and "file_id" in error.details()


# -- streaming in flat memory -------------------------------------------------------------------------------
def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_streaming_a_large_file_keeps_the_service_memory_flat(files, stack, mongo) -> None:
    size = 50 * 1024 * 1024
    content = os.urandom(1024 * 1024) * 50
    now = datetime.datetime.now(datetime.UTC)
    record = FileRecord(new_id(), "acme", "alice", "", "large.bin", "csv", "text/csv", size,
                        hashlib.sha256(content).hexdigest(), "table", "", f"acme/large-{new_id()}.csv", now,
                        now + datetime.timedelta(hours=1))
    await DirectoryStorage(stack.data_dir / "files").put(record.storage_key, content)
    await FileStore(database(mongo, MongoSettings(mongo_uri=stack.mongo_uri))).insert(record)
    del content
    pid = stack.processes["files"].pid
    await _fetch(files, (await _render(files, format=F.FILE_FORMAT_MARKDOWN, markdown="warm-up")).ref.file_id)
    baseline, peak, done = _rss_bytes(pid), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    digest, received, chunks = hashlib.sha256(), 0, 0
    async for chunk in files.GetFile(files_pb2.GetFileRequest(file_id=record.id), metadata=signed(ACME), timeout=60):
        digest.update(chunk.data)
        received += len(chunk.data)
        chunks += 1
        assert len(chunk.data) <= 64 * 1024
    done.set()
    sampler.join()
    assert received == size and digest.hexdigest() == record.sha256 and chunks == size // (64 * 1024)
    grown = peak[0] - baseline
    print(f"\nfiles service RSS while streaming 50 MiB: +{grown / 2**20:.1f} MiB")
    assert grown < 16 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB"


# -- a files service with other settings: size limit, model-found tables, retention -------------------------
@pytest.fixture(scope="module")
async def scripted_files(stack):
    """A files service whose tables come from the scripted model and whose files may take 100 kB."""
    process, address = stack.extra_service("files", "files-scripted", MOTEUR_FILES_TABLE_MODEL="scripted",
                                           MOTEUR_FILES_MAX_BYTES="100000")
    process.start()
    async with grpc.aio.insecure_channel(address) as channel:
        yield files_pb2_grpc.FilesStub(channel)
    process.stop()


def _script(fault_server: str, text: str, answer: dict[str, object]) -> None:
    body = json.dumps({"match": text, "steps": [{"text": json.dumps(answer)}]}).encode()
    request = urllib.request.Request(f"{fault_server}/scripts", body, {"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=5).close()


async def test_a_file_over_the_size_limit_is_resource_exhausted_naming_it(scripted_files) -> None:
    rows = [{"n": i, "texte": "é" * 40} for i in range(2000)]
    error = await _error(_render(scripted_files, format=F.FILE_FORMAT_CSV, data={"rows": rows}))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 100,000 bytes" in error.details() and "MOTEUR_FILES_MAX_BYTES" in error.details()
    status = rpc_status.from_call(error)
    assert status is not None
    failure = error_details_pb2.QuotaFailure()
    assert status.details[0].Unpack(failure) and "100000" in failure.violations[0].description


async def test_a_model_finds_the_rows_of_a_text_without_a_table(scripted_files, fault_server: str) -> None:
    text = "Nous avons vendu 3 crêpes à Nantes et 5 galettes à Rennes."
    _script(fault_server, text, {"columns": ["produit", "ville", "quantité"],
                                 "rows": [["crêpes", "Nantes", 3], ["galettes", "Rennes", 5]]})
    info = await _render(scripted_files, format=F.FILE_FORMAT_XLSX, markdown=text)
    sheet = openpyxl.load_workbook(io.BytesIO((await _fetch(scripted_files, info.ref.file_id))[1])).active
    assert list(sheet.iter_rows(values_only=True)) == [("produit", "ville", "quantité"), ("crêpes", "Nantes", 3),
                                                       ("galettes", "Rennes", 5)]
    assert "found in the text by a model" in info.note


@pytest.mark.parametrize(("answer", "why"), [
    ({"columns": [], "rows": []}, "a model found none"),
    ({"columns": "produit", "rows": "many"}, "the model's rows were not valid"),
])
async def test_a_text_with_no_table_still_makes_a_file_and_says_so(scripted_files, fault_server: str, answer,
                                                                  why: str) -> None:
    text = f"Il fait beau aujourd'hui ({why}).\n\nDemain aussi."
    _script(fault_server, text, answer)
    info = await _render(scripted_files, format=F.FILE_FORMAT_CSV, markdown=text)
    rows = list(csv.reader(io.StringIO((await _fetch(scripted_files, info.ref.file_id))[1].decode("utf-8-sig"))))
    assert rows == [["text"], [f"Il fait beau aujourd'hui ({why})."], ["Demain aussi."]]
    assert info.note.startswith("the answer had no table in it") and why in info.note


async def test_expired_files_are_not_served_and_the_sweeper_deletes_them(stack) -> None:
    process, address = stack.extra_service("files", "files-short-lived", MOTEUR_FILES_RETENTION_DAYS="0.00002",
                                           MOTEUR_FILES_SWEEP_SECONDS="0.5")  # 0.00002 days: 1.7 s
    process.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            short = files_pb2_grpc.FilesStub(channel)
            info = await _render(short, format=F.FILE_FORMAT_MARKDOWN, markdown="éphémère")
            assert (await _fetch(short, info.ref.file_id))[1] == "éphémère\n".encode()
            (stored,) = (stack.data_dir / "files").rglob(f"{info.ref.file_id}.md")
            for _ in range(50):  # the sweeper runs every 0.5 s; the file expires after 1.7 s
                if not stored.exists():
                    break
                await asyncio.sleep(0.2)
            assert not stored.exists()
            error = await _stream_error(short.GetFile(files_pb2.GetFileRequest(file_id=info.ref.file_id),
                                                      metadata=signed(ACME)))
            assert error.code() is grpc.StatusCode.NOT_FOUND
    finally:
        process.stop()


# -- S3-compatible storage ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """moto's S3-compatible server on a free loopback port, with an empty bucket."""
    import boto3

    port = free_port()
    server = ManagedProcess("s3", [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p",
                                   str(port)], tmp_path_factory.mktemp("s3") / "moto.log",
                            ready=lambda: port_open(port))
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                          aws_secret_access_key="test")
    client.create_bucket(Bucket="moteur-files")
    yield endpoint, client
    server.stop()


async def test_the_s3_backend_stores_streams_and_deletes_files(stack, s3_server) -> None:
    endpoint, client = s3_server
    process, address = stack.extra_service(
        "files", "files-s3", MOTEUR_FILES_STORAGE="s3", MOTEUR_FILES_S3_ENDPOINT=endpoint,
        MOTEUR_FILES_S3_BUCKET="moteur-files", MOTEUR_FILES_S3_PREFIX="test/", AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test")
    process.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            s3_files = files_pb2_grpc.FilesStub(channel)
            rows = [{"i": i, "mot": "œuvre « é »"} for i in range(20000)]  # several chunks
            info = await _render(s3_files, format=F.FILE_FORMAT_CSV, data={"rows": rows})
            keys = [o["Key"] for o in client.list_objects_v2(Bucket="moteur-files")["Contents"]]
            assert keys == [f"test/acme/{info.ref.file_id}.csv"]
            _, content = await _fetch(s3_files, info.ref.file_id)
            assert hashlib.sha256(content).hexdigest() == info.ref.sha256 and info.ref.size_bytes > 256 * 1024
            assert content.decode("utf-8-sig").splitlines()[-1] == "19999,œuvre « é »"
            await s3_files.DeleteFile(files_pb2.DeleteFileRequest(file_id=info.ref.file_id), metadata=signed(ACME))
            assert client.list_objects_v2(Bucket="moteur-files").get("KeyCount") == 0
            error = await _stream_error(s3_files.GetFile(files_pb2.GetFileRequest(file_id=info.ref.file_id),
                                                         metadata=signed(ACME)))
            assert error.code() is grpc.StatusCode.NOT_FOUND
    finally:
        process.stop()
