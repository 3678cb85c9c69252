"""A lean HTTP/1.1 client for the engines' streamed ``POST`` answers, on a raw asyncio protocol.

The router's hot path is two streamed ``POST /generate`` calls per request; aiohttp's client
(sessions, trace signals, timers, multidicts, a StreamReader per response) cost more Python
per request than the rest of the router's own work. This client does only what those calls
need: keep-alive connections pooled per (scheme, host, port) with an optional cap, TLS for
``https`` URLs, the status line and headers, ``chunked``, ``Content-Length`` or
read-to-close bodies, and the body handed over a network read at a time (whatever complete
data is buffered, in one ``bytes``). Errors are the builtin ones (``ConnectionError``,
``TimeoutError``, ``OSError``) plus ``HttpProtocolError``; sglang_client maps them to engine
errors. Closing a response before its end closes its connection (SGLang then aborts the
request); a response read to its end hands the connection back to the pool.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import cast
from urllib.parse import urlsplit

# Longest status line + headers accepted.
_MAX_HEAD_BYTES = 64 * 1024
# Reading pauses while this much is buffered and not yet taken by the reader.
_PAUSE_READING_BYTES = 2 * 2**20
# Idle connections kept per (scheme, host, port).
_MAX_IDLE_PER_HOST = 256
# After the last event a stream has no more to say: how long its body's end may take to come
# before the connection is closed instead of pooled.
_END_OF_BODY_TIMEOUT_S = 1.0


class HttpProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as this client reads it."""


class ConnectTimeoutError(TimeoutError):
    """No TCP (or TLS) connection in time: nothing was sent."""


class _Protocol(asyncio.Protocol):
    """A connection: what came in, whether it ended, and one waiter for more."""

    __slots__ = ("_loop", "_paused", "_waiter", "buffer", "ended", "error", "transport")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.ended = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but behave as one.)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _PAUSE_READING_BYTES and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def taken(self) -> None:
        """The reader took from the buffer: reading may go on."""
        if self._paused and len(self.buffer) <= _PAUSE_READING_BYTES // 2 and self.transport:
            self._paused = False
            self.transport.resume_reading()

    async def more(self, deadline: float | None) -> None:
        """Waits for more data; ConnectionError once the connection ended, TimeoutError after
        ``deadline`` (loop time)."""
        if self.ended:
            raise ConnectionResetError(
                f"the connection closed{f' ({self.error})' if self.error else ''}"
            )
        self.taken()
        waiter = self._loop.create_future()
        self._waiter = waiter
        if deadline is None:
            await waiter
        else:
            timer = self._loop.call_at(deadline, _time_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()

    @property
    def usable(self) -> bool:
        return (
            not self.ended
            and not self.buffer
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.ended = True


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no answer in time"))


_Key = tuple[str, str, int]


class Response:
    """One answer: ``status``, lower-cased ``headers``, and its body through ``blocks``."""

    def __init__(
        self,
        pool: ConnectionPool,
        key: _Key,
        conn: _Protocol,
        status: int,
        headers: dict[str, str],
        keep_alive: bool,
        deadline: float | None,
        slot: asyncio.Semaphore | None = None,
    ) -> None:
        self.status = status
        self._slot = slot
        self.headers = headers
        self._pool = pool
        self._key = key
        self._conn: _Protocol | None = conn
        self._deadline = deadline
        self._keep_alive = keep_alive
        encoding = headers.get("transfer-encoding", "").lower()
        self._chunked = "chunked" in encoding
        length = headers.get("content-length")
        self._remaining: int | None = None
        if not self._chunked and length is not None:
            try:
                self._remaining = int(length)
            except ValueError:
                raise HttpProtocolError(f"bad Content-Length {length!r}") from None
        if not self._chunked and self._remaining is None:
            self._keep_alive = False  # the body ends when the connection does
        self._chunk_left = 0  # bytes of the current chunk (and its CRLF) still to come
        self.done = False

    def close(self) -> None:
        """Ends the response: its connection goes back to the pool if the body was read to its
        end (and the server keeps connections), else it is closed."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()
        if self.done and self._keep_alive and conn.usable:
            self._pool.release(self._key, conn)
        else:
            conn.close()

    def _take_available(self) -> bytes:
        """The body data buffered now (may be empty); sets ``done`` at the body's end."""
        conn = self._conn
        assert conn is not None
        buffer = conn.buffer
        if not self._chunked:
            if self._remaining is None:
                data = bytes(buffer)
                buffer.clear()
                return data
            take = min(self._remaining, len(buffer))
            data = bytes(buffer[:take])
            del buffer[:take]
            self._remaining -= take
            if self._remaining == 0:
                self.done = True
            return data
        parts: list[bytes] = []
        pos = 0
        size = len(buffer)
        while True:
            if self._chunk_left:
                # Inside a chunk's data (and its trailing CRLF).
                available = min(self._chunk_left, size - pos)
                if available <= 0:
                    break
                data_left = self._chunk_left - 2  # what is data, not the CRLF
                if data_left > 0:
                    parts.append(bytes(buffer[pos : pos + min(available, data_left)]))
                pos += available
                self._chunk_left -= available
                continue
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                if size - pos > 1024:
                    raise HttpProtocolError("chunk size line too long")
                break
            size_field = bytes(buffer[pos:line_end]).split(b";", 1)[0].strip()
            try:
                chunk_size = int(size_field, 16)
            except ValueError:
                raise HttpProtocolError(f"bad chunk size {size_field[:20]!r}") from None
            if chunk_size == 0:
                # The last chunk: then trailers, up to an empty line.
                if buffer.startswith(b"\r\n", line_end + 2):
                    pos = line_end + 4
                else:
                    trailers_end = buffer.find(b"\r\n\r\n", line_end + 2)
                    if trailers_end < 0:
                        break
                    pos = trailers_end + 4
                self.done = True
                break
            pos = line_end + 2
            self._chunk_left = chunk_size + 2
        if pos:
            del buffer[:pos]
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    async def blocks(self) -> AsyncIterator[bytes]:
        """The body, whatever is buffered at a time (never an empty ``bytes``)."""
        conn = self._conn
        if conn is None:
            return
        while not self.done:
            data = self._take_available()
            if data:
                yield data
                continue
            if self.done:
                break
            if conn.ended and not conn.buffer:
                if self._remaining is None and not self._chunked:
                    self.done = True  # read to close: the close is the end
                    break
                raise ConnectionResetError("the connection closed in the middle of the body")
            await conn.more(self._deadline)

    async def finish(self, timeout_s: float = _END_OF_BODY_TIMEOUT_S) -> None:
        """Reads (and drops) what is left of the body, so the connection can be reused; closes
        it instead if that takes longer than ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                async for _ in self.blocks():
                    pass
        except (OSError, TimeoutError, HttpProtocolError):
            pass
        self.close()

    async def read(self) -> bytes:
        parts = [block async for block in self.blocks()]
        return b"".join(parts)


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections, per (scheme, host, port); ``limit`` (0 = none) caps the
    connections in use at once (a request beyond it waits until a response is closed)."""

    def __init__(self, *, connect_timeout_s: float, limit: int = 0) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._idle: dict[_Key, list[_Protocol]] = {}
        self._limit = asyncio.Semaphore(limit) if limit > 0 else None
        self._held: dict[_Protocol, None] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    def release(self, key: _Key, conn: _Protocol) -> None:
        if self._closed:
            conn.close()
            return
        idle = self._idle.setdefault(key, [])
        if len(idle) >= _MAX_IDLE_PER_HOST:
            conn.close()
        else:
            idle.append(conn)

    def _reused(self, key: _Key) -> _Protocol | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.usable:
                return conn
            conn.close()
        return None

    async def _connect(self, key: _Key) -> _Protocol:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Protocol(loop),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                )
        except TimeoutError:
            raise ConnectTimeoutError(
                f"no connection to {host}:{port} within {self._connect_timeout_s:g} s"
            ) from None
        return conn

    async def request(
        self,
        method: str,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout_s: float | None = None,
    ) -> Response:
        """Sends the request and reads the answer's status line and headers."""
        if self._closed:
            raise ConnectionResetError("the client is closed")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        host = parts.hostname
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, host, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rpartition("@")[2]
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}"]
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        message = head + body
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s if timeout_s is not None else None
        if self._limit is not None:
            await self._limit.acquire()
        try:
            conn = self._reused(key)
            if conn is not None:
                try:
                    return await self._exchange(key, conn, message, deadline, method)
                except _StaleConnection:
                    pass  # the server had closed it while it was idle: once more, anew
            conn = await self._connect(key)
            try:
                return await self._exchange(key, conn, message, deadline, method)
            except _StaleConnection as stale:
                raise ConnectionResetError(str(stale)) from None
        except BaseException:
            if self._limit is not None:
                self._limit.release()
            raise

    async def _exchange(
        self, key: _Key, conn: _Protocol, message: bytes, deadline: float | None, method: str
    ) -> Response:
        try:
            assert conn.transport is not None
            conn.transport.write(message)
            while True:
                status, headers, keep_alive = await _read_head(conn, deadline)
                if status >= 200 or status == 101:
                    break  # (1xx answers are informational: the real one follows)
        except _StaleConnection:
            conn.close()
            raise
        except BaseException:
            conn.close()
            raise
        response = Response(self, key, conn, status, headers, keep_alive, deadline, self._limit)
        if method == "HEAD" or status in (204, 304):
            response.done = True
        return response

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class _StaleConnection(ConnectionError):
    """A reused connection ended before any byte of the answer."""


async def _read_head(conn: _Protocol, deadline: float | None) -> tuple[int, dict[str, str], bool]:
    buffer = conn.buffer
    received_any = bool(buffer)
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(buffer) > _MAX_HEAD_BYTES:
            raise HttpProtocolError(f"response head longer than {_MAX_HEAD_BYTES} bytes")
        try:
            await conn.more(deadline)
        except ConnectionError as error:
            if not received_any and not buffer:
                raise _StaleConnection(str(error)) from None
            raise
        received_any = received_any or bool(buffer)
    head = bytes(buffer[:end]).decode("latin-1")
    del buffer[: end + 4]
    status_line, *header_lines = head.split("\r\n")
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/1."):
        raise HttpProtocolError(f"not an HTTP/1.x answer: {status_line[:80]!r}")
    try:
        status = int(rest[:3])
    except ValueError:
        raise HttpProtocolError(f"bad status line {status_line[:80]!r}") from None
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    connection = headers.get("connection", "").lower()
    keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
    return status, headers, keep_alive
