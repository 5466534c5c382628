"""Identifiers: ULIDs, unique and sortable by creation time (26 characters, Crockford base32)."""

from __future__ import annotations

from ulid import ULID


def new_id() -> str:
    return str(ULID())


def is_valid_id(value: str) -> bool:
    return created_ms(value) is not None


def created_ms(value: str) -> int | None:
    """When an id was made (ms since the epoch), or None when ``value`` is not one of ours."""
    if len(value) != 26:
        return None
    try:
        return ULID.from_str(value).milliseconds
    except ValueError:
        return None
