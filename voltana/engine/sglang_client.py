"""HTTP client of SGLang servers; real SGLang and ``SimEngine`` answer it identically.

One ``aiohttp.ClientSession`` is created lazily and reused for every call. Failures surface as
typed errors: ``EngineRequestError`` (HTTP 4xx), ``EngineUnavailableError`` (cannot connect,
connection lost, HTTP 503), ``EngineTimeoutError`` (client timeout, HTTP 504/408) and
``EngineError`` for the rest. A stream that ends with ``finish_reason: {"type": "abort"}`` (the
engine aborted the request, e.g. on shutdown) is passed through as a chunk, as SGLang sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from voltana import json_codec
from voltana.engine import http1
from voltana.engine.errors import (
    EngineError,
    EngineRequestError,
    EngineTimeoutError,
    EngineUnavailableError,
)
from voltana.engine.prometheus import PrometheusSample, format_labels, parse_prometheus_text
from voltana.rpc.tracing import global_tracer_provider, records

# Longest SSE line accepted; cumulative chunks of long generations get big.
_READ_BUFFER_BYTES = 4 * 2**20
# Labels that name the server, not what a sample measures: left out of metrics_by_name's keys.
# Real SGLang (0.5.x) labels every scheduler gauge with engine_type, tp_rank, pp_rank and
# moe_ep_rank, and its request counters and histograms with engine_type and is_streaming (one
# series for streamed requests, one for the rest); dp_rank with data-parallel attention.
_IDENTITY_LABELS = frozenset({"model_name", "engine_type"})
# Series of parts of the server's work, summed: streamed and other requests, DP ranks,
# priority classes (--enable-priority-scheduling).
_PARTITION_LABELS = frozenset({"is_streaming", "dp_rank", "priority"})
# Ranks that each see the same scheduler (tensor, pipeline and expert parallel copies, when
# --enable-metrics-for-all-schedulers exposes them): only rank 0's series is read.
_REPLICA_LABELS = frozenset({"tp_rank", "pp_rank", "moe_ep_rank", "attn_tp_rank", "attn_cp_rank"})


def _error_message(text: str) -> str:
    """The human message of an error body: {"error": {"message"}}, SGLang 0.5's {"error": "..."}
    (a body it cannot parse) and {"object": "error", "message": ...}, or FastAPI's detail."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip() or "(empty body)"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        for key in ("error", "detail", "message"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return text.strip()


def error_for_status(status: int, message: str, url: str) -> EngineError:
    """The typed error for an HTTP error answer."""
    if status == 503:
        return EngineUnavailableError(message, status, url)
    if status in (408, 504):
        return EngineTimeoutError(message, status, url)
    if 400 <= status < 500:
        return EngineRequestError(message, status, url)
    return EngineError(message, status, url)


def _transport_error(exc: BaseException, url: str) -> EngineError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        # No connection in time: the engine is unreachable (nothing was sent), not slow.
        return EngineUnavailableError(f"cannot connect in time ({type(exc).__name__})", url=url)
    if isinstance(exc, TimeoutError):  # before ClientConnectionError: ServerTimeoutError is both
        return EngineTimeoutError(f"no answer in time ({type(exc).__name__})", url=url)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return EngineUnavailableError(f"cannot connect: {exc}", url=url)
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return EngineUnavailableError(f"connection lost: {exc or type(exc).__name__}", url=url)
    return EngineError(f"HTTP client error: {exc}", url=url)


def _raw_transport_error(exc: BaseException, url: str) -> EngineError:
    """The engine error for what the raw client (voltana.engine.http1) raised."""
    if isinstance(exc, http1.ConnectTimeoutError):
        return EngineUnavailableError(f"cannot connect in time ({exc})", url=url)
    if isinstance(exc, TimeoutError):
        return EngineTimeoutError(f"no answer in time ({type(exc).__name__})", url=url)
    if isinstance(exc, ConnectionError) and not isinstance(exc, ConnectionRefusedError):
        return EngineUnavailableError(f"connection lost: {exc or type(exc).__name__}", url=url)
    if isinstance(exc, OSError):  # refused, unreachable, unknown host: nothing was sent
        return EngineUnavailableError(f"cannot connect: {exc}", url=url)
    if isinstance(exc, http1.HttpProtocolError):
        return EngineError(f"unreadable answer: {exc}", url=url)
    return EngineError(f"HTTP client error: {exc}", url=url)


_CLIENT_TRACER_NAME = "voltana.engine.sglang_client"


def _event_data(data_lines: list[bytes]) -> bytes:
    return data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines)


async def _sse_batches(blocks: AsyncIterator[bytes], url: str) -> AsyncIterator[list[bytes]]:
    """The data of the server-sent events (``data:`` lines joined), in order, one list per
    network read: a reader behind a fast stream takes its backlog in one go instead of one
    event (and one wake-up) at a time."""
    partial = b""  # a line the last read ended in the middle of
    data_lines: list[bytes] = []
    async for block in blocks:
        lines = (partial + block if partial else block).split(b"\n")
        partial = lines.pop()
        if len(partial) > _READ_BUFFER_BYTES:
            raise EngineError(f"stream line longer than {_READ_BUFFER_BYTES} bytes", url=url)
        events: list[bytes] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data_lines:
                    events.append(_event_data(data_lines))
                    data_lines = []
            elif line.startswith(b"data:"):
                data_lines.append(line[6:] if line.startswith(b"data: ") else line[5:])
            # Other fields (event:, id:, retry:) and comments (":...") carry nothing we use.
        if events:
            yield events
    if partial.startswith(b"data:"):
        data_lines.append(partial[6:] if partial.startswith(b"data: ") else partial[5:])
    if data_lines:
        yield [_event_data(data_lines)]


def _parse_chunk(data: bytes, url: str) -> dict[str, Any]:
    try:
        chunk = json_codec.loads(data)
    except ValueError:
        raise EngineError(f"malformed stream chunk {data[:200]!r}", url=url) from None
    if not isinstance(chunk, dict):
        raise EngineError(f"stream chunk is not an object: {data[:200]!r}", url=url)
    error = chunk.get("error")
    if error is not None:
        message = error.get("message") if isinstance(error, dict) else error
        status = error.get("code") if isinstance(error, dict) else None
        raise error_for_status(status if isinstance(status, int) else 500, str(message), url)
    return chunk


async def _each_chunk(
    batches: AsyncGenerator[list[dict[str, Any]], None],
) -> AsyncGenerator[dict[str, Any], None]:
    """The chunks of successive batches, one at a time; closing it closes ``batches``."""
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for chunk in batch:
                yield chunk


class SglangHttpClient:
    """Talks to SGLang's HTTP server. Use ``async with`` or call ``close()`` when done.

    ``connect_timeout_s`` bounds opening one TCP connection. The pool holds at most
    ``max_connections`` (0 = no limit, the default): a limit queues requests beyond it, and a
    PD request holds two connections for its whole stream, so the limit must be at least
    twice the requests in flight.

    Streamed ``/generate`` calls (``generate_stream*``, ``generate_pd*``) go over a lean
    HTTP/1.1 client of their own (voltana.engine.http1: keep-alive pool, TLS for https) unless
    a ``session`` or aiohttp ``trace_configs`` are given, which only aiohttp can honour. With
    ``traced`` they send the current W3C trace context (``traceparent``) along, and when
    ``tracer_provider`` (default: the global one) records, each gets a CLIENT span named
    ``POST /generate`` as voltana.observability.http_tracing's client spans are.
    """

    def __init__(
        self,
        *,
        connect_timeout_s: float = 5.0,
        request_timeout_s: float | None = None,
        health_timeout_s: float = 2.0,
        max_connections: int = 0,
        session: aiohttp.ClientSession | None = None,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
        traced: bool = False,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        """``trace_configs`` (e.g. voltana.observability.client_trace_configs) trace each
        request and send the current trace context along (W3C ``traceparent``)."""
        if max_connections < 0:
            raise ValueError(f"max_connections must be >= 0, got {max_connections}")
        # Only the socket connect is bounded: time spent waiting for a pooled connection
        # must not read as an unreachable engine.
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout_s, connect=None, sock_connect=connect_timeout_s
        )
        self._health_timeout = aiohttp.ClientTimeout(total=health_timeout_s)
        self._max_connections = max_connections
        self._session = session
        self._owns_session = session is None
        self._trace_configs = list(trace_configs)
        self._request_timeout_s = request_timeout_s
        self._connect_timeout_s = connect_timeout_s
        # Streams over the lean client unless aiohttp's session or signals were asked for.
        self._raw = session is None and not self._trace_configs
        self._pool: http1.ConnectionPool | None = None
        self._traced = traced
        self._tracer_provider = tracer_provider
        self._tracer_of: tuple[trace.TracerProvider, trace.Tracer | None] | None = None

    def _recording_tracer(self) -> trace.Tracer | None:
        """The tracer for client spans, None when tracing records nothing (no SDK provider):
        then only the context is passed on."""
        provider = self._tracer_provider or global_tracer_provider()
        cached = self._tracer_of
        if cached is not None and cached[0] is provider:
            return cached[1]
        tracer: trace.Tracer | None = None
        if records(provider):
            tracer = provider.get_tracer(_CLIENT_TRACER_NAME)
        self._tracer_of = (provider, tracer)
        return tracer

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                read_bufsize=_READ_BUFFER_BYTES,
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections, limit_per_host=self._max_connections
                ),
                trace_configs=self._trace_configs or None,
                json_serialize=json_codec.dumps_text,
            )
            self._owns_session = True
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> SglangHttpClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @staticmethod
    def _endpoint(url: str, path: str) -> str:
        return url.rstrip("/") + path

    async def _raise_for_status(self, response: aiohttp.ClientResponse, url: str) -> None:
        if response.status != 200:
            raise error_for_status(response.status, _error_message(await response.text()), url)

    async def _get_text(self, url: str) -> str:
        try:
            async with self._client().get(url) as response:
                await self._raise_for_status(response, url)
                return await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _transport_error(exc, url) from exc

    # ---- generation ------------------------------------------------------------------------
    async def generate(self, url: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Non-streaming ``POST /generate``; returns SGLang's JSON answer."""
        endpoint = self._endpoint(url, "/generate")
        try:
            async with self._client().post(endpoint, json={**payload, "stream": False}) as response:
                await self._raise_for_status(response, endpoint)
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _transport_error(exc, endpoint) from exc
        except ValueError:
            raise EngineError("the answer is not JSON", url=endpoint) from None
        if not isinstance(body, dict):
            raise EngineError("the answer is not a JSON object", url=endpoint)
        return body

    def generate_stream(
        self, url: str, payload: Mapping[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Streaming ``POST /generate``: one dict per SSE chunk until ``data: [DONE]``.

        Closing the iterator early (or cancelling its consumer) closes the connection, which
        makes SGLang abort the request.
        """
        return _each_chunk(self.generate_stream_batches(url, payload))

    def generate_stream_batches(
        self, url: str, payload: Mapping[str, Any]
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        """``generate_stream``'s chunks, one list per network read (never empty)."""
        if self._raw:
            return self._raw_stream_batches(url, payload)
        return self._aiohttp_stream_batches(url, payload)

    async def _raw_stream_batches(
        self, url: str, payload: Mapping[str, Any]
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        endpoint = self._endpoint(url, "/generate")
        body = json_codec.dumps({**payload, "stream": True})
        headers = {"Content-Type": "application/json", "Accept": "*/*"}
        span = None
        if self._traced:
            tracer = self._recording_tracer()
            if tracer is not None:
                span = _client_span(tracer, endpoint)
                propagate.inject(headers, context=trace.set_span_in_context(span))
            else:
                propagate.inject(headers)  # the caller's context, if one came in
        if self._pool is None:
            self._pool = http1.ConnectionPool(
                connect_timeout_s=self._connect_timeout_s, limit=self._max_connections
            )
        try:
            response = await self._pool.request(
                "POST", endpoint, body, headers, timeout_s=self._request_timeout_s
            )
        except BaseException as exc:
            if span is not None:
                _end_client_span(span, None, exc)
            if isinstance(exc, (OSError, TimeoutError, http1.HttpProtocolError)):
                raise _raw_transport_error(exc, endpoint) from exc
            raise
        if span is not None:
            _end_client_span(span, response.status, None)
        try:
            if response.status != 200:
                text = (await response.read()).decode("utf-8", "replace")
                raise error_for_status(response.status, _error_message(text), endpoint)
            async for events in _sse_batches(response.blocks(), endpoint):
                batch: list[dict[str, Any]] = []
                for data in events:
                    if data.strip() == b"[DONE]":
                        if batch:
                            yield batch
                        await response.finish()
                        return
                    try:
                        batch.append(_parse_chunk(data, endpoint))
                    except EngineError:
                        if batch:  # what came before the error, first
                            yield batch
                        raise
                if batch:
                    yield batch
        except (OSError, TimeoutError, http1.HttpProtocolError) as exc:
            raise _raw_transport_error(exc, endpoint) from exc
        finally:
            response.close()  # a half-read connection is closed, never pooled
        raise EngineUnavailableError("the stream ended before 'data: [DONE]'", url=endpoint)

    async def _aiohttp_stream_batches(
        self, url: str, payload: Mapping[str, Any]
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        endpoint = self._endpoint(url, "/generate")
        try:
            async with self._client().post(endpoint, json={**payload, "stream": True}) as response:
                await self._raise_for_status(response, endpoint)
                try:
                    async for events in _sse_batches(response.content.iter_any(), endpoint):
                        batch: list[dict[str, Any]] = []
                        for data in events:
                            if data.strip() == b"[DONE]":
                                if batch:
                                    yield batch
                                return
                            try:
                                batch.append(_parse_chunk(data, endpoint))
                            except EngineError:
                                if batch:  # what came before the error, first
                                    yield batch
                                raise
                        if batch:
                            yield batch
                except BaseException:
                    response.close()  # never hand a half-read connection back to the pool
                    raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _transport_error(exc, endpoint) from exc
        raise EngineUnavailableError("the stream ended before 'data: [DONE]'", url=endpoint)

    async def _prefill(self, url: str, payload: Mapping[str, Any]) -> dict[str, Any] | None:
        """The prefill half of a PD request: its last chunk; an abort is an error (the decode
        half would wait for a KV cache that never comes)."""
        last: dict[str, Any] | None = None
        async for batch in self.generate_stream_batches(url, payload):
            last = batch[-1]
        meta = last.get("meta_info") if last is not None else None
        reason = meta.get("finish_reason") if isinstance(meta, Mapping) else None
        if isinstance(reason, Mapping) and reason.get("type") == "abort":
            message = reason.get("message") or "no reason given"
            raise EngineUnavailableError(
                f"the prefill engine aborted the request: {message}",
                url=self._endpoint(url, "/generate"),
            )
        return last

    def generate_pd(
        self,
        prefill_url: str,
        decode_url: str,
        bootstrap_host: str,
        bootstrap_port: int,
        request: Mapping[str, Any],
        *,
        bootstrap_room: int | None = None,
        on_prefill_done: Callable[[dict[str, Any] | None], None] | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """One PD request: the same body to prefill and decode with one random bootstrap room.

        Streams the decode's chunks. A prefill failure is raised as soon as it happens (the
        decode would otherwise wait for a KV cache that never comes); closing the iterator
        cancels both HTTP requests. ``on_prefill_done`` gets the prefill's last chunk (its
        ``meta_info``) once the decode stream ended.
        """
        return _each_chunk(
            self.generate_pd_batches(
                prefill_url,
                decode_url,
                bootstrap_host,
                bootstrap_port,
                request,
                bootstrap_room=bootstrap_room,
                on_prefill_done=on_prefill_done,
            )
        )

    async def generate_pd_batches(
        self,
        prefill_url: str,
        decode_url: str,
        bootstrap_host: str,
        bootstrap_port: int,
        request: Mapping[str, Any],
        *,
        bootstrap_room: int | None = None,
        on_prefill_done: Callable[[dict[str, Any] | None], None] | None = None,
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        """``generate_pd``'s decode chunks, one list per network read (never empty)."""
        room = secrets.randbits(63) if bootstrap_room is None else bootstrap_room
        payload = {
            **request,
            "bootstrap_host": bootstrap_host,
            "bootstrap_port": bootstrap_port,
            "bootstrap_room": room,
            "stream": True,
        }
        prefill = asyncio.create_task(self._prefill(prefill_url, payload))
        decode_stream = self.generate_stream_batches(decode_url, payload)
        next_batch: asyncio.Future[list[dict[str, Any]]] | None = None
        try:
            while True:
                if prefill.done() and not prefill.cancelled() and prefill.exception() is None:
                    # The prefill half is over: nothing left to race the decode's reads with.
                    try:
                        batch = await anext(decode_stream)
                    except StopAsyncIteration:
                        break
                    yield batch
                    continue
                next_batch = asyncio.ensure_future(anext(decode_stream))
                while not next_batch.done():
                    if prefill.done():
                        prefill_error = prefill.exception()
                        if prefill_error is not None:
                            raise prefill_error
                        await asyncio.wait({next_batch})
                    else:
                        await asyncio.wait(
                            {next_batch, prefill}, return_when=asyncio.FIRST_COMPLETED
                        )
                try:
                    batch = next_batch.result()
                except StopAsyncIteration:
                    break
                except EngineError:
                    # The decode often fails *because* the prefill did; report the cause.
                    if prefill.done() and not prefill.cancelled():
                        prefill_error = prefill.exception()
                        if prefill_error is not None:
                            raise prefill_error from None
                    raise
                next_batch = None
                yield batch
            last_prefill_chunk = await prefill
            if on_prefill_done is not None:
                on_prefill_done(last_prefill_chunk)
        finally:
            if next_batch is not None and not next_batch.done():
                next_batch.cancel()
                await asyncio.wait({next_batch})
            await decode_stream.aclose()
            if not prefill.done():
                prefill.cancel()
                await asyncio.wait({prefill})
            elif not prefill.cancelled():
                prefill.exception()  # mark it retrieved when the decode error won

    # ---- introspection ---------------------------------------------------------------------
    async def health(self, url: str) -> bool:
        """True when ``GET /health`` answers 200 in time."""
        try:
            async with self._client().get(
                self._endpoint(url, "/health"), timeout=self._health_timeout
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def server_info(self, url: str) -> dict[str, Any]:
        endpoint = self._endpoint(url, "/get_server_info")
        try:
            body = json.loads(await self._get_text(endpoint))
        except ValueError:
            raise EngineError("the server info is not JSON", url=endpoint) from None
        if not isinstance(body, dict):
            raise EngineError("the server info is not a JSON object", url=endpoint)
        return body

    async def metric_samples(self, url: str) -> list[PrometheusSample]:
        """Every sample of ``GET /metrics``."""
        endpoint = self._endpoint(url, "/metrics")
        text = await self._get_text(endpoint)
        try:
            return parse_prometheus_text(text)
        except ValueError as exc:
            raise EngineError(f"unreadable metrics: {exc}", url=endpoint) from None

    async def metrics(self, url: str) -> dict[str, float]:
        """The ``sglang:`` samples of ``GET /metrics`` by name plus their labels.

        Keyed as ``metrics_by_name`` does, so ``sglang:num_running_reqs`` and
        ``sglang:time_to_first_token_seconds_bucket{le="0.1"}`` are keys.
        """
        return metrics_by_name(await self.metric_samples(url))


def _client_span(tracer: trace.Tracer, url: str) -> trace.Span:
    """A CLIENT span for a POST to ``url``, as voltana.observability.http_tracing names them."""
    parts = urlsplit(url)
    template = parts.path or "/"
    attributes: dict[str, str | int] = {
        "http.request.method": "POST",
        "url.full": url,
        "url.template": template,
        "server.address": parts.hostname or "",
    }
    if parts.port is not None:
        attributes["server.port"] = parts.port
    return tracer.start_span(f"POST {template}", kind=SpanKind.CLIENT, attributes=attributes)


def _end_client_span(span: trace.Span, status: int | None, error: BaseException | None) -> None:
    if status is not None:
        span.set_attribute("http.response.status_code", status)
        if status >= 400:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
    elif error is not None:
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, str(error)))
    span.end()


def metrics_by_name(samples: list[PrometheusSample]) -> dict[str, float]:
    """``sglang:`` samples keyed by name + the labels of what they measure (``le``...).

    The server's identity labels are left out of the key; the series of its parts (streamed
    and other requests, DP ranks) are summed into one; of the series of ranks that share one
    scheduler (TP, PP, expert parallel), rank 0's is kept. So both real SGLang's
    ``sglang:num_running_reqs{engine_type="unified",tp_rank="0",...}`` and the simulated
    engine's give ``sglang:num_running_reqs``.
    """
    result: dict[str, float] = {}
    for sample in samples:
        if not sample.name.startswith("sglang:"):
            continue
        labels = sample.labels
        if any(labels.get(name, "0") != "0" for name in _REPLICA_LABELS):
            continue
        kept = {
            k: v
            for k, v in labels.items()
            if k not in _IDENTITY_LABELS and k not in _PARTITION_LABELS and k not in _REPLICA_LABELS
        }
        key = sample.name + format_labels(kept)
        result[key] = result.get(key, 0.0) + sample.value
    return result
