"""Reloading the registry when its file changes, without a restart (see :mod:`moteur.runtime.reload`):
a file that does not validate is refused with the reason logged and counted, and the router keeps serving
with the configuration it had."""

from __future__ import annotations

from pathlib import Path

from moteur.router.metrics import CONFIG_RELOADS
from moteur.router.orchestrator import ModelRouter
from moteur.router.registry import ModelsConfig, load_models
from moteur.runtime import reload as reloading


def reload(router: ModelRouter, path: Path) -> bool:
    """Load ``path`` into ``router`` if it is valid and new; returns whether the configuration changed."""
    return reloading.reload(router, path, load_models, "router", CONFIG_RELOADS, _describe)


async def watch(router: ModelRouter, path: Path) -> None:
    """Runs until cancelled."""
    await reloading.watch(path, lambda: reload(router, path))


def _describe(config: ModelsConfig) -> dict[str, int]:
    return {"models": len(config.models), "routes": len(config.all_routes())}
