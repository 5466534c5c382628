"""Checks on what callers send, with the limits stated in gateway.proto; each failure names its field."""

from __future__ import annotations

import re
from collections.abc import Mapping

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from moteur.gateway.sessions import Scope, parse_session_id
from moteur.runtime.errors import InvalidArgument, PermissionDenied
from moteur.runtime.identity import Identity
from moteur.runtime.tooldefs import parse_schema

MAX_MESSAGE_CHARS = 32_768
MAX_USER_ID_CHARS = 128
MAX_IDEMPOTENCY_KEY_CHARS = 128
MAX_OUTPUT_TOKENS = 8_192
MAX_TITLE_CHARS = 256
MAX_METADATA_ENTRIES = 32
MAX_PAGE_SESSIONS = 100
MAX_PAGE_MESSAGES = 500
_MODEL_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,64}$")


def message_text(value: str) -> str:
    text = value.strip()
    if not text:
        raise InvalidArgument("message", "must not be empty")
    if len(text) > MAX_MESSAGE_CHARS:
        raise InvalidArgument("message", f"at most {MAX_MESSAGE_CHARS:,} characters, got {len(text):,}")
    return text


def optional_session_id(value: str) -> str:
    return parse_session_id(value) if value else ""


def enum_value(enum: EnumTypeWrapper, value: int, field: str) -> int:
    if value not in enum.values():
        names = ", ".join(n for n in enum.keys() if not n.endswith("UNSPECIFIED"))
        raise InvalidArgument(field, f"unknown value {value}; use one of {names}")
    return value


def bounded(value: int, field: str, upper: int) -> int:
    if not 0 <= value <= upper:
        raise InvalidArgument(field, f"must be between 0 and {upper:,}, got {value:,}")
    return value


def text_at_most(value: str, field: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgument(field, f"at most {limit} characters, got {len(value)}")
    return value


def model_hint(value: str) -> str:
    if value and not _MODEL_NAME.match(value):
        raise InvalidArgument("model_hint", "a model name from ListModels: letters, digits, '.', '_' or '-'")
    return value


def metadata(entries: Mapping[str, str], field: str = "metadata") -> dict[str, str]:
    if len(entries) > MAX_METADATA_ENTRIES:
        raise InvalidArgument(field, f"at most {MAX_METADATA_ENTRIES} entries, got {len(entries)}")
    for key, value in entries.items():
        if not 0 < len(key) <= 64 or len(value) > 1024:
            raise InvalidArgument(f"{field}.{key[:64]}", "keys are 1 to 64 characters, values at most 1,024")
    return dict(entries)


def page_size(value: int, default: int, upper: int) -> int:
    if value < 0:
        raise InvalidArgument("page_size", f"must not be negative; 0 means {default}")
    return min(value or default, upper)


def page_token(value: str) -> str:
    return parse_session_id(value, "page_token") if value else ""


def acting_user(identity: Identity, requested: str) -> str:
    """The user a call acts for: a user key acts for its own user only; a service key for any of its tenant."""
    # As a user key's user: printable ASCII (it may travel in gRPC metadata), within memory's 128-byte column.
    if len(requested) > MAX_USER_ID_CHARS or not requested.isascii() or not requested.isprintable():
        raise InvalidArgument("user_id", f"at most {MAX_USER_ID_CHARS} printable ASCII characters")
    if identity.user and requested and requested != identity.user:
        raise PermissionDenied(f"this API key acts for user {identity.user!r} only; leave user_id empty")
    return identity.user or requested


def scope(identity: Identity, user: str) -> Scope:
    return Scope(identity.tenant, user or None)


def json_schema(text: str, field: str = "json_schema") -> str:
    """A JSON Schema's text, checked here so that the caller's field is named (the router checks it again)."""
    if text:
        parse_schema(field, text)
    return text
