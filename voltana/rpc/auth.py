"""Control-plane authentication: one shared bearer token, checked by a server interceptor and
sent by a client interceptor.

Each service declares which of its methods are privileged (a frozenset of full method names
next to its servicer). Calls to them must carry ``authorization: Bearer <token>`` metadata:
without it they end with UNAUTHENTICATED, with a wrong one with PERMISSION_DENIED. Other
methods (reads, health, reflection) stay open. A service may also declare "keyed" methods
(the router's request submission) that need one of a set of API keys — or the control-plane
token — when API keys are configured, and are open otherwise.

Inside an accepted privileged call, ``current_principal()`` names the caller: ``cert:<CN>``
when it presented a verified TLS client certificate, else ``token``, or ``anonymous`` when
authentication is off.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio

from voltana.errors import ConfigError
from voltana.rpc.handlers import ServicerContext, wrap_handler

_LOG = logging.getLogger(__name__)
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

# The one variable every Voltana process reads the control-plane token from.
TOKEN_ENV = "VOLTANA_CONTROL_TOKEN"
# Its name before it guarded every service (agents only); still read, with a warning.
LEGACY_TOKEN_ENV = "VOLTANA_AGENT_TOKEN"
AUTH_METADATA_KEY = "authorization"
BEARER_PREFIX = "Bearer "
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 512

ANONYMOUS_PRINCIPAL = "anonymous"
TOKEN_PRINCIPAL = "token"

_principal: contextvars.ContextVar[str] = contextvars.ContextVar(
    "voltana_rpc_principal", default=ANONYMOUS_PRINCIPAL
)


def current_principal() -> str:
    """Who made the privileged call being served (see the module docstring)."""
    return _principal.get()


# ---- tokens ------------------------------------------------------------------------------


def generate_token() -> str:
    """A fresh random token (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def check_token(token: str, source: str = "the control-plane token") -> str:
    """``token`` when usable as a bearer credential; ConfigError (without echoing it) else."""
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"{source} is too short ({len(token)} characters; at least {MIN_TOKEN_CHARS}); "
            "`voltana token` makes a good one"
        )
    if len(token) > MAX_TOKEN_CHARS:
        raise ConfigError(f"{source} is longer than {MAX_TOKEN_CHARS} characters")
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        raise ConfigError(f"{source} must be printable ASCII without spaces")
    return token


def load_token(
    token_file: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The control-plane token from ``token_file`` (its first line), else from $VOLTANA_CONTROL_TOKEN
    (or the older $VOLTANA_AGENT_TOKEN); None when none is configured."""
    environ = os.environ if environ is None else environ
    if token_file is not None:
        try:
            lines = Path(token_file).read_text().splitlines()
        except OSError as error:
            raise ConfigError(
                f"cannot read the token file {str(token_file)!r}: {error.strerror}"
            ) from None
        token = lines[0].strip() if lines else ""
        return check_token(token, f"the token in {str(token_file)!r}")
    if environ.get(TOKEN_ENV):
        return check_token(environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}")
    if environ.get(LEGACY_TOKEN_ENV):
        _LOG.warning("$%s is deprecated; set $%s instead", LEGACY_TOKEN_ENV, TOKEN_ENV)
        return check_token(environ[LEGACY_TOKEN_ENV].strip(), f"${LEGACY_TOKEN_ENV}")
    return None


def load_api_keys(path: str | Path) -> frozenset[str]:
    """API keys, one per line (blank lines and ``#`` comments skipped)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise ConfigError(f"cannot read the API key file {str(path)!r}: {error.strerror}") from None
    keys = frozenset(
        check_token(line.strip(), f"an API key in {str(path)!r}")
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
    )
    if not keys:
        raise ConfigError(f"the API key file {str(path)!r} holds no key")
    return keys


def bearer_metadata(credential: str) -> tuple[str, str]:
    """The metadata entry that presents ``credential``."""
    return AUTH_METADATA_KEY, BEARER_PREFIX + credential


# ---- server side ---------------------------------------------------------------------------


def _presented_credential(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == AUTH_METADATA_KEY:
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            return text[len(BEARER_PREFIX) :] if text.startswith(BEARER_PREFIX) else text
    return None


def credential_matches(presented: str, accepted: Collection[str]) -> bool:
    # Compare with every accepted credential, in constant time each.
    found = False
    for credential in accepted:
        found |= hmac.compare_digest(presented.encode(), credential.encode())
    return found


def _certificate_principal(context: ServicerContext) -> str | None:
    """``cert:<name>`` of a verified TLS client certificate, else None."""
    try:
        auth = context.auth_context()
    except Exception:  # plaintext transports may have no auth context at all
        return None
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        names = list(auth.get(key) or ())
        if names:
            name = names[0]
            return "cert:" + (name.decode(errors="replace") if isinstance(name, bytes) else name)
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses privileged calls without the control-plane token (and keyed calls without an
    API key, when API keys are set). ``token`` None with ``enabled`` False lets everyone in."""

    def __init__(
        self,
        *,
        token: str | None,
        privileged_methods: Collection[str],
        enabled: bool = True,
        api_keys: Collection[str] = (),
        keyed_methods: Collection[str] = (),
    ) -> None:
        if enabled and token is None and privileged_methods:
            raise ConfigError("authentication is on but no control-plane token is set")
        self._token = token
        self._enabled = enabled
        self._privileged = frozenset(privileged_methods)
        self._keyed = frozenset(keyed_methods)
        # The control-plane token opens keyed methods too (it is the stronger credential).
        self._api_credentials = frozenset(api_keys) | ({token} if token else set())
        self._api_keys_on = bool(api_keys)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails],
            Awaitable[grpc.RpcMethodHandler[_Request, _Response] | None],
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Request, _Response] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return None
        if method in self._privileged:
            accepted: Collection[str] = (
                frozenset({self._token}) if self._enabled and self._token else frozenset()
            )
            required = self._enabled
        elif method in self._keyed and self._api_keys_on:
            accepted, required = self._api_credentials, True
        else:
            return handler

        async def authorize(request: Any, context: ServicerContext) -> Any:
            if required:
                await self._check(method, accepted, context)
            _principal.set(
                _certificate_principal(context)
                or (TOKEN_PRINCIPAL if required else ANONYMOUS_PRINCIPAL)
            )
            return request

        return wrap_handler(handler, before=authorize)

    @staticmethod
    async def _check(method: str, accepted: Collection[str], context: ServicerContext) -> None:
        presented = _presented_credential(context.invocation_metadata())
        if presented is None:
            _LOG.warning("refused %s from %s: no credential", method, context.peer())
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method} needs a credential: metadata '{AUTH_METADATA_KEY}: "
                f"{BEARER_PREFIX}<token>' (the control-plane token, ${TOKEN_ENV})",
            )
        elif not credential_matches(presented, accepted):
            _LOG.warning("refused %s from %s: wrong credential", method, context.peer())
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{method}: the credential is not valid"
            )


# ---- client side ---------------------------------------------------------------------------


def _with_credential(metadata: Any, entry: tuple[str, str]) -> tuple[tuple[str, Any], ...]:
    # A credential the caller put there itself (e.g. an API key) comes first and wins.
    return (*tuple(metadata or ()), entry)


class _UnaryRequestCallable:
    def __init__(self, inner: Any, entry: tuple[str, str]) -> None:
        self._inner, self._entry = inner, entry

    def __call__(self, request: Any, *, metadata: Any = None, **kwargs: Any) -> Any:
        return self._inner(request, metadata=_with_credential(metadata, self._entry), **kwargs)


class _StreamRequestCallable:
    def __init__(self, inner: Any, entry: tuple[str, str]) -> None:
        self._inner, self._entry = inner, entry

    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        **kwargs: Any,
    ) -> Any:
        return self._inner(
            request_iterator,
            timeout=timeout,
            metadata=_with_credential(metadata, self._entry),
            **kwargs,
        )


class CredentialChannel(grpc.aio.Channel):
    """A channel that adds ``authorization: Bearer <credential>`` to every call's metadata.

    A wrapper rather than client interceptors: grpc.aio's intercepted streaming calls behave
    differently from plain ones (cancellation, ``cancelled()``), and the report and watch
    streams depend on the plain behaviour.
    """

    def __init__(self, channel: grpc.aio.Channel, credential: str) -> None:
        self._channel = channel
        self._entry = bearer_metadata(credential)

    async def __aenter__(self) -> CredentialChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _UnaryRequestCallable(self._channel.unary_unary(*args, **kwargs), self._entry)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _UnaryRequestCallable(self._channel.unary_stream(*args, **kwargs), self._entry)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _StreamRequestCallable(self._channel.stream_unary(*args, **kwargs), self._entry)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _StreamRequestCallable(self._channel.stream_stream(*args, **kwargs), self._entry)
