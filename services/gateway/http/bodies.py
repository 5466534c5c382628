"""Request bodies read into pydantic models: what cannot be read is INVALID_ARGUMENT naming its field."""

from __future__ import annotations

import json
from typing import Self

from pydantic import BaseModel, ConfigDict, ValidationError

from moteur.runtime.errors import InvalidArgument


class Body(BaseModel):
    """A JSON body; fields this API does not read are ignored, as OpenAI's API ignores unknown ones."""

    model_config = ConfigDict(extra="ignore")

    @classmethod
    def parse(cls, body: bytes) -> Self:
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise InvalidArgument("body", f"is not JSON: {exc}") from None
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InvalidArgument(".".join(str(part) for part in first["loc"]) or "body", first["msg"]) from None
