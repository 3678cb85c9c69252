"""Async client of the Voltana router."""

from __future__ import annotations

from collections.abc import Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, overload

import grpc
import grpc.aio
from opentelemetry import trace

from voltana import errors
from voltana.rpc import RpcSecurity, TlsFiles, create_channel, wait_until_ready
from voltana.rpc.auth import bearer_metadata
from voltana.sdk.errors import UnavailableError, VoltanaClientError, client_error_from_rpc
from voltana.sdk.messages import build_request, placement_from_proto
from voltana.sdk.stream import GenerationStream
from voltana.sdk.types import GenerationResult, PlacementInfo
from voltana.v1 import router_pb2, router_pb2_grpc

TRACER_NAME = "voltana.sdk"


class VoltanaClient:
    """Talks to a router at ``target`` ("host:port") over one reused gRPC channel.

    ``timeout_s`` is the default deadline of each call (None = none); ``metadata`` is sent with
    every call. ``api_key``: the key a router started with API keys requires (sent as
    ``authorization: Bearer <key>``); ``tls``: CA (and client certificate) for a TLS router. Use
    ``async with VoltanaClient(...) as client`` or ``await client.close()``.
    Calls are traced with opentelemetry-instrumentation-grpc (a CLIENT span per call, the W3C
    ``traceparent`` in its metadata) under an SDK span (``voltana.client.generate``) that
    carries the request's outcome, in the caller's trace when a span is current.

        async with VoltanaClient("127.0.0.1:50051") as client:
            async for event in client.generate("Hello", max_new_tokens=32):
                ...  # TokenEvent..., then one GenerationSummary
    """

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel_options: Mapping[str, Any] | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        api_key: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self._target = target
        self._timeout_s = timeout_s
        self._metadata = list(metadata)
        if api_key is not None:
            self._metadata.append(bearer_metadata(api_key))
        self._channel_options = channel_options
        self._tracer_provider = tracer_provider
        self._security = RpcSecurity(tls=tls) if tls is not None else None
        self._tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
        self._channel: grpc.aio.Channel | None = None
        self._stub: router_pb2_grpc.RouterServiceAsyncStub | None = None
        self._closed = False

    @property
    def target(self) -> str:
        return self._target

    def _router(self) -> router_pb2_grpc.RouterServiceAsyncStub:
        # The channel is made on first use, inside the caller's event loop.
        if self._closed:
            raise VoltanaClientError("the client is closed")
        if self._stub is None:
            self._channel = create_channel(
                self._target,
                options=self._channel_options,
                security=self._security,
                tracer_provider=self._tracer_provider,
            )
            self._stub = router_pb2_grpc.RouterServiceStub(self._channel)
        assert self._stub is not None
        return self._stub

    def _deadline_s(self, timeout_s: float | None) -> float | None:
        return timeout_s if timeout_s is not None else self._timeout_s

    @overload
    def generate(
        self,
        prompt: str | None = None,
        *,
        input_ids: Sequence[int] | None = None,
        max_new_tokens: int | None = 128,
        temperature: float | None = None,
        top_p: float | None = None,
        ignore_eos: bool = False,
        stop: Sequence[str] | None = None,
        ttft_slo_ms: float | None = None,
        itl_slo_ms: float | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
        stream: Literal[True] = True,
    ) -> GenerationStream: ...

    @overload
    def generate(
        self,
        prompt: str | None = None,
        *,
        input_ids: Sequence[int] | None = None,
        max_new_tokens: int | None = 128,
        temperature: float | None = None,
        top_p: float | None = None,
        ignore_eos: bool = False,
        stop: Sequence[str] | None = None,
        ttft_slo_ms: float | None = None,
        itl_slo_ms: float | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
        stream: Literal[False],
    ) -> Coroutine[Any, Any, GenerationResult]: ...

    def generate(
        self,
        prompt: str | None = None,
        *,
        input_ids: Sequence[int] | None = None,
        max_new_tokens: int | None = 128,
        temperature: float | None = None,
        top_p: float | None = None,
        ignore_eos: bool = False,
        stop: Sequence[str] | None = None,
        ttft_slo_ms: float | None = None,
        itl_slo_ms: float | None = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
        stream: bool = True,
    ) -> GenerationStream | Coroutine[Any, Any, GenerationResult]:
        """Generate from a text ``prompt`` or ``input_ids`` (exactly one).

        ``stream=True`` (default): a ``GenerationStream`` to ``async for`` over (TokenEvents,
        then a GenerationSummary). ``stream=False``: an awaitable of the ``GenerationResult``.
        ``max_new_tokens=None`` uses the router's default; SLO targets left None use the
        cluster's. Raises InvalidRequestError, UnavailableError, DeadlineExceededError, ...
        """
        request = build_request(
            prompt,
            input_ids=input_ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            ignore_eos=ignore_eos,
            stop=stop,
            ttft_slo_ms=ttft_slo_ms,
            itl_slo_ms=itl_slo_ms,
            request_id=request_id,
        )
        deadline_s = self._deadline_s(timeout_s)

        def start_call() -> grpc.aio.UnaryStreamCall[
            router_pb2.GenerateRequest, router_pb2.GenerateResponse
        ]:
            return self._router().Generate(request, timeout=deadline_s, metadata=self._metadata)

        generation = GenerationStream(start_call, self._tracer, request.request_id)
        if stream:
            return generation
        return generation.collect()

    async def place(
        self,
        prompt: str | None = None,
        *,
        input_ids: Sequence[int] | None = None,
        max_new_tokens: int | None = 128,
        ttft_slo_ms: float | None = None,
        itl_slo_ms: float | None = None,
        timeout_s: float | None = None,
    ) -> PlacementInfo:
        """Where the router would send this request (nothing is sent to an engine)."""
        request = build_request(
            prompt,
            input_ids=input_ids,
            max_new_tokens=max_new_tokens,
            temperature=None,
            top_p=None,
            ignore_eos=False,
            stop=None,
            ttft_slo_ms=ttft_slo_ms,
            itl_slo_ms=itl_slo_ms,
            request_id=None,
        )
        with self._tracer.start_as_current_span("voltana.client.place"):
            try:
                message = await self._router().Place(
                    request, timeout=self._deadline_s(timeout_s), metadata=self._metadata
                )
            except grpc.RpcError as error:
                raise client_error_from_rpc(error) from error
        return placement_from_proto(message)

    async def wait_until_ready(self, timeout_s: float) -> None:
        """Connect now; raise UnavailableError when the router is not reachable in time."""
        self._router()
        assert self._channel is not None
        try:
            await wait_until_ready(self._channel, timeout_s)
        except errors.UnavailableError as error:
            raise UnavailableError(f"router {self._target} not reachable: {error}") from error

    async def close(self) -> None:
        """Close the channel; calls still running are cancelled."""
        self._closed = True
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    async def __aenter__(self) -> VoltanaClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
