"""Credentials tests run services and clients with (authentication is on by default, as in
production), and a throwaway PKI for the TLS tests."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from voltana.rpc import RpcSecurity, TlsFiles

TEST_TOKEN = "test-control-plane-token-0123456789"
WRONG_TOKEN = "not-the-control-plane-token-9876543210"
SECURITY = RpcSecurity(token=TEST_TOKEN)


@dataclass(frozen=True)
class Identity:
    """One certificate and key, signed by a CA, as PEM files."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    def tls(self, *, ca_file: Path | None = None) -> TlsFiles:
        return TlsFiles(
            cert_file=str(self.cert_file),
            key_file=str(self.key_file),
            ca_file=str(ca_file or self.ca_file),
        )


class Pki:
    """A CA that issues server and client certificates for loopback (written under ``root``)."""

    def __init__(self, root: Path, name: str = "test-ca") -> None:
        self._root = root
        self._root.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._name = subject
        self._cert = (
            self._builder(subject, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = root / f"{name}.pem"
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(getattr(self, "_name", subject))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def issue(self, common_name: str) -> Identity:
        """A certificate for ``common_name`` valid for 127.0.0.1/localhost, server and client."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            self._builder(subject, key.public_key())
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        cert_file = self._root / f"{common_name}.crt"
        key_file = self._root / f"{common_name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return Identity(cert_file, key_file, self.ca_file)
