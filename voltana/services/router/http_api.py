"""The router's HTTP front door: OpenAI-compatible and SGLang-native, next to its gRPC port.

``POST /v1/completions``, ``POST /v1/chat/completions`` (whole or streamed as server-sent
events), ``GET /v1/models`` and ``/v1/models/{id}``, ``POST /generate`` (SGLang's native API)
and ``GET /health``. Every refusal is OpenAI's JSON error object with a 4xx status (unknown
paths 404, wrong methods 405, bodies over the limits 413/400, slow bodies 408); the limits and
timeouts are ``HttpLimits`` (http_limits.py, connection side in http_guard.py).
Every generation runs the same pipeline as gRPC's Generate (RouterServicer.generate): the same
validation, placement, SLO tracking, telemetry record, metrics (``protocol="http"``) and
tracing (the aiohttp instrumentation's server span is the request's span). With API keys (or
the control-plane token) configured, requests need ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection
from typing import Any, Protocol

import grpc
from aiohttp import web
from opentelemetry import trace

from voltana import json_codec
from voltana.errors import ConfigError, FailedPreconditionError, VoltanaError
from voltana.lifecycle import AsyncService
from voltana.observability.http_tracing import server_middlewares
from voltana.rpc import dialable_address, status_code_for
from voltana.rpc.auth import credential_matches
from voltana.services.router.errors import ROUTER_STATUS_CODES
from voltana.services.router.http_fields import HttpRequestError
from voltana.services.router.http_format import (
    ApiKind,
    OpenAiAnswer,
    ParsedRequest,
    error_body,
    parse_chat,
    parse_completion,
    parse_sglang,
    sglang_meta,
)
from voltana.services.router.http_guard import ConnectionGuard
from voltana.services.router.http_limits import HttpLimits, parse_json_body
from voltana.v1 import router_pb2

_LOG = logging.getLogger(__name__)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 502,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class GenerateFn(Protocol):
    """RouterServicer.generate."""

    def __call__(
        self, request: router_pb2.GenerateRequest, context: Any, *, protocol: str = "grpc"
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]: ...


class _NoDeadline:
    """An HTTP request carries no deadline: the router's engine timeout bounds it."""

    def time_remaining(self) -> float | None:
        return None


def http_status(error: BaseException) -> int:
    code = status_code_for(error, ROUTER_STATUS_CODES)
    return _HTTP_STATUS.get(code, 500) if code is not None else 500


def _json_error(
    message: str, status: int, param: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(error_body(message, status, param), status=status, headers=headers)


def _http_exception_error(request: web.Request, error: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (no route, wrong method, body too large) as OpenAI errors."""
    if error.status == 404:
        message = f"no such endpoint: {request.method} {request.path}"[:300]
    elif isinstance(error, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(error.allowed_methods))
        message = f"{request.method} is not allowed on {request.path} (allowed: {allowed})"[:300]
        return _json_error(message, 405, headers={"Allow": allowed})
    else:
        message = error.reason or f"HTTP {error.status}"
    return _json_error(message, error.status)


async def _finish(responses: AsyncGenerator[router_pb2.GenerateResponse, None]) -> None:
    """Run the pipeline past its completion to its end, so it records a success (closing it
    while it waits at its last yield would count as the client going away)."""
    async for _ in responses:
        pass


def _sse(document: dict[str, Any]) -> bytes:
    return b"data: " + json_codec.dumps(document) + b"\n\n"


class RouterHttpApi(AsyncService):
    """Serves the HTTP front door on ``listen_address`` ("host:port"; port 0 = any free)."""

    def __init__(
        self,
        *,
        listen_address: str,
        generate: GenerateFn,
        served_model: str,
        accepted_keys: Collection[str] = (),
        ready: Callable[[], bool] = lambda: True,
        tracer_provider: trace.TracerProvider | None = None,
        limits: HttpLimits | None = None,
        on_shed: Callable[[str], None] = lambda _reason: None,
    ) -> None:
        """``on_shed(reason)``: a connection the limits closed (ConnectionGuard's reasons)."""
        limits = limits or HttpLimits()
        host, _, port = listen_address.rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"router HTTP address must be host:port, got {listen_address!r}")
        self._listen_address = listen_address
        self._host, self._requested_port = host.strip("[]") or "0.0.0.0", int(port)
        self._generate = generate
        self._served_model = served_model
        self._accepted_keys = frozenset(accepted_keys)
        self._ready = ready
        self._tracer_provider = tracer_provider
        self._limits = limits
        self._on_shed = on_shed
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._draining = False
        self._port: int | None = None
        self.guard: ConnectionGuard | None = None

    @property
    def url(self) -> str:
        if self._port is None:
            raise FailedPreconditionError("the router's HTTP API is not started")
        return f"http://{dialable_address(self._listen_address, self._port)}"

    async def start(self) -> None:
        if self._runner is not None:
            raise FailedPreconditionError("the router's HTTP API is already started")
        limits = self._limits
        app = web.Application(
            # Outermost: OpenAI errors for everything, and the header clock stops.
            middlewares=[self._errors_middleware, *server_middlewares(self._tracer_provider)],
            client_max_size=limits.max_body_bytes,
        )
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model_id:.+}", self._model)
        app.router.add_post("/generate", self._sglang_generate)
        app.router.add_get("/health", self._health)
        # handler_cancellation: a client that hangs up cancels its request, down to the engines.
        # A body left unread (a refused request) is drained for at most the body timeout.
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=2.0,
            keepalive_timeout=limits.keepalive_timeout_s,
            lingering_time=limits.body_timeout_s,
        )
        await runner.setup()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        try:
            sock = socket.create_server((self._host, self._requested_port), family=family)
        except OSError as error:
            await runner.cleanup()
            raise ConfigError(
                f"cannot serve the router's HTTP API on {self._listen_address}: {error.strerror}"
            ) from None
        aiohttp_server = runner.server
        assert aiohttp_server is not None
        self.guard = ConnectionGuard(limits, aiohttp_server, on_shed=self._on_shed)
        # Our own listening server (not a web.SockSite): each connection goes through the guard.
        self._server = await asyncio.get_running_loop().create_server(
            self.guard, sock=sock, backlog=1024
        )
        self._runner, self._port = runner, int(sock.getsockname()[1])
        _LOG.info("router HTTP API (OpenAI, SGLang /generate) on %s", self.url)

    async def stop_accepting(self) -> None:
        """Close the port (the drain): requests already received go on; /health and new
        requests on open connections answer 503."""
        self._draining = True
        server, self._server = self._server, None
        if server is not None:
            server.close()

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # no new connections; runner.cleanup() ends the open ones
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if server is not None:
            await server.wait_closed()
        self._port = None

    # ---- handlers ----------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        if not self._accepted_keys:
            return True
        header = request.headers.get("Authorization", "")
        presented = header.removeprefix("Bearer ").strip()
        return bool(presented) and credential_matches(presented, self._accepted_keys)

    async def _health(self, _request: web.Request) -> web.Response:
        if self._draining:
            return _json_error("the router is shutting down", 503)
        if self._ready():
            return web.Response(text="OK")
        return _json_error("no prefill or no decode instance is routable yet", 503)

    @web.middleware
    async def _errors_middleware(
        self, request: web.Request, handler: _Handler
    ) -> web.StreamResponse:
        connection = self.guard.connection_of(request.protocol) if self.guard else None
        if connection is not None:
            connection.request_started()
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            return _http_exception_error(request, error)
        except ConnectionError:  # the client went away: nobody to answer
            raise
        except Exception:  # a bug: still an OpenAI error, and a traceback in the log
            _LOG.exception("the HTTP API failed on %s %s", request.method, request.path)
            return _json_error("internal error of the router", 500)
        finally:
            if connection is not None:
                connection.request_ended()

    def _model_object(self) -> dict[str, Any]:
        return {"id": self._served_model, "object": "model", "created": 0, "owned_by": "voltana"}

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _json_error("a valid API key is required (Authorization: Bearer <key>)", 401)
        return web.json_response({"object": "list", "data": [self._model_object()]})

    async def _model(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _json_error("a valid API key is required (Authorization: Bearer <key>)", 401)
        model_id = request.match_info["model_id"]
        if model_id != self._served_model:
            message = f"the model {model_id[:100]!r} does not exist; this router serves "
            return _json_error(message + repr(self._served_model), 404, param="model")
        return web.json_response(self._model_object())

    async def _read_json(self, request: web.Request) -> Any:
        """The body's JSON value within the body timeout and size limit (HttpRequestError)."""
        limits = self._limits
        length = request.content_length
        if length is not None and length > limits.max_body_bytes:
            raise HttpRequestError(
                f"the request body is {length} bytes, the limit is {limits.max_body_bytes}", 413
            )
        try:
            async with asyncio.timeout(limits.body_timeout_s):
                raw = await request.read()
        except TimeoutError:
            raise HttpRequestError(
                f"the request body did not arrive within {limits.body_timeout_s:g} s", 408
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise HttpRequestError(
                f"the request body is over the limit of {limits.max_body_bytes} bytes", 413
            ) from None
        return parse_json_body(raw, limits)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, parse_completion)

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, parse_chat)

    async def _sglang_generate(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, parse_sglang)

    async def _handle(
        self, request: web.Request, parse: Callable[[Any, str], ParsedRequest]
    ) -> web.StreamResponse:
        if not self._authorized(request):
            return _json_error("a valid API key is required (Authorization: Bearer <key>)", 401)
        try:
            parsed = parse(await self._read_json(request), self._served_model)
        except HttpRequestError as error:
            response = _json_error(error.message, error.status, error.param)
            if error.status == 408:
                # A body this slow is not drained (aiohttp would linger for more of it):
                # the answer goes out and the connection is closed now.
                if self.guard is not None:
                    self.guard.note_shed("slow_body")
                await response.prepare(request)
                await response.write_eof()
                request.protocol.force_close()
            elif error.status == 413:
                response.force_close()  # the rest is drained for at most the body timeout
            return response
        responses = self._generate(parsed.request, _NoDeadline(), protocol="http")
        async with contextlib.aclosing(responses):
            try:
                # Errors before the first message get a status of their own.
                first = await anext(responses)
            except StopAsyncIteration:
                return _json_error("the router ended the request without an answer", 502)
            except VoltanaError as error:
                return _json_error(str(error), http_status(error))
            if parsed.stream:
                return await self._stream(request, parsed, first, responses)
            return await self._whole(parsed, first, responses)

    async def _whole(
        self,
        parsed: ParsedRequest,
        first: router_pb2.GenerateResponse,
        rest: AsyncGenerator[router_pb2.GenerateResponse, None],
    ) -> web.Response:
        texts: list[str] = []
        token_ids: list[int] = []
        message: router_pb2.GenerateResponse | None = first
        completion: router_pb2.Completion | None = None
        try:
            while message is not None:
                if message.WhichOneof("event") == "completion":
                    completion = message.completion
                    await _finish(rest)
                    break
                texts.append(message.chunk.text)
                token_ids.extend(message.chunk.token_ids)
                message = await anext(rest, None)
        except VoltanaError as error:
            return _json_error(str(error), http_status(error))
        if completion is None:
            return _json_error("the router ended the request without a completion", 502)
        text = "".join(texts)
        if parsed.kind is ApiKind.SGLANG:
            return web.json_response(
                {"text": text, "output_ids": token_ids, "meta_info": sglang_meta(completion)}
            )
        return web.json_response(OpenAiAnswer(parsed).response(text, completion))

    async def _stream(
        self,
        request: web.Request,
        parsed: ParsedRequest,
        first: router_pb2.GenerateResponse,
        rest: AsyncGenerator[router_pb2.GenerateResponse, None],
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        answer = OpenAiAnswer(parsed)
        for chunk in answer.first_chunks() if parsed.kind is not ApiKind.SGLANG else []:
            await response.write(_sse(chunk))
        # SGLang streams cumulative text and ids.
        text, token_ids = "", list[int]()
        message: router_pb2.GenerateResponse | None = first
        try:
            while message is not None:
                if message.WhichOneof("event") == "completion":
                    completion = message.completion
                    if parsed.kind is ApiKind.SGLANG:
                        last = {"text": text, "output_ids": token_ids}
                        await response.write(_sse({**last, "meta_info": sglang_meta(completion)}))
                    else:
                        for chunk in answer.last_chunks(completion):
                            await response.write(_sse(chunk))
                    await _finish(rest)
                    break
                delta = message.chunk
                if parsed.kind is ApiKind.SGLANG:
                    text += delta.text
                    token_ids.extend(delta.token_ids)
                    meta = {"completion_tokens": len(token_ids), "finish_reason": None}
                    await response.write(
                        _sse({"text": text, "output_ids": token_ids, "meta_info": meta})
                    )
                else:
                    await response.write(_sse(answer.delta_chunk(delta.text)))
                message = await anext(rest, None)
        except VoltanaError as error:
            # Headers are gone: the error travels as an event, as SGLang and OpenAI do.
            await response.write(_sse(error_body(str(error), http_status(error))))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
