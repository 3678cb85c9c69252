"""The router's HTTP front door: OpenAI-compatible and SGLang-native, next to its gRPC port.

``POST /v1/completions``, ``POST /v1/chat/completions`` (whole or streamed as server-sent
events), ``GET /v1/models``, ``POST /generate`` (SGLang's native API) and ``GET /health``.
Every generation runs the same pipeline as gRPC's Generate (RouterServicer.generate): the same
validation, placement, SLO tracking, telemetry record, metrics (``protocol="http"``) and
tracing (the aiohttp instrumentation's server span is the request's span). With API keys (or
the control-plane token) configured, requests need ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncGenerator, Callable, Collection
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
from voltana.services.router.http_format import (
    ApiKind,
    HttpRequestError,
    OpenAiAnswer,
    ParsedRequest,
    error_body,
    parse_chat,
    parse_completion,
    parse_sglang,
    sglang_meta,
)
from voltana.v1 import router_pb2

_LOG = logging.getLogger(__name__)
# Long token-id prompts fit (the router's own limits refuse what is too long).
MAX_BODY_BYTES = 16 * 2**20
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


def _json_error(message: str, status: int) -> web.Response:
    return web.json_response(error_body(message, status), status=status)


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
    ) -> None:
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
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        if self._port is None:
            raise FailedPreconditionError("the router's HTTP API is not started")
        return f"http://{dialable_address(self._listen_address, self._port)}"

    async def start(self) -> None:
        if self._runner is not None:
            raise FailedPreconditionError("the router's HTTP API is already started")
        app = web.Application(
            middlewares=server_middlewares(self._tracer_provider), client_max_size=MAX_BODY_BYTES
        )
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/generate", self._sglang_generate)
        app.router.add_get("/health", self._health)
        # handler_cancellation: a client that hangs up cancels its request, down to the engines.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0
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
        await web.SockSite(runner, sock).start()
        self._runner, self._port = runner, int(sock.getsockname()[1])
        _LOG.info("router HTTP API (OpenAI, SGLang /generate) on %s", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._port = None

    # ---- handlers ----------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        if not self._accepted_keys:
            return True
        header = request.headers.get("Authorization", "")
        presented = header.removeprefix("Bearer ").strip()
        return bool(presented) and credential_matches(presented, self._accepted_keys)

    async def _health(self, _request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="OK")
        return _json_error("no prefill or no decode instance is routable yet", 503)

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _json_error("a valid API key is required (Authorization: Bearer <key>)", 401)
        model = {"id": self._served_model, "object": "model", "created": 0, "owned_by": "voltana"}
        return web.json_response({"object": "list", "data": [model]})

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
            body = json_codec.loads(await request.read())
        except ValueError:
            return _json_error("the request body is not valid JSON", 400)
        try:
            parsed = parse(body, self._served_model)
        except HttpRequestError as error:
            return _json_error(error.message, error.status)
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
