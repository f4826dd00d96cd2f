"""Certificates made in the test: a CA, a server certificate for 127.0.0.1 and client
certificates whose CN is a charge point id (OCPP security profiles 2 and 3)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@dataclass
class Pki:
    """Files of a throwaway PKI in ``folder``."""

    folder: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.crt"

    @classmethod
    def create(cls, folder: Path, ca_name: str = "Test CSMS CA") -> Pki:
        """A new CA plus a server certificate ``server.crt/.key`` for 127.0.0.1 / localhost."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(ca_name))
            .issuer_name(_name(ca_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        _write(folder / "ca", cert, key)
        pki = cls(folder, key, cert)
        pki.issue("server", "127.0.0.1", server=True)
        return pki

    def issue(self, name: str, cn: str, server: bool = False) -> tuple[Path, Path]:
        """Issue ``name.crt`` / ``name.key`` with common name ``cn``; returns (cert, key)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.ca_key, hashes.SHA256())
        _write(self.folder / name, cert, key)
        return self.folder / f"{name}.crt", self.folder / f"{name}.key"

    def client_context(self, client: str | None = None) -> ssl.SSLContext:
        """A client TLS context trusting the CA, optionally presenting ``client.crt``."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if client is not None:
            ctx.load_cert_chain(
                str(self.folder / f"{client}.crt"), str(self.folder / f"{client}.key")
            )
        return ctx
