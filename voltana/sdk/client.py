"""Async client of the Voltana router."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, overload

import grpc
import grpc.aio
from opentelemetry import trace

from voltana import errors
from voltana.rpc import RpcSecurity, TlsFiles, wait_until_ready
from voltana.rpc.auth import bearer_metadata
from voltana.rpc.status import RETRY_ELSEWHERE_KEY
from voltana.sdk.errors import UnavailableError, VoltanaClientError, client_error_from_rpc
from voltana.sdk.messages import build_request, placement_from_proto
from voltana.sdk.stream import GenerationStream
from voltana.sdk.targets import DEFAULT_COOLDOWN_S, RouterTarget, RouterTargets, parse_targets
from voltana.sdk.types import GenerationResult, PlacementInfo
from voltana.v1 import router_pb2

TRACER_NAME = "voltana.sdk"
# Tries of a request whose call fails before its first message, on any router.
DEFAULT_MAX_ATTEMPTS = 3
# Pause before a retry once every router was tried (doubles per round, up to 1 s).
_RETRY_PAUSE_S = 0.1
_MAX_RETRY_PAUSE_S = 1.0


def router_did_not_take(error: grpc.RpcError) -> bool:
    """Whether a failed call never reached a router that would serve it: UNAVAILABLE that no
    router handler answered (connection refused or lost), or one saying "retry elsewhere"."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    trailing = error.trailing_metadata() if isinstance(error, grpc.aio.AioRpcError) else None
    marks = [value for key, value in trailing or () if key == RETRY_ELSEWHERE_KEY]
    return not marks or marks[0] == "1"


class _Attempts:
    """One request's calls: which router each went to, whether a failed one may go again.

    Only UNAVAILABLE before any message is retried, and only when the router did not take
    the request: it could not be reached, or it is stopping (its status says so). A router
    that tried and failed (no instance, engines down) already retried on other instances.
    """

    def __init__(self, targets: RouterTargets, max_attempts: int, deadline_s: float | None):
        self._targets = targets
        self._max_attempts = max_attempts
        self._deadline_at = None if deadline_s is None else time.monotonic() + deadline_s
        self.tried: list[RouterTarget] = []

    def target(self) -> RouterTarget:
        target = self._targets.pick(self.tried)
        self.tried.append(target)
        return target

    def timeout_s(self) -> float | None:
        if self._deadline_at is None:
            return None
        return max(0.001, self._deadline_at - time.monotonic())

    async def retry(self, error: grpc.RpcError) -> bool:
        if not router_did_not_take(error) or len(self.tried) >= self._max_attempts:
            return False
        self._targets.failed_to_start(self.tried[-1])
        addresses = len(self._targets.addresses)
        if len(self.tried) % addresses == 0:  # every router had its go this round: pause
            rounds = len(self.tried) // addresses
            pause_s = min(_RETRY_PAUSE_S * 2 ** (rounds - 1), _MAX_RETRY_PAUSE_S)
            if self._deadline_at is not None and time.monotonic() + pause_s >= self._deadline_at:
                return False
            await asyncio.sleep(pause_s)
        return self._deadline_at is None or time.monotonic() < self._deadline_at


class VoltanaClient:
    """Talks to the router at ``target`` ("host:port") over one reused gRPC channel, or to
    several active-active routers (a list, or "a:1,b:2"), one channel each.

    With several routers, requests go round-robin over those whose health says SERVING (each
    one's health is watched: a router draining on SIGTERM gets no new request). A call that
    fails with UNAVAILABLE before its first message (router down, draining, nothing placeable)
    is sent again, to another router when there is one, up to ``max_attempts`` tries in all
    within the call's deadline; a stream that delivered anything is never sent again.

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
        target: str | Sequence[str],
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel_options: Mapping[str, Any] | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        api_key: str | None = None,
        tls: TlsFiles | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
    ) -> None:
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        addresses = parse_targets(target)
        self._target = ",".join(addresses)
        self._max_attempts = max_attempts
        self._timeout_s = timeout_s
        self._metadata = list(metadata)
        if api_key is not None:
            self._metadata.append(bearer_metadata(api_key))
        self._tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
        self._targets = RouterTargets(
            addresses,
            channel_options=channel_options,
            security=RpcSecurity(tls=tls) if tls is not None else None,
            tracer_provider=tracer_provider,
            cooldown_s=cooldown_s,
        )
        self._closed = False

    @property
    def target(self) -> str:
        """The router address (several: comma-separated)."""
        return self._target

    @property
    def targets(self) -> Sequence[RouterTarget]:
        """Each router with its channel and health (once the client was used)."""
        return self._targets.targets

    def _attempts(self, deadline_s: float | None) -> _Attempts:
        # Channels are made on first use, inside the caller's event loop.
        if self._closed:
            raise VoltanaClientError("the client is closed")
        return _Attempts(self._targets, self._max_attempts, deadline_s)

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
        attempts = self._attempts(self._deadline_s(timeout_s))

        def start_call() -> grpc.aio.UnaryStreamCall[
            router_pb2.GenerateRequest, router_pb2.GenerateResponse
        ]:
            stub = attempts.target().stub
            return stub.Generate(request, timeout=attempts.timeout_s(), metadata=self._metadata)

        generation = GenerationStream(
            start_call, self._tracer, request.request_id, retry=attempts.retry
        )
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
        attempts = self._attempts(self._deadline_s(timeout_s))
        with self._tracer.start_as_current_span("voltana.client.place"):
            while True:
                try:
                    message = await attempts.target().stub.Place(
                        request, timeout=attempts.timeout_s(), metadata=self._metadata
                    )
                    break
                except grpc.RpcError as error:
                    if not await attempts.retry(error):
                        raise client_error_from_rpc(error) from error
        return placement_from_proto(message)

    async def wait_until_ready(self, timeout_s: float) -> None:
        """Connect now; raise UnavailableError when no router is reachable in time."""
        channels = [self._attempts(None).target().channel]
        channels += [t.channel for t in self._targets.targets if t.channel is not channels[0]]
        waits = [asyncio.ensure_future(wait_until_ready(c, timeout_s)) for c in channels]
        try:
            for done in asyncio.as_completed(waits):
                with contextlib.suppress(errors.UnavailableError):
                    await done
                    return
        finally:
            for wait in waits:
                wait.cancel()
        raise UnavailableError(f"router {self._target} not reachable in {timeout_s:g} s")

    async def close(self) -> None:
        """Close the channels; calls still running are cancelled."""
        self._closed = True
        await self._targets.close()

    async def __aenter__(self) -> VoltanaClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
