"""TLS for gRPC servers and channels, mutual when a CA is given.

One set of PEM files per process: its certificate and key (what it presents, as a server and
as a client) and the CA that signs its peers' certificates. A server with a CA requires and
verifies client certificates (mTLS); a client with a CA verifies the server against it (the
system roots otherwise). Server certificates must name (SAN) the host clients dial.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from voltana.errors import ConfigError


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the TLS {what} {path!r}: {error.strerror}") from None


@dataclass(frozen=True)
class TlsFiles:
    # PEM certificate (chain) and private key this process presents; both or neither.
    cert_file: str = ""
    key_file: str = ""
    # PEM CA bundle that signs peer certificates; on a server it turns on client verification.
    ca_file: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("TLS needs both a certificate and its key (--tls-cert, --tls-key)")
        if not (self.cert_file or self.ca_file):
            raise ConfigError("TLS needs a certificate and key, a CA, or both")

    @property
    def mutual(self) -> bool:
        return bool(self.ca_file)

    def server_credentials(self) -> grpc.ServerCredentials:
        if not self.cert_file:
            raise ConfigError("a TLS server needs a certificate and key (--tls-cert, --tls-key)")
        return grpc.ssl_server_credentials(
            [(_read(self.key_file, "key"), _read(self.cert_file, "certificate"))],
            root_certificates=_read(self.ca_file, "CA") if self.ca_file else None,
            require_client_auth=self.mutual,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "CA") if self.ca_file else None,
            private_key=_read(self.key_file, "key") if self.key_file else None,
            certificate_chain=_read(self.cert_file, "certificate") if self.cert_file else None,
        )
