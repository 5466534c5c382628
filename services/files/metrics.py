"""The files service's own metrics: renders per format and outcome, their time and size, where table rows came
from, bytes streamed, files expired, template uploads, and the render pool's workers and queue."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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

# The render pool (moteur.files.pool): no tenant label, so a tenant count cannot blow up the series.
FILES_WORKERS = Gauge("moteur_files_workers", "Render worker processes started and ready.")
FILES_WORKERS_BUSY = Gauge("moteur_files_workers_busy", "Render worker processes running a job now.")
FILES_QUEUE_DEPTH = Gauge("moteur_files_render_queue_depth", "Render and template-check jobs waiting for a worker.")
FILES_QUEUE_WAIT = Histogram("moteur_files_render_queue_wait_seconds", "Time a job waited for a worker, by kind "
                             "(render, check).", ["kind"], buckets=LATENCY_BUCKETS)
FILES_WORKERS_KILLED = Counter("moteur_files_workers_killed_total", "Render workers ended by a limit, by the limit "
                               "(cpu, memory, wall, deadline, cancelled, crash).", ["limit"])
FILES_JOBS_DROPPED = Counter("moteur_files_render_jobs_dropped_total", "Queued jobs dropped before they ran, by "
                             "reason (stale: the caller's deadline passed or it cancelled; full: the tenant's "
                             "queue was full).", ["reason"])
