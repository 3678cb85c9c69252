"""Shared gRPC plumbing: server start/stop, channels, error ↔ status mapping, service names,
authentication and TLS."""

from voltana.rpc.auth import current_principal, generate_token, load_token
from voltana.rpc.channel import (
    DEFAULT_CHANNEL_OPTIONS,
    channel_options,
    create_channel,
    wait_until_ready,
)
from voltana.rpc.security import RpcSecurity
from voltana.rpc.server import (
    DEFAULT_GRACE_S,
    DEFAULT_SERVER_OPTIONS,
    RegisterServicer,
    StartedServer,
    dialable_address,
    serve_until_signal,
    set_serving,
    start_grpc_server,
    stop_grpc_server,
)
from voltana.rpc.status import (
    DEFAULT_STATUS_CODES,
    ErrorStatusInterceptor,
    abort_with_error,
    error_from_rpc,
    status_code_for,
)
from voltana.rpc.tls import TlsFiles

__all__ = [
    "DEFAULT_CHANNEL_OPTIONS",
    "DEFAULT_GRACE_S",
    "DEFAULT_SERVER_OPTIONS",
    "DEFAULT_STATUS_CODES",
    "ErrorStatusInterceptor",
    "RegisterServicer",
    "RpcSecurity",
    "StartedServer",
    "TlsFiles",
    "abort_with_error",
    "channel_options",
    "create_channel",
    "current_principal",
    "dialable_address",
    "error_from_rpc",
    "generate_token",
    "load_token",
    "serve_until_signal",
    "set_serving",
    "start_grpc_server",
    "status_code_for",
    "stop_grpc_server",
    "wait_until_ready",
]
