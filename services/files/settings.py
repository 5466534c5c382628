"""The files service's settings, read from its environment (prefix ``MOTEUR_``). What every service reads is
in ``moteur.runtime.settings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from moteur.runtime.settings import MoteurSettings


class FilesSettings(MoteurSettings):
    """Where the files service keeps rendered files, for how long, how large they may be, and the budgets of
    its render workers (CPU, memory, time, fair share across tenants)."""

    files_storage: Literal["dir", "s3"] = Field(
        "dir", description="dir: a directory on one machine (MOTEUR_FILES_DIR); s3: S3-compatible object storage."
    )
    files_dir: Path = Field(Path(".data/files"), description="Directory where rendered files are stored (dir).")
    files_s3_endpoint: str = Field(
        "", description="S3 endpoint URL (MinIO, Ceph, a local server); empty: AWS S3 of the region."
    )
    files_s3_bucket: str = Field("", description="Bucket holding the files (s3); it must exist.")
    files_s3_region: str = Field("us-east-1", description="Region of the bucket (s3).")
    files_s3_prefix: str = Field("files/", description="Key prefix of every object (s3).")
    files_s3_access_key_env: str = Field(
        "AWS_ACCESS_KEY_ID", description="Env var holding the S3 access key id (a Secret); empty: boto3's chain."
    )
    files_s3_secret_key_env: str = Field(
        "AWS_SECRET_ACCESS_KEY", description="Env var holding the S3 secret key (a Secret); empty: boto3's chain."
    )
    files_retention_days: float = Field(
        30.0, gt=0, description="Days a file is kept; after that it is NOT_FOUND and the sweeper deletes it."
    )
    files_sweep_seconds: float = Field(3600.0, gt=0, description="How often expired files are deleted.")
    files_max_bytes: int = Field(
        50 * 1024 * 1024, gt=0, description="Largest rendered file; larger is RESOURCE_EXHAUSTED naming this limit."
    )
    files_max_input_bytes: int = Field(
        4 * 1024 * 1024, gt=0, description="Largest render input: Markdown text plus data (as JSON)."
    )
    files_render_concurrency: int = Field(
        2, ge=1, description="Render worker processes: renders and template checks run at once (one per worker)."
    )
    files_worker_cpu_seconds: float = Field(
        20.0, gt=0, description="CPU time one render may use (template, typesetting); past it the worker is "
        "ended and the render is RESOURCE_EXHAUSTED."
    )
    files_template_cpu_seconds: float = Field(
        2.0, gt=0, description="CPU time a PutTemplate check on sample data may use; past it the template is "
        "refused (INVALID_ARGUMENT)."
    )
    files_worker_memory_bytes: int = Field(
        1024**3, ge=512 * 1024**2, description="Address space of one render worker (RLIMIT_AS); a job past it "
        "ends the worker. A warm worker maps about 450 MiB of it (WeasyPrint, fonts) and keeps 150 MiB resident; at "
        "worst the files container holds (workers + burst) x this, plus about 300 MiB."
    )
    files_worker_wall_seconds: float = Field(
        60.0, gt=0, description="Longest one job may take in a worker, waiting for CPU included; the caller's "
        "deadline, when sooner, ends it first."
    )
    files_burst_workers: int = Field(
        1, ge=0, description="Extra render workers, one job each, started for a tenant that has nothing running "
        "while another holds more than its share of workers."
    )
    files_worker_max_jobs: int = Field(
        200, ge=1, description="Jobs one worker runs before it is replaced by a fresh one."
    )
    files_queue_per_tenant: int = Field(
        16, ge=1, description="Jobs one tenant may have waiting for a worker; more are RESOURCE_EXHAUSTED."
    )
    files_fair_share_grace_seconds: float = Field(
        2.0, ge=0, description="A tenant counts as active (and keeps its share of workers) this long after its "
        "last job ended."
    )
    files_table_model: str = Field(
        "", description="Model hint for finding table rows in free text; empty: the router's extract route."
    )
    files_table_timeout_seconds: float = Field(
        60.0, gt=0, description="Longest a model may take to find table rows in free text."
    )
