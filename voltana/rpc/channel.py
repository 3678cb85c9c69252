"""Client channels with the options every Voltana service uses."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from opentelemetry import trace

from voltana.errors import UnavailableError
from voltana.rpc.tracing import client_interceptors

if TYPE_CHECKING:
    from voltana.rpc.security import RpcSecurity

MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # long token-id prompts and large snapshots fit

# Keepalive pings find dead peers on long streams (watches, sample reports) within ~30 s;
# the server side (server.DEFAULT_SERVER_OPTIONS) permits this ping rate.
CLIENT_KEEPALIVE_TIME_MS = 20_000
CLIENT_KEEPALIVE_TIMEOUT_MS = 10_000

DEFAULT_CHANNEL_OPTIONS: Mapping[str, Any] = {
    "grpc.keepalive_time_ms": CLIENT_KEEPALIVE_TIME_MS,
    "grpc.keepalive_timeout_ms": CLIENT_KEEPALIVE_TIMEOUT_MS,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.max_pings_without_data": 0,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    # Reconnect fast after a service restart (the default backoff grows to 120 s).
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 5_000,
    "grpc.primary_user_agent": "voltana",
}


def channel_options(overrides: Mapping[str, Any] | None = None) -> list[tuple[str, Any]]:
    """DEFAULT_CHANNEL_OPTIONS with ``overrides`` applied, as grpc wants them."""
    return list({**DEFAULT_CHANNEL_OPTIONS, **(overrides or {})}.items())


def create_channel(
    address: str,
    *,
    options: Mapping[str, Any] | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    traced: bool = True,
    security: RpcSecurity | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to ``address`` ("host:port").

    With ``security``, every call carries its control-plane token and the channel uses its TLS
    files (plaintext without them); without, the channel is plaintext and anonymous.
    With ``traced``, calls are traced (voltana.rpc.tracing; ``tracer_provider``, default the
    global one) and carry the caller's trace context; ``interceptors`` run inside the tracing
    ones. Background channels (telemetry sample streams, watches, reports) pass False: nothing
    there is worth a trace, and intercepted client streams buffer their writes, so a cancelled
    write would no longer cancel the call.
    Channels connect lazily; close them with ``await channel.close()`` (or ``async with``).
    Use ``await wait_until_ready(channel, timeout_s)`` to fail fast when the peer is down.
    """
    all_interceptors = [
        *(client_interceptors(address, tracer_provider) if traced else ()),
        *(interceptors or ()),
    ]
    tls = security.tls if security is not None else None
    if tls is not None:
        channel = grpc.aio.secure_channel(
            address,
            tls.channel_credentials(),
            options=channel_options(options),
            interceptors=all_interceptors,
        )
    else:
        channel = grpc.aio.insecure_channel(
            address, options=channel_options(options), interceptors=all_interceptors
        )
    return security.authenticate(channel) if security is not None else channel


async def wait_until_ready(channel: grpc.aio.Channel, timeout_s: float) -> None:
    """Wait until ``channel`` is connected; raise UnavailableError after ``timeout_s``."""
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout=timeout_s)
    except TimeoutError as error:
        raise UnavailableError(f"gRPC peer not ready after {timeout_s:g} s") from error
