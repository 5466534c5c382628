"""TLS between the services of the mesh, when certificates are configured (mutual when a CA is).

A service with ``MOTEUR_TLS_CERT_FILE`` and ``MOTEUR_TLS_KEY_FILE`` serves TLS only; with
``MOTEUR_TLS_CA_FILE`` too it requires and checks its callers' certificates, and its own calls present
its certificate and check the peer's against that CA. Kubernetes' gRPC probes cannot speak TLS, so a
TLS service also serves the health service alone, in plaintext, on ``MOTEUR_HEALTH_PORT``.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from pydantic import Field, model_validator

from moteur.runtime.settings import MoteurSettings


class TlsSettings(MoteurSettings):
    tls_cert_file: Path | None = Field(None, description="PEM certificate of this service; set: serve and call in TLS.")
    tls_key_file: Path | None = Field(None, description="PEM private key of that certificate.")
    tls_ca_file: Path | None = Field(
        None, description="PEM CA that signs the mesh's certificates; set: mutual TLS (callers must present one)."
    )
    tls_require_client_cert: bool = Field(
        True, description="With a CA: callers must present a certificate it signed (false for a public API)."
    )
    health_port: int = Field(
        50060, description="With TLS: plaintext port serving only the health service (for Kubernetes probes)."
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> TlsSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("MOTEUR_TLS_CERT_FILE and MOTEUR_TLS_KEY_FILE go together")
        return self

    @property
    def enabled(self) -> bool:
        return self.tls_cert_file is not None

    def server_credentials(self) -> grpc.ServerCredentials:
        assert self.tls_cert_file is not None and self.tls_key_file is not None
        ca = self.tls_ca_file.read_bytes() if self.tls_ca_file else None
        return grpc.ssl_server_credentials(
            [(self.tls_key_file.read_bytes(), self.tls_cert_file.read_bytes())],
            root_certificates=ca, require_client_auth=ca is not None and self.tls_require_client_cert,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        assert self.tls_cert_file is not None and self.tls_key_file is not None
        return grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca_file.read_bytes() if self.tls_ca_file else None,
            private_key=self.tls_key_file.read_bytes(), certificate_chain=self.tls_cert_file.read_bytes(),
        )
