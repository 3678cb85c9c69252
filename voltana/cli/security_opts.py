"""Command-line options for authentication, TLS and secrets (serve, up, bench).

Secrets never go on the command line (every local user can read it with ps): the control-plane
token comes from --token-file or $VOLTANA_CONTROL_TOKEN, the Redis password from
--redis-password-file or $VOLTANA_REDIS_PASSWORD, API keys from --api-key-file.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from voltana.errors import ConfigError
from voltana.rpc import RpcSecurity, TlsFiles, load_token
from voltana.rpc.auth import TOKEN_ENV, check_token, load_api_keys

REDIS_PASSWORD_ENV = "VOLTANA_REDIS_PASSWORD"
API_KEY_ENV = "VOLTANA_API_KEY"


def add_security_args(parser: argparse.ArgumentParser, *, client_only: bool = False) -> None:
    group = parser.add_argument_group("security")
    group.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"file holding the control-plane token (default: ${TOKEN_ENV}; "
        "`voltana token` makes one)",
    )
    if not client_only:
        group.add_argument(
            "--insecure-no-auth",
            action="store_true",
            help="turn control-plane authentication OFF: anyone who can reach a service may "
            "register instances, report, set policies and clocks (testing only)",
        )
    group.add_argument("--tls-cert", metavar="PEM", help="TLS certificate (chain) to present")
    group.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    group.add_argument(
        "--tls-ca",
        metavar="PEM",
        help="CA of the peers' certificates; servers then require client certificates (mTLS)",
    )


def tls_from_args(args: argparse.Namespace) -> TlsFiles | None:
    if not (args.tls_cert or args.tls_key or args.tls_ca):
        return None
    return TlsFiles(
        cert_file=args.tls_cert or "", key_file=args.tls_key or "", ca_file=args.tls_ca or ""
    )


def security_from_args(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    *,
    required: bool = True,
    generate: bool = False,
) -> RpcSecurity:
    """The process's RpcSecurity. ``required``: ConfigError without a token unless
    --insecure-no-auth; ``generate``: a fresh random token when none is configured."""
    token = load_token(args.token_file, os.environ if environ is None else environ)
    insecure = bool(getattr(args, "insecure_no_auth", False))
    tls = tls_from_args(args)
    if token is None and generate and not insecure:
        return RpcSecurity.generated(tls)
    security = RpcSecurity(token=token, insecure_no_auth=insecure, tls=tls)
    if required:
        security.require_credentials(getattr(args, "service", None) or args.command)
    return security


def add_redis_password_arg(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--redis-password-file",
        metavar="PATH",
        help=f"file holding the Redis password (default: ${REDIS_PASSWORD_ENV}; or put it in "
        "--redis-url as redis://:PASSWORD@host:port/db)",
    )


def redis_password_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> str | None:
    environ = os.environ if environ is None else environ
    if args.redis_password_file:
        return _first_line(args.redis_password_file, "Redis password")
    return environ.get(REDIS_PASSWORD_ENV) or None


def add_api_key_args(parser: argparse.ArgumentParser, *, server: bool) -> None:
    if server:
        parser.add_argument(
            "--api-key-file",
            metavar="PATH",
            help="require one of these API keys (one per line) on Generate/Place "
            "(default: request submission is open)",
        )
    else:
        parser.add_argument(
            "--api-key-file",
            metavar="PATH",
            help=f"file holding the router's API key (default: ${API_KEY_ENV}, else none)",
        )


def api_keys_from_args(args: argparse.Namespace) -> frozenset[str]:
    return load_api_keys(args.api_key_file) if args.api_key_file else frozenset()


def api_key_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> str | None:
    environ = os.environ if environ is None else environ
    if args.api_key_file:
        return check_token(_first_line(args.api_key_file, "API key"), "the API key")
    key = environ.get(API_KEY_ENV)
    return check_token(key.strip(), f"${API_KEY_ENV}") if key else None


def _first_line(path: str, what: str) -> str:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise ConfigError(f"cannot read the {what} file {path!r}: {error.strerror}") from None
    if not lines or not lines[0].strip():
        raise ConfigError(f"the {what} file {path!r} is empty")
    return lines[0].strip()
