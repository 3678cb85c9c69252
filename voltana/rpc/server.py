"""Start and stop asyncio gRPC servers with health checking, reflection and error mapping."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import trace

from voltana.errors import ConfigError
from voltana.rpc.auth import AuthInterceptor
from voltana.rpc.channel import MAX_MESSAGE_BYTES
from voltana.rpc.reflection import enable_reflection
from voltana.rpc.security import RpcSecurity
from voltana.rpc.status import ErrorStatusInterceptor
from voltana.rpc.tracing import ServerTracing

# Registers one servicer, e.g. functools.partial(add_FooServicer_to_server, servicer).
RegisterServicer = Callable[[grpc.aio.Server], None]

DEFAULT_GRACE_S = 5.0

DEFAULT_SERVER_OPTIONS: Mapping[str, Any] = {
    # Detect vanished clients on long-lived streams.
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
    # Accept our clients' keepalive pings (channel.DEFAULT_CHANNEL_OPTIONS); without these the
    # server answers frequent pings with GOAWAY "too_many_pings".
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.min_ping_interval_without_data_ms": 10_000,
    "grpc.http2.max_ping_strikes": 0,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    # Two servers must not silently share a port (SO_REUSEPORT would allow it).
    "grpc.so_reuseport": 0,
}


class StartedServer(NamedTuple):
    """A running server and the port it bound (the real one when asked for port 0)."""

    server: grpc.aio.Server
    port: int


async def start_grpc_server(
    address: str,
    servicers: Iterable[RegisterServicer],
    service_names: Sequence[str],
    *,
    health_servicer: health.aio.HealthServicer | None = None,
    error_codes: Mapping[type[BaseException], grpc.StatusCode] | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    options: Mapping[str, Any] | None = None,
    security: RpcSecurity | None = None,
    privileged_methods: Collection[str] = (),
    api_keys: Collection[str] = (),
    keyed_methods: Collection[str] = (),
    tracer_provider: trace.TracerProvider | None = None,
) -> StartedServer:
    """Start an asyncio gRPC server on ``address`` ("host:port"; port 0 = any free).

    Besides the given servicers it serves grpc.health.v1 (overall status "" and every name in
    ``service_names`` set to SERVING) and server reflection (v1 and v1alpha) for those services.
    Every call is traced (opentelemetry-instrumentation-grpc; ``tracer_provider``, default the
    global one; see voltana.rpc.tracing). VoltanaErrors
    raised by servicers become status codes (see voltana.rpc.status; ``error_codes`` adds or
    overrides mappings). Pass your own ``health_servicer`` to flip statuses later (e.g.
    NOT_SERVING while a dependency is down). ``service_names`` are full names such as
    voltana.rpc.names.TELEMETRY_SERVICE. Raises ConfigError when the address cannot be bound.

    ``security`` (None = plaintext, no authentication) gives the TLS files and the token that
    ``privileged_methods`` (full method names) require; ``keyed_methods`` need one of
    ``api_keys`` when any is given (voltana.rpc.auth). Privileged methods without a token are
    a ConfigError unless ``security.insecure_no_auth`` says so.
    """
    if not service_names:
        raise ConfigError("start_grpc_server needs at least one service name")
    if privileged_methods and security is None:
        raise ConfigError("privileged methods need a security setting (token or insecure_no_auth)")
    if security is not None and privileged_methods:
        security.require_credentials(service_names[0])
    auth = AuthInterceptor(
        token=security.token if security is not None else None,
        privileged_methods=privileged_methods,
        enabled=security is not None and security.auth_enabled,
        api_keys=api_keys,
        keyed_methods=keyed_methods,
    )
    health_servicer = health_servicer or health.aio.HealthServicer()
    tracing = ServerTracing(address, tracer_provider)
    server = grpc.aio.server(
        # Authentication first: a stranger learns nothing, not even whether their bytes parse.
        # Tracing next: the status the error mapping sets lands on the server span.
        interceptors=[
            auth,
            tracing.outer,
            ErrorStatusInterceptor(error_codes),
            *interceptors,
            tracing.inner,
        ],
        options=list({**DEFAULT_SERVER_OPTIONS, **(options or {})}.items()),
    )
    for register in servicers:
        register(server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(server, [*service_names, health.SERVICE_NAME])
    tls = security.tls if security is not None else None
    try:
        if tls is not None:
            port = server.add_secure_port(address, tls.server_credentials())
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as error:  # grpc raises RuntimeError("Failed to bind ...")
        raise ConfigError(f"cannot bind gRPC server to {address!r}: {error}") from error
    tracing.bound(port)
    await server.start()
    if security is not None and privileged_methods:
        security.warn_if_open(service_names[0], dialable_address(address, port))
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return StartedServer(server, port)


async def set_serving(
    health_servicer: health.aio.HealthServicer, service_names: Sequence[str], serving: bool
) -> None:
    """Report the server (overall status "") and ``service_names`` SERVING or NOT_SERVING."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ["", *service_names]:
        await health_servicer.set(name, status)


async def stop_grpc_server(
    server: grpc.aio.Server,
    grace_s: float = DEFAULT_GRACE_S,
    *,
    health_servicer: health.aio.HealthServicer | None = None,
) -> None:
    """Stop accepting calls, let running ones finish for up to ``grace_s``, then cancel them.

    With ``health_servicer``, every status turns NOT_SERVING first so health watchers (load
    balancers, the router) stop sending work before the port closes.
    """
    if health_servicer is not None:
        await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_s)


async def serve_until_signal(
    server: grpc.aio.Server,
    grace_s: float = DEFAULT_GRACE_S,
    *,
    health_servicer: health.aio.HealthServicer | None = None,
    signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM),
) -> None:
    """Block until SIGINT/SIGTERM (or the server terminates), then stop gracefully.

    For service entry points (``asyncio.run(main())``); tests call stop_grpc_server instead.
    """
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop_requested.set)
    try:
        terminated = asyncio.ensure_future(server.wait_for_termination())
        stop_waiter = asyncio.ensure_future(stop_requested.wait())
        await asyncio.wait({terminated, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        stop_waiter.cancel()
        if not terminated.done():
            await stop_grpc_server(server, grace_s, health_servicer=health_servicer)
        await terminated
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "[::]", "::"})


def dialable_address(listen_address: str, port: int) -> str:
    """``host:port`` a client can dial for a server bound to ``listen_address`` on ``port``
    (loopback when it listens on every interface)."""
    host = listen_address.rpartition(":")[0]
    return f"{'127.0.0.1' if host in _WILDCARD_HOSTS else host}:{port}"
