"""How one process secures its gRPC traffic: the control-plane token and optional TLS.

Every service settings object carries one ``RpcSecurity``, used both for the server it runs
and for the channels it opens to other services. The default is secure: with no token, a
service that serves privileged methods (or calls them) refuses to start unless authentication
was switched off explicitly (``insecure_no_auth``, the ``--insecure-no-auth`` flag).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import grpc.aio

from voltana.errors import ConfigError
from voltana.rpc.auth import CredentialChannel, check_token, generate_token
from voltana.rpc.tls import TlsFiles

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RpcSecurity:
    # Shared control-plane token: required by servers on privileged methods, sent by clients.
    token: str | None = field(default=None, repr=False)
    # Servers accept privileged calls without a token (loud warning at start).
    insecure_no_auth: bool = False
    # TLS files; None = plaintext.
    tls: TlsFiles | None = None

    def __post_init__(self) -> None:
        if self.token is not None:
            check_token(self.token)

    @classmethod
    def generated(cls, tls: TlsFiles | None = None) -> RpcSecurity:
        """A fresh random token (what `voltana up` hands its in-process services)."""
        return cls(token=generate_token(), tls=tls)

    @property
    def auth_enabled(self) -> bool:
        return not self.insecure_no_auth

    def require_credentials(self, owner: str) -> None:
        """ConfigError unless there is a token or authentication is off on purpose."""
        if self.token is None and not self.insecure_no_auth:
            raise ConfigError(
                f"{owner}: no control-plane token; set $VOLTANA_CONTROL_TOKEN or --token-file "
                "(`voltana token` makes one), or turn authentication off with --insecure-no-auth"
            )

    def warn_if_open(self, owner: str, address: str) -> None:
        if self.insecure_no_auth:
            _LOG.warning(
                "%s on %s: authentication is OFF (--insecure-no-auth); anyone who can reach it "
                "may call its privileged methods",
                owner,
                address,
            )

    def authenticate(self, channel: grpc.aio.Channel) -> grpc.aio.Channel:
        """``channel`` sending this token with every call (unchanged without a token)."""
        return CredentialChannel(channel, self.token) if self.token else channel
