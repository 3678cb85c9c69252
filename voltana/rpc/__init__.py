"""Shared gRPC plumbing: server start/stop, channels, error ↔ status mapping, service names."""

from voltana.rpc.channel import (
    DEFAULT_CHANNEL_OPTIONS,
    channel_options,
    create_channel,
    wait_until_ready,
)
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

__all__ = [
    "DEFAULT_CHANNEL_OPTIONS",
    "DEFAULT_GRACE_S",
    "DEFAULT_SERVER_OPTIONS",
    "DEFAULT_STATUS_CODES",
    "ErrorStatusInterceptor",
    "RegisterServicer",
    "StartedServer",
    "abort_with_error",
    "channel_options",
    "create_channel",
    "dialable_address",
    "error_from_rpc",
    "serve_until_signal",
    "set_serving",
    "start_grpc_server",
    "status_code_for",
    "stop_grpc_server",
    "wait_until_ready",
]
