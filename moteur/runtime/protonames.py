"""The names the services and the CLI give to the v1 protos' enum values, in one place.

A message's role is stored and handed to model providers by name ("user", "assistant", "system", "tool") and
travels between services as ``common_pb2.Role``. ``ROLES`` maps a name to its enum value; ``ROLE_NAMES`` is the
same map read the other way (``ROLE_UNSPECIFIED`` has no name).
"""

from __future__ import annotations

from typing import Literal

from moteur.v1 import common_pb2

RoleName = Literal["system", "user", "assistant", "tool"]

ROLES: dict[RoleName, common_pb2.Role] = {
    "system": common_pb2.ROLE_SYSTEM, "user": common_pb2.ROLE_USER, "assistant": common_pb2.ROLE_ASSISTANT,
    "tool": common_pb2.ROLE_TOOL,
}
ROLE_NAMES: dict[common_pb2.Role, RoleName] = {value: name for name, value in ROLES.items()}
