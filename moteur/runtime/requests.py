"""Decoding a request, in the runtime rather than in grpc's default path, so that bad bytes get a clear status.

A malformed protobuf, or a string field that is not UTF-8, is INVALID_ARGUMENT naming the message type. A
decoded request is then searched for characters no caller means to send: NUL anywhere, and any control
character in a map key or in an identifier (ids, names, scopes, keys, hints, formats…). Free text (message
content, documents, templates) may hold tabs, newlines and the other control characters, but never NUL,
which no store or model takes. All of this happens before any handler, so before any model call.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from moteur.runtime.errors import InvalidArgument

Decode = Callable[[bytes], Any]

_NUL = re.compile("\x00")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# A field whose name ends so holds an identifier, not text (see the module docstring).
_IDENTIFIER_SUFFIXES = ("id", "ids", "name", "names", "scope", "key", "hint", "format", "user", "tenant", "tier",
                        "token", "type", "role", "unit")


def decoder(deserializer: Callable[[bytes], Any] | None) -> Decode:
    """The request decoder of one method: grpc's generated deserializer, wrapped with the checks above."""
    if deserializer is None:
        return lambda raw: raw

    def decode(raw: bytes) -> Any:
        try:
            request = deserializer(raw)
        except (DecodeError, UnicodeDecodeError, ValueError) as exc:
            name = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
            what = name.full_name if name is not None else "request"
            raise InvalidArgument("request", f"not a valid {what} message ({_reason(exc)}): send the "
                                             "message the service's proto declares") from None
        if isinstance(request, Message):
            check_text(request)
        return request

    return decode


def _reason(exc: Exception) -> str:
    text = str(exc)
    return "invalid UTF-8 in a string field" if "utf-8" in text.lower() else "malformed protobuf"


def check_text(message: Message, path: str = "") -> None:
    """Refuse NUL anywhere and control characters in map keys and identifiers, naming the field."""
    for field, value in message.ListFields():
        name = f"{path}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            strict = field.name.endswith(_IDENTIFIER_SUFFIXES)
            values = value if field.is_repeated else (value,)
            for index, text in enumerate(values):
                _check(text, name if len(values) == 1 else f"{name}[{index}]", strict)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            entry = field.message_type  # a message field always has one
            if entry is not None and entry.GetOptions().map_entry:
                _check_map(value, entry, name)
            elif field.is_repeated:
                for index, item in enumerate(value):
                    check_text(item, f"{name}[{index}].")
            else:
                check_text(value, f"{name}.")


def _check_map(entries: Any, entry: Descriptor, name: str) -> None:
    value_field = entry.fields_by_name["value"]
    for key, value in entries.items():
        if isinstance(key, str):
            _check(key, name, strict=True, what="a key")
        if value_field.type == FieldDescriptor.TYPE_STRING:
            _check(value, f"{name}[{key!r}]", strict=False)
        elif value_field.type == FieldDescriptor.TYPE_MESSAGE:
            check_text(value, f"{name}[{key!r}].")


def _check(text: str, field: str, strict: bool, what: str = "the value") -> None:
    found = (_CONTROL if strict else _NUL).search(text)
    if found is not None:
        character = f"U+{ord(found.group()):04X}"
        kind = "a NUL character" if found.group() == "\x00" else f"the control character {character}"
        raise InvalidArgument(field, f"{what} holds {kind} at position {found.start()}; remove it")
