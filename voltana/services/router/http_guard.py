"""Connection limits of the HTTP front door: a header read timeout and a cap per client.

aiohttp closes idle keep-alive connections (``keepalive_timeout``) and bounds header sizes, but
a client that trickles a request's headers, or opens thousands of connections, holds them as
long as it likes. ``ConnectionGuard`` wraps each connection's aiohttp protocol:

- a connection's first byte of a request starts ``header_timeout_s``; the request's handler
  starting (``request_started``, from a middleware) stops it; when it runs out the connection
  is closed. A connection that never sends a byte is closed after ``keepalive_timeout_s``.
- at most ``max_connections_per_client`` connections per remote address; one more is
  answered ``429`` with an OpenAI-style error and closed before aiohttp sees it.

The body's own timeout is the handler's (http_api.py), which answers 408.

aiohttp answers a request it cannot parse (a garbage request line, a header over its limits, a
bad chunk size) itself, before any middleware, in plain text; the guard makes that answer the
OpenAI-style JSON error every other refusal of the door is.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from voltana.services.router.http_format import error_body
from voltana.services.router.http_limits import HttpLimits

_LOG = logging.getLogger(__name__)


def _too_many_answer(limit: int) -> bytes:
    body = json.dumps(
        error_body(f"too many open connections from this address (at most {limit})", 429)
    ).encode()
    head = (
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _JsonErrorRequestHandler(RequestHandler):
    """aiohttp's protocol answering what it cannot parse with OpenAI's error object (aiohttp's
    own answer is plain text); its logging and checks stay as they are."""

    __slots__ = ()  # the same layout as aiohttp's: an instance of it can become one of these

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises if an answer began
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        text = message or phrase or "the request could not be read"
        if status >= 500:  # aiohttp's own failure: no internals to the client
            text = "internal error of the router's HTTP server"
        answer = web.json_response(error_body(text[:300], status), status=status)
        answer.force_close()
        return answer


def _answer_parse_errors_in_json(handler: RequestHandler) -> RequestHandler:
    # aiohttp builds its protocol itself (web.Server); the class is swapped afterwards rather
    # than rebuilding it from the server's private arguments.
    handler.__class__ = _JsonErrorRequestHandler
    return handler


class _GuardedConnection(asyncio.Protocol):
    """One connection: aiohttp's protocol behind the guard's timer and cap."""

    def __init__(self, guard: ConnectionGuard, handler: RequestHandler) -> None:
        self._guard = guard
        self._handler = handler
        self._client = ""
        self._admitted = False
        # "idle" (before a request's first byte), "headers" (reading them) or "request".
        self._phase = "idle"
        self._timer: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self._guard.admit(self._client):
            # uvloop's transports are not asyncio.Transport subclasses: no isinstance here.
            writer = cast(asyncio.WriteTransport, transport)
            writer.write(_too_many_answer(self._guard.limits.max_connections_per_client))
            transport.close()
            return
        self._admitted = True
        self._guard.track(self._handler, self)
        # Between requests aiohttp's keep-alive timeout closes an idle connection; this one
        # covers a connection that never sends a byte, whatever aiohttp's version does (armed
        # first, it fires before aiohttp's own timer of the same length, and counts).
        self._arm(self._guard.limits.keepalive_timeout_s)
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._phase == "idle":
            self._phase = "headers"
            self._arm(self._guard.limits.header_timeout_s)
        self._handler.data_received(data)

    def eof_received(self) -> None:
        if self._admitted:
            self._handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._admitted:
            self._admitted = False
            self._guard.release(self._client, self._handler)
            self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._handler.resume_writing()

    # ---- requests -----------------------------------------------------------------------------
    def request_started(self) -> None:
        """Its headers are in: the header clock stops (the handler bounds the body)."""
        self._phase = "request"
        self._disarm()

    def request_ended(self) -> None:
        """The next byte starts the next request's header clock (bytes of a pipelined request
        that came meanwhile are bounded by aiohttp's keep-alive timeout)."""
        self._phase = "idle"

    def _arm(self, timeout_s: float) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self._phase == "headers":
            # Judged one loop turn later: a request whose headers were parsed just before a
            # host stall starts (request_started) before it can be taken for a slow one.
            asyncio.get_running_loop().call_soon(self._shed_unless_started)
        else:
            self._shed_unless_started()

    def _shed_unless_started(self) -> None:
        if self._admitted and self._phase != "request" and self._timer is None:
            reason = "idle" if self._phase == "idle" else "slow_headers"
            self._guard.note_shed(reason)
            _LOG.debug("closing an HTTP connection from %s (%s)", self._client, reason)
            self._handler.force_close()


class ConnectionGuard:
    """Counts connections per client and makes guarded protocols for ``loop.create_server``."""

    def __init__(
        self,
        limits: HttpLimits,
        make_handler: Callable[[], RequestHandler],
        on_shed: Callable[[str], None] = lambda _reason: None,
    ) -> None:
        """``on_shed(reason)`` hears of every connection shed: ``idle``, ``slow_headers``,
        ``over_cap`` (and ``slow_body`` from the handler, through ``note_shed``)."""
        self.limits = limits
        self._make_handler = make_handler
        self._on_shed = on_shed
        self._per_client: Counter[str] = Counter()
        self._connections: dict[RequestHandler, _GuardedConnection] = {}
        # Connections closed for a slow or missing request, and refused over the cap.
        self.shed_total = 0
        self.refused_total = 0

    def __call__(self) -> _GuardedConnection:
        return _GuardedConnection(self, _answer_parse_errors_in_json(self._make_handler()))

    def note_shed(self, reason: str) -> None:
        self.shed_total += 1
        self._on_shed(reason)

    def admit(self, client: str) -> bool:
        cap = self.limits.max_connections_per_client
        if cap and self._per_client[client] >= cap:
            self.refused_total += 1
            self._on_shed("over_cap")
            return False
        self._per_client[client] += 1
        return True

    def track(self, handler: RequestHandler, connection: _GuardedConnection) -> None:
        self._connections[handler] = connection

    def release(self, client: str, handler: RequestHandler) -> None:
        self._connections.pop(handler, None)
        self._per_client[client] -= 1
        if self._per_client[client] <= 0:
            del self._per_client[client]

    def connection_of(self, protocol: Any) -> _GuardedConnection | None:
        """The guarded connection of a request's aiohttp protocol (``request.protocol``)."""
        return self._connections.get(protocol)

    def open_connections(self, client: str) -> int:
        return self._per_client[client]
