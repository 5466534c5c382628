"""The budgets a render or a template check runs under, read from settings, and the error that names the one a
job passed: the caller learns which limit it hit and which setting raises it.

A template check that passes a budget is the template's fault (INVALID_ARGUMENT: it is refused); a render
that passes one is RESOURCE_EXHAUSTED with a QuotaViolation for the tenant; a job whose caller's deadline
came first is DEADLINE_EXCEEDED.
"""

from __future__ import annotations

from moteur.files.pool import LimitExceeded, PoolLimits, QueueFull
from moteur.files.settings import FilesSettings
from moteur.runtime.errors import DeadlineExceeded, InvalidArgument, MoteurError, QuotaViolation, ResourceExhausted

CHECK, RENDER = "check", "render"


def pool_limits(settings: FilesSettings) -> PoolLimits:
    return PoolLimits(
        workers=settings.files_render_concurrency, memory_bytes=settings.files_worker_memory_bytes,
        wall_seconds=settings.files_worker_wall_seconds, per_tenant_queue=settings.files_queue_per_tenant,
        burst_workers=settings.files_burst_workers, max_jobs_per_worker=settings.files_worker_max_jobs,
        fair_share_grace_seconds=settings.files_fair_share_grace_seconds,
    )


def cpu_seconds(kind: str, settings: FilesSettings) -> float:
    return settings.files_template_cpu_seconds if kind == CHECK else settings.files_worker_cpu_seconds


def refusal(error: LimitExceeded | QueueFull, tenant: str, settings: FilesSettings) -> MoteurError:
    """The domain error for a job the pool refused or ended."""
    if isinstance(error, QueueFull):
        return ResourceExhausted(
            f"tenant {tenant!r} already has {error.limit} renders waiting (MOTEUR_FILES_QUEUE_PER_TENANT); "
            "retry when some are done", retry_after_seconds=1.0,
            violations=[QuotaViolation(f"tenant:{tenant}", f"files_queue_per_tenant limit of {error.limit}")])
    kind = error.job.kind
    what = "the template check" if kind == CHECK else "the render"
    if error.limit == "deadline":
        return DeadlineExceeded(f"{what} did not finish before the caller's deadline")
    limit, setting, value = _limit(error, settings)
    subject = "the template" if kind == CHECK else what
    message = (f"{subject}'s worker crashed, most often from passing its {limit} ({setting})"
               if error.limit == "crash" else f"{subject} ran past its {limit} ({setting})")
    if kind == CHECK:
        message += " on sample data"
    if kind == CHECK:
        return InvalidArgument("source", message)
    return ResourceExhausted(message, violations=[QuotaViolation(f"tenant:{tenant}",
                                                                 f"{setting.removeprefix('MOTEUR_').lower()} "
                                                                 f"limit of {value}")])


def _limit(error: LimitExceeded, settings: FilesSettings) -> tuple[str, str, str]:
    """(what the limit is, its setting, its value) for a message."""
    if error.limit == "cpu":
        seconds = cpu_seconds(error.job.kind, settings)
        setting = "MOTEUR_FILES_TEMPLATE_CPU_SECONDS" if error.job.kind == CHECK else "MOTEUR_FILES_WORKER_CPU_SECONDS"
        return f"{seconds:g} s CPU budget", setting, f"{seconds:g} s"
    if error.limit == "wall":
        seconds = settings.files_worker_wall_seconds
        return f"{seconds:g} s time budget", "MOTEUR_FILES_WORKER_WALL_SECONDS", f"{seconds:g} s"
    mib = settings.files_worker_memory_bytes / 2**20
    return f"{mib:g} MiB memory limit", "MOTEUR_FILES_WORKER_MEMORY_BYTES", f"{mib:g} MiB"
