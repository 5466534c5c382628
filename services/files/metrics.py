"""The files service's own metrics: renders per format and outcome, their time and size, where table rows came
from, bytes streamed, files expired, template uploads."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from moteur.runtime.metrics import LATENCY_BUCKETS

FILES_RENDERS = Counter("moteur_files_renders_total", "Render calls, by format and outcome (ok or the status "
                        "code in lower case: invalid_argument, not_found, resource_exhausted…).", ["format", "outcome"])
FILES_RENDER_SECONDS = Histogram("moteur_files_render_duration_seconds", "Time to render and store one file.",
                                 ["format"], buckets=LATENCY_BUCKETS)
FILES_RENDERED_BYTES = Counter("moteur_files_rendered_bytes_total", "Bytes of the files rendered.", ["format"])
FILES_SIZE = Histogram("moteur_files_size_bytes", "Size of one rendered file.", ["format"],
                       buckets=(1e3, 1e4, 1e5, 1e6, 5e6, 1e7, 5e7, 1e8))
FILES_TABLE_SOURCES = Counter("moteur_files_table_sources_total", "Where the rows of CSV and XLSX files came from: "
                              "data, markdown (tables in the text), model, text (no table found).", ["source"])
FILES_STREAMED_BYTES = Counter("moteur_files_streamed_bytes_total", "Bytes sent by GetFile.")
FILES_EXPIRED = Counter("moteur_files_expired_total", "Files deleted by the retention sweeper.")
FILES_TEMPLATE_UPLOADS = Counter("moteur_files_template_uploads_total", "PutTemplate calls, by outcome (ok, refused).",
                                 ["outcome"])
