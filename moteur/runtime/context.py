"""What the server interceptor learns about the call being served, for code deeper down.

Context variables follow the call through awaits, so an outgoing call to another service inherits the
request id and the caller's deadline without threading them through every signature.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="")
# Absolute time.monotonic() by which the inbound call must be answered; None when the caller set none.
deadline_var: ContextVar[float | None] = ContextVar("deadline", default=None)


def time_remaining() -> float | None:
    deadline = deadline_var.get()
    return None if deadline is None else deadline - time.monotonic()


def outgoing_timeout(default: float) -> float:
    """Deadline for a call to another service: what is left of ours, never more than the default."""
    remaining = time_remaining()
    return default if remaining is None else max(0.0, min(default, remaining))
