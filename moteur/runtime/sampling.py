"""How an answer is sampled, as every door takes it (the gateway's gRPC and HTTP APIs, the router): the same
bounds, and INVALID_ARGUMENT naming the field otherwise."""

from __future__ import annotations

from collections.abc import Sequence

from moteur.runtime.errors import InvalidArgument

MAX_STOP_SEQUENCES = 4  # as OpenAI's API
MAX_STOP_CHARS = 256


def temperature(value: float | None, field: str = "temperature") -> float | None:
    if value is not None and not 0 <= value <= 2:  # NaN is refused too
        raise InvalidArgument(field, f"between 0 and 2, got {value:g}")
    return value


def top_p(value: float | None, field: str = "top_p") -> float | None:
    if value is not None and not 0 < value <= 1:  # NaN is refused too
        raise InvalidArgument(field, f"above 0 and at most 1, got {value:g}")
    return value


def stop_sequences(values: Sequence[str], field: str = "stop") -> tuple[str, ...]:
    if len(values) > MAX_STOP_SEQUENCES:
        raise InvalidArgument(field, f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(values)}")
    for index, value in enumerate(values):
        if not 0 < len(value) <= MAX_STOP_CHARS:
            raise InvalidArgument(f"{field}[{index}]", f"1 to {MAX_STOP_CHARS} characters")
    return tuple(values)
