"""One streaming Generate call: token events, then the summary."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from types import TracebackType

import grpc
import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import trace

from voltana.sdk.errors import VoltanaClientError, client_error_from_rpc
from voltana.sdk.messages import summary_from_proto, token_event_from_proto
from voltana.sdk.types import GenerationResult, GenerationSummary, TokenEvent
from voltana.v1 import router_pb2

StartCall = Callable[
    [], grpc.aio.UnaryStreamCall[router_pb2.GenerateRequest, router_pb2.GenerateResponse]
]
# Asked when a call failed before its first message: True = start it again (start_call picks
# the router), after waiting if need be; False = the error stands.
RetryDecision = Callable[[grpc.RpcError], Awaitable[bool]]


class GenerationStream:
    """Async iterator of ``TokenEvent``s followed by one ``GenerationSummary``.

    The call starts at the first ``__anext__``. Leaving early (``break``, an exception) should
    be followed by ``await stream.aclose()`` (or use ``async with``), which cancels the request
    on the router and the engines. ``collect()`` reads the rest into a ``GenerationResult``.
    A call that fails before its first message (a router down or draining) is started again
    when ``retry`` says so; one that streamed anything never is.
    """

    def __init__(
        self,
        start_call: StartCall,
        tracer: trace.Tracer,
        request_id: str,
        retry: RetryDecision | None = None,
    ) -> None:
        self._start_call = start_call
        self._retry = retry
        self._received = False
        self._tracer = tracer
        self._request_id = request_id
        self._call: (
            grpc.aio.UnaryStreamCall[router_pb2.GenerateRequest, router_pb2.GenerateResponse] | None
        ) = None
        self._span: trace.Span | None = None
        self._texts: list[str] = []
        self._token_ids: list[int] = []
        self._summary: GenerationSummary | None = None
        self._finished = False

    @property
    def summary(self) -> GenerationSummary | None:
        """The summary, once the stream reached it."""
        return self._summary

    @property
    def text(self) -> str:
        """Text received so far."""
        return "".join(self._texts)

    def __aiter__(self) -> GenerationStream:
        return self

    def _ensure_started(
        self,
    ) -> grpc.aio.UnaryStreamCall[router_pb2.GenerateRequest, router_pb2.GenerateResponse]:
        if self._call is None:
            if self._span is None:
                self._span = self._tracer.start_span("voltana.client.generate")
                if self._request_id:
                    self._span.set_attribute("voltana.request_id", self._request_id)
            # Current only while the call starts: the instrumentation's CLIENT span (made in
            # the call's interceptor task, which copies this context) becomes its child.
            token = otel_context.attach(trace.set_span_in_context(self._span))
            try:
                self._call = self._start_call()
            finally:
                otel_context.detach(token)
        return self._call

    async def __anext__(self) -> TokenEvent | GenerationSummary:
        if self._finished:
            raise StopAsyncIteration
        while True:
            call = self._ensure_started()
            try:
                response = await call.read()
                break
            except grpc.RpcError as error:
                if not self._received and await self._may_retry(error):
                    continue
                client_error = client_error_from_rpc(error)
                self._end(error=client_error)
                raise client_error from error
            except asyncio.CancelledError:
                call.cancel()
                self._end(error=VoltanaClientError("cancelled by the caller"))
                raise
        self._received = True
        if response is grpc.aio.EOF:
            ended = VoltanaClientError("the router ended the stream without a completion")
            self._end(error=ended)
            raise ended
        assert isinstance(response, router_pb2.GenerateResponse)
        if response.WhichOneof("event") == "completion":
            self._summary = summary_from_proto(response.completion)
            self._end()
            await self._drain(call)
            return self._summary
        event = token_event_from_proto(response.chunk)
        self._texts.append(event.text)
        self._token_ids.extend(event.token_ids)
        return event

    async def _may_retry(self, error: grpc.RpcError) -> bool:
        if self._retry is None or not await self._retry(error):
            return False
        if self._span is not None:
            self._span.add_event("retry", {"rpc.grpc.status_code": error.code().name})
        self._call = None  # the next read starts the call again
        return True

    @staticmethod
    async def _drain(
        call: grpc.aio.UnaryStreamCall[router_pb2.GenerateRequest, router_pb2.GenerateResponse],
    ) -> None:
        """Read the end of the stream after the completion (the last message), so the call
        finishes, and with it its tracing span."""
        with contextlib.suppress(grpc.RpcError):
            await call.read()

    async def collect(self) -> GenerationResult:
        """Read the stream to its end and return the whole generation."""
        async for _ in self:
            pass
        if self._summary is None:  # iteration ended before (e.g. the stream was closed)
            raise VoltanaClientError("the stream was closed before its completion")
        return GenerationResult(self.text, tuple(self._token_ids), self._summary)

    def cancel(self) -> None:
        """Cancel the request (the router cancels the engine requests too)."""
        if self._call is not None and not self._finished:
            self._call.cancel()
            self._end(error=VoltanaClientError("cancelled by the caller"))
        self._finished = True

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> GenerationStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _end(self, error: BaseException | None = None) -> None:
        self._finished = True
        span, self._span = self._span, None
        if span is None:
            return
        if error is not None:
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
            span.record_exception(error)
        elif self._summary is not None:
            summary = self._summary
            span.set_attribute("voltana.request_id", summary.request_id)
            span.set_attribute("voltana.completion_tokens", summary.completion_tokens)
            span.set_attribute("voltana.ttft_ms", summary.ttft_ms)
            span.set_attribute("voltana.finish_reason", summary.finish_reason)
        span.end()
