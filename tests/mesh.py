"""Direct calls to internal services in tests sign their identity, as the gateway does for its callers.

The test stack (tests/conftest.py) installs its gateway signing key here when it starts; ``signed`` then
turns an :class:`Identity` into the metadata of a call made as that identity. Module state, because the
identities of many tests are module constants built before any fixture runs.
"""

from __future__ import annotations

from moteur.runtime.identity import Identity
from moteur.runtime.mesh_tokens import MeshTokenIssuer

_issuer: list[MeshTokenIssuer] = []


def use(issuer: MeshTokenIssuer) -> None:
    _issuer[:] = [issuer]


def signed(identity: Identity, seconds: float | None = None) -> list[tuple[str, str]]:
    """The metadata of a call to an internal service as ``identity``."""
    if not _issuer:
        raise RuntimeError("no mesh signing key: start the test stack (the `stack` fixture) first")
    return _issuer[0].sign(identity, seconds=seconds).as_metadata()
