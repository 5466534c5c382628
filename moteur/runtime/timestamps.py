"""Timestamps from callers: google.protobuf.Timestamp allows any 64-bit seconds, but only the years 1 to
9999 are times (and datetime, MongoDB and Milvus' int64 milliseconds hold no more). One outside them is
the caller's mistake: INVALID_ARGUMENT naming the field, never an overflow deep in a store."""

from __future__ import annotations

import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from moteur.runtime.errors import InvalidArgument

_FIRST, _LAST = -62_135_596_800, 253_402_300_799  # 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z


def checked(field: str, stamp: Timestamp) -> Timestamp:
    if not _FIRST <= stamp.seconds <= _LAST or not 0 <= stamp.nanos < 1_000_000_000:
        raise InvalidArgument(field, "a time between the years 1 and 9999")
    return stamp


def to_datetime(field: str, stamp: Timestamp) -> datetime.datetime:
    return checked(field, stamp).ToDatetime(datetime.UTC)


def to_milliseconds(field: str, stamp: Timestamp) -> int:
    return checked(field, stamp).ToMilliseconds()


def from_milliseconds(milliseconds: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(milliseconds)
    return stamp
