"""TLS between services (moteur.runtime.tls): a real grpc.aio server and channels with certificates made
for the test — mutual TLS accepted, plaintext and certificate-less callers refused, and the plaintext
health port the kubelet probes."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from moteur.devstack.processes import free_port
from moteur.runtime.channels import open_channel
from moteur.runtime.server import Registration, ServiceApp, serve
from moteur.runtime.settings import ServerSettings
from moteur.runtime.tls import TlsSettings


def _certificate(name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
                 ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
    key_file, cert_file = path.with_suffix(".key"), path.with_suffix(".crt")
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_file, key_file


@pytest.fixture
def mesh_ca(tmp_path: Path) -> tuple[Path, TlsSettings, TlsSettings]:
    """A CA, and the TLS settings of two services it signed."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moteur test CA")])
    ca_cert = _certificate("moteur test CA", ca_key, ca_name, ca_key, ca=True)
    ca_file, _ = _write(tmp_path / "ca", ca_key, ca_cert)
    settings = []
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert_file, key_file = _write(tmp_path / name, key, _certificate(name, key, ca_name, ca_key, ca=False))
        settings.append(TlsSettings(tls_cert_file=cert_file, tls_key_file=key_file, tls_ca_file=ca_file,
                                    health_port=free_port()))
    return ca_file, settings[0], settings[1]


async def _empty() -> AsyncIterator[Sequence[Registration]]:
    yield []


async def _health(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    return reply.status


async def test_services_speak_mutual_tls_and_probes_stay_plaintext(mesh_ca) -> None:
    ca_file, server_tls, client_tls = mesh_ca
    port = free_port()
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(ServiceApp("tls-test", _empty),
                                        ServerSettings(listen_host="127.0.0.1", grpc_port=port, metrics_port=0,
                                                       drain_seconds=0), stop, tls=server_tls))
    try:
        async with open_channel(f"localhost:{port}", tls=client_tls) as channel:
            for _ in range(50):  # the server starts in the background
                try:
                    assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        # the kubelet's probe: plaintext, health only
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server_tls.health_port}") as probe:
            assert await _health(probe) == health_pb2.HealthCheckResponse.SERVING
        # a plaintext caller, and a TLS caller without a certificate of the mesh, are refused
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plaintext:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _health(plaintext)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        anonymous = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{port}", anonymous) as stranger:
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await _health(stranger)
            assert unknown.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        stop.set()
        await serving


def test_a_certificate_without_its_key_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="go together"):
        TlsSettings(tls_cert_file=tmp_path / "a.crt")
