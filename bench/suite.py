"""The benchmarks, in the order a full run takes them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench import (
    admission,
    chat_path,
    files,
    files_isolation,
    http_api,
    memory,
    mesh_identity,
    models,
    overload,
    response_cache,
    router,
    streaming,
    tools,
)

BENCHMARKS: dict[str, Callable[[], Any]] = {
    "chat_path": chat_path.main, "streaming": streaming.main, "http_api": http_api.main, "admission": admission.main,
    "overload": overload.main, "router": router.main, "memory": memory.main, "tools": tools.main, "files": files.main,
    "files_isolation": files_isolation.main, "mesh_identity": mesh_identity.main, "models": models.main,
    "response_cache": response_cache.main,
}
