"""``/v1/embeddings``: OpenAI's request into memory's ``Embed``, and its vectors back in OpenAI's shape.

The openai SDK asks for ``encoding_format: base64`` unless told otherwise (little-endian float32, decoded on
its side); ``float`` gives JSON numbers. ``model`` is read but not chosen: memory embeds with its one model,
named in the answer. Texts are embedded as passages (stored, compared with each other), as OpenAI's are.
"""

from __future__ import annotations

import base64
import struct
from typing import Any, Literal

from pydantic import Field

from moteur.gateway.http.bodies import Body
from moteur.runtime.errors import InvalidArgument
from moteur.v1 import memory_pb2

MAX_INPUTS = 256  # memory's Embed takes 1 to 256 texts
MAX_INPUT_CHARS = 8_192


class EmbeddingsRequest(Body):
    input: str | list[str] | list[int] | list[list[int]]
    model: str = ""
    encoding_format: Literal["float", "base64"] = "float"
    user: str = ""
    dimensions: int | None = Field(None, gt=0)

    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else self.input
        if not texts:
            raise InvalidArgument("input", "at least one text")
        if not all(isinstance(text, str) for text in texts):
            raise InvalidArgument("input", "texts, not token ids: moteur embeds text with its own tokenizer")
        if len(texts) > MAX_INPUTS:
            raise InvalidArgument("input", f"at most {MAX_INPUTS} texts, got {len(texts)}")
        for n, text in enumerate(texts):
            if not str(text).strip():
                raise InvalidArgument(f"input[{n}]", "must not be empty")
            if len(str(text)) > MAX_INPUT_CHARS:
                raise InvalidArgument(f"input[{n}]", f"at most {MAX_INPUT_CHARS:,} characters")
        return [str(text) for text in texts]


def estimate_tokens(texts: list[str]) -> int:
    """One token per four characters: what the request reserves against the caller's limits and is charged."""
    return sum((len(text) + 3) // 4 for text in texts)


def embeddings_response(asked: EmbeddingsRequest, embedded: memory_pb2.EmbedResponse, tokens: int) -> dict[str, Any]:
    if asked.dimensions is not None and asked.dimensions != embedded.dimensions:
        raise InvalidArgument("dimensions", f"memory's model {embedded.model} gives {embedded.dimensions}; leave "
                              "dimensions out or ask for that many")
    data = [{"object": "embedding", "index": n, "embedding": _encoded(e.values, asked.encoding_format)}
            for n, e in enumerate(embedded.embeddings)]
    return {"object": "list", "data": data, "model": embedded.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _encoded(values: Any, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return list(values)
