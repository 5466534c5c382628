"""File generation: what rendering and streaming cost.

1. Render time per format, in-process (the same code the service runs in its worker threads): a report of
   about 10 pages (headings, paragraphs, lists, code, a long table) into PDF, DOCX, HTML, Markdown and JSON,
   and 100,000 rows into CSV and XLSX.
2. ``GetFile`` streaming a 50 MiB file over gRPC from the files service of a local stack, against reading
   the same file from disk in 64 KiB chunks in-process.

With ``BENCH_FLAMES``, py-spy flame graphs of each part: this process while it renders, and the files service
while it streams.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import pypdf

from bench.flames import THIS_PROCESS, flame_graphs, stack_pids
from moteur.devstack.stack import LocalStack, StackOptions
from moteur.files.formats import BY_NAME
from moteur.files.service import CHUNK_BYTES, RenderInput, produce
from moteur.files.storage import DirectoryStorage
from moteur.files.store import FileRecord, FileStore
from moteur.files.tables import Found, rows_from_data
from moteur.files.templates import BUILT_INS, TemplateRenderer
from moteur.runtime.identity import Identity
from moteur.runtime.ids import new_id
from moteur.runtime.mongo import connect_mongo, database
from moteur.runtime.settings import MongoSettings
from moteur.v1 import files_pb2, files_pb2_grpc

ROWS = 100_000
STREAM_BYTES = 50 * 1024 * 1024
MAX_BYTES = 500 * 1024 * 1024


def report(sections: int = 11) -> str:
    parts = ["# Rapport annuel — Société Générale des Œuvres\n"]
    for n in range(1, sections + 1):
        parts.append(f"\n## {n}. Activité de l'exercice, région n°{n}\n\n"
                     + "L'été à Besançon a été très actif : ça œuvre « bien », déjà. " * 12 + "\n\n"
                     + "".join(f"- Point {i} : progression de {i * 3} % sur l'année\n" for i in range(1, 6))
                     + "\n```python\nresultat = sum(ventes) / len(ventes)\n```\n\n"
                     + "| Mois | Ventes | Coûts |\n|---|---|---|\n"
                     + "".join(f"| {m:02d}/2026 | {m * 1234} | {m * 987} |\n" for m in range(1, 13)))
    return "".join(parts)


def _time(function, repeat: int) -> tuple[float, bytes]:
    times, output = [], b""
    for _ in range(repeat):
        started = time.perf_counter()
        output = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), output


def render_times() -> None:
    renderer = TemplateRenderer()
    text = report()
    print("files: render time per format, in-process (median)")
    for name in ("pdf", "docx", "html", "markdown", "json"):
        fmt = BY_NAME[name]
        request = RenderInput(fmt, text=text)
        seconds, output = _time(lambda fmt=fmt, request=request: produce(
            fmt, BUILT_INS["report"], request, "", None, renderer, MAX_BYTES), 3)
        pages = f", {len(pypdf.PdfReader(io.BytesIO(output)).pages)} pages" if name == "pdf" else ""
        print(f"  report    {name:<8} {seconds * 1000:8.2f} ms  {len(output) / 1024:8.0f} KiB{pages}")
    data = {"columns": ["id", "nom", "ville", "montant", "date"],
            "rows": [{"id": i, "nom": f"Élodie Dupré {i}", "ville": "Besançon", "montant": i * 1.25,
                      "date": f"2026-{i % 12 + 1:02d}-{i % 28 + 1:02d}"} for i in range(ROWS)]}
    found = Found([rows_from_data(data)], "data")
    for name in ("csv", "xlsx"):
        fmt = BY_NAME[name]
        seconds, output = _time(lambda fmt=fmt: produce(fmt, BUILT_INS["table"], RenderInput(fmt, data=data), "",
                                                        found, renderer, MAX_BYTES), 1 if name == "xlsx" else 3)
        print(f"  {ROWS:,} rows {name:<5} {seconds * 1000:8.1f} ms  {len(output) / 1024:8.0f} KiB  "
              f"({ROWS / seconds:,.0f} rows/s)")


async def _streaming(stack: LocalStack) -> tuple[float, float]:
    content = os.urandom(1024 * 1024) * (STREAM_BYTES // (1024 * 1024))
    now = datetime.datetime.now(datetime.UTC)
    key = f"bench/{new_id()}.bin"
    record = FileRecord(new_id(), "bench", "bench-user", "", "large.bin", "csv", "text/csv", len(content),
                        hashlib.sha256(content).hexdigest(), "table", "", key, now, now + datetime.timedelta(hours=1))
    storage = DirectoryStorage(stack.data_dir / "files")
    await storage.put(key, content)
    mongo = connect_mongo(MongoSettings(mongo_uri=stack.mongo_uri))
    await FileStore(database(mongo, MongoSettings(mongo_uri=stack.mongo_uri))).insert(record)
    await mongo.close()
    path = storage.root / key

    def from_disk() -> int:
        total = 0
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                total += len(chunk)
        return total

    disk = min(_time(lambda: from_disk().to_bytes(8), 1)[0] for _ in range(3))
    metadata = stack.mesh_metadata(Identity("bench", "bench-user", "standard"))
    async with grpc.aio.insecure_channel(stack.address("files")) as channel:
        files = files_pb2_grpc.FilesStub(channel)
        best = float("inf")
        with flame_graphs("files", stack_pids(stack, "files")):
            for _ in range(3):
                started, total = time.perf_counter(), 0
                async for chunk in files.GetFile(files_pb2.GetFileRequest(file_id=record.id), metadata=metadata):
                    total += len(chunk.data)
                assert total == len(content)
                best = min(best, time.perf_counter() - started)
    return disk, best


def main() -> None:
    with flame_graphs("files", {THIS_PROCESS: os.getpid()}):
        render_times()
    with tempfile.TemporaryDirectory(prefix="moteur-bench-") as data_dir:
        options = StackOptions(data_dir=Path(data_dir), model_server=False, service_env={"MOTEUR_LOG_LEVEL": "WARNING"})
        with LocalStack(options) as stack:
            disk, streamed = asyncio.run(_streaming(stack))
    mib = STREAM_BYTES / 2**20
    print(f"files: a {mib:.0f} MiB file in 64 KiB chunks (best of 3)")
    print(f"  read from disk in-process  {disk * 1000:8.1f} ms  {mib / disk:8.0f} MiB/s")
    print(f"  GetFile over gRPC          {streamed * 1000:8.1f} ms  {mib / streamed:8.0f} MiB/s "
          f"({streamed / disk:.0f}x the disk read)")


if __name__ == "__main__":
    main()
