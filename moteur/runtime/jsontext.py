"""JSON text from callers and models, parsed as one: nesting too deep for the parser (a RecursionError
in Python) is malformed JSON like any other — a ValueError the caller turns into INVALID_ARGUMENT or a
tool error, never an INTERNAL."""

from __future__ import annotations

import json
from typing import Any


def loads(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
