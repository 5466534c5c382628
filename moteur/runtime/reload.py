"""Configuration files that apply without a restart: read, validate whole, apply, or refuse and keep.

Watches the file's directory (a Kubernetes ConfigMap volume replaces files by swapping a symlink, which a
watch on the file itself would miss). A file that does not validate is refused with the reason logged and
counted; the service keeps the configuration it had. The router's model registry and the tools service's
policy both reload this way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog
import yaml
from prometheus_client import Counter
from pydantic import BaseModel, ValidationError
from watchfiles import awatch

log = structlog.get_logger("moteur.reload")

Config = TypeVar("Config")
Applied = TypeVar("Applied", contravariant=True)
Model = TypeVar("Model", bound=BaseModel)


class Reloadable(Protocol[Applied]):
    """What holds a reloadable configuration: its current revision and a way to replace it."""

    @property
    def revision(self) -> str: ...

    def apply(self, config: Applied, revision: str) -> None: ...


def load_yaml(path: Path, model: type[Model]) -> tuple[Model, str]:
    """The file validated by ``model`` and its revision (a hash of its bytes)."""
    raw = path.read_bytes()
    return model.model_validate(yaml.safe_load(raw) or {}), hashlib.sha256(raw).hexdigest()[:12]


def reload(
    target: Reloadable[Config], path: Path, load: Callable[[Path], tuple[Config, str]], component: str,
    outcomes: Counter, describe: Callable[[Config], dict[str, Any]] | None = None,
) -> bool:
    """Load ``path`` into ``target`` if it is valid and new; returns whether the configuration changed.

    Logs ``<component>.config_refused`` or ``<component>.config_reloaded``; counts ``outcomes`` (a counter
    with one ``outcome`` label) as ``refused`` or ``ok``.
    """
    try:
        config, revision = load(path)
    except (OSError, ValueError, ValidationError, yaml.YAMLError) as exc:
        outcomes.labels("refused").inc()
        log.error(f"{component}.config_refused", path=str(path), error=str(exc), kept_revision=target.revision)
        return False
    if revision == target.revision:
        return False
    target.apply(config, revision)
    outcomes.labels("ok").inc()
    details = describe(config) if describe else {}
    log.info(f"{component}.config_reloaded", path=str(path), revision=revision, **details)
    return True


async def watch(path: Path, on_change: Callable[[], object]) -> None:
    """Runs until cancelled: every change in the file's directory is a chance the file changed."""
    async for _ in awatch(path.parent, debounce=200, step=50, recursive=False):
        on_change()
