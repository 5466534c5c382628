"""Identifiers: ULIDs, unique and sortable by creation time (26 characters, Crockford base32)."""

from __future__ import annotations

from ulid import ULID


def new_id() -> str:
    return str(ULID())


def is_valid_id(value: str) -> bool:
    if len(value) != 26:
        return False
    try:
        ULID.from_str(value)
    except ValueError:
        return False
    return True
