"""Typed errors of engine calls, shared by the simulated engine and the SGLang HTTP client.

Each one also derives from the cross-service kind (``voltana.errors``) it stands for, so a gRPC
service that lets one escape answers with the matching status code.
"""

from __future__ import annotations

from voltana.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    UnavailableError,
    VoltanaError,
)


class EngineError(VoltanaError):
    """An engine call failed. ``status`` is the HTTP status when the engine answered one."""

    def __init__(self, message: str, status: int | None = None, url: str = "") -> None:
        self.message = message
        self.status = status
        self.url = url
        where = f" ({url})" if url else ""
        code = f"HTTP {status}: " if status is not None else ""
        super().__init__(f"{code}{message}{where}")


class EngineRequestError(EngineError, InvalidArgumentError):
    """The engine refused the request as invalid (HTTP 4xx)."""

    def __init__(self, message: str, status: int | None = 400, url: str = "") -> None:
        super().__init__(message, status, url)


class EngineUnavailableError(EngineError, UnavailableError):
    """The engine cannot be reached, is shutting down (HTTP 503) or dropped the connection."""


class EngineTimeoutError(EngineError, DeadlineExceededError):
    """The engine, or a peer it waits on (the KV cache of a PD request), did not answer in time."""
