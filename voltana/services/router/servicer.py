"""RouterService RPCs: Place (dry run) and Generate (place, dispatch, stream, report)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import grpc.aio
from opentelemetry import trace

from voltana.contract.state import ClusterSnapshot, Placement, RequestSpec, SloTarget
from voltana.engine import SglangHttpClient
from voltana.errors import InvalidArgumentError
from voltana.policy.base import RoutingPolicy
from voltana.policy.routing import NoInstanceError
from voltana.rpc import status_code_for
from voltana.rpc.limits import MAX_TEXT_CHARS, check_id
from voltana.rpc.names import ROUTER_SERVICE, method_names
from voltana.services.router.cluster import LiveCluster
from voltana.services.router.convert import placement_to_proto
from voltana.services.router.dispatch import ChunkReader, PdTarget, stream_tokens
from voltana.services.router.energy_estimates import EnergyEstimates
from voltana.services.router.errors import (
    ROUTER_STATUS_CODES,
    EngineAbortedError,
    EngineUnreachableError,
    NoInstanceAvailableError,
    RouterError,
    RouterShuttingDownError,
)
from voltana.services.router.health import EngineHealth
from voltana.services.router.metrics import OK_STATUS, RequestMetrics, RouterMetrics
from voltana.services.router.placements import (
    ControllerTrigger,
    PlacementReporter,
    may_be_parked,
)
from voltana.services.router.reporting import CompletionReporter
from voltana.services.router.settings import RouterSettings
from voltana.services.router.tracing import (
    child_of,
    mark_failed,
    set_placement_attributes,
)
from voltana.services.router.validation import ValidatedRequest, validate_request
from voltana.services.telemetry.records import Completion, PlacementEvent
from voltana.text import truncate
from voltana.v1 import router_pb2, router_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
# Engine failures after which the request may go to other instances (nothing reached the
# client yet): the engine could not be reached or gave the request up.
_RETRYABLE = (EngineUnreachableError, EngineAbortedError)
# After the drain, requests still running are ended; they get this long to record that.
_ABORT_WAIT_S = 1.0
_DRAIN_POLL_S = 0.02


class CallContext(Protocol):
    """What the generation pipeline asks of its caller's context (a gRPC ServicerContext, or
    the HTTP API's stand-in): the seconds left of the caller's deadline, None for none."""

    def time_remaining(self) -> float | None: ...


# Request submission: open, or API-keyed when RouterSettings.api_keys is set. The router has
# no privileged method (its policy is changed through the controller and its own settings).
ROUTER_KEYED_METHODS = method_names(ROUTER_SERVICE, "Generate", "Place")


def _record_id(request: router_pb2.GenerateRequest) -> str:
    """The id to record a refused request by: the client's when it is a valid id."""
    try:
        check_id(request.request_id, "request_id")
    except InvalidArgumentError:
        return uuid.uuid4().hex
    return request.request_id


def run_policy(policy: RoutingPolicy, spec: RequestSpec, snapshot: ClusterSnapshot) -> Placement:
    """``policy.place`` with its answer checked against the snapshot it was given."""
    try:
        placement = policy.place(spec, snapshot)
    except NoInstanceError as error:
        raise NoInstanceAvailableError(str(error)) from error
    if placement.is_unified:
        outside = placement.prefill_id not in snapshot.unified
    else:
        outside = (
            placement.prefill_id not in snapshot.prefill
            or placement.decode_id not in snapshot.decode
        )
    if outside:
        raise RouterError(
            f"routing policy {policy.name!r} chose instances outside the snapshot "
            f"(prefill {placement.prefill_id!r}, decode {placement.decode_id!r})"
        )
    return placement


def placed_instances(placement: Placement) -> tuple[str, ...]:
    """The instances a placement runs on: a prefill and a decode one, or one colocated."""
    if placement.is_unified:
        return (placement.prefill_id,)
    return (placement.prefill_id, placement.decode_id)


def _sent_last_token(reader: ChunkReader, validated: ValidatedRequest) -> bool:
    """Whether the client has every token of the request (only its summary is left)."""
    totals = reader.totals
    finished = totals.finish_reason not in ("", "abort")
    return finished or totals.completion_tokens >= validated.max_new_tokens


@dataclass
class _Timeline:
    """Monotonic times of one request, seconds."""

    arrival_s: float
    first_token_s: float | None = None
    last_token_s: float | None = None
    end_s: float | None = None

    def ttft_ms(self) -> float | None:
        if self.first_token_s is None:
            return None
        return (self.first_token_s - self.arrival_s) * 1000.0

    def mean_itl_ms(self, tokens: int) -> float | None:
        if self.first_token_s is None or self.last_token_s is None or tokens < 2:
            return None
        return (self.last_token_s - self.first_token_s) * 1000.0 / (tokens - 1)

    def e2e_ms(self) -> float:
        assert self.end_s is not None
        return (self.end_s - self.arrival_s) * 1000.0


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    """Places with the same RoutingPolicy object the simulator uses, on a live snapshot."""

    def __init__(
        self,
        settings: RouterSettings,
        *,
        cluster: LiveCluster,
        policy: RoutingPolicy,
        policy_name: str,
        engine: SglangHttpClient,
        reporter: CompletionReporter,
        tracer: trace.Tracer,
        health: EngineHealth | None = None,
        metrics: RouterMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        placements: PlacementReporter | None = None,
        trigger: ControllerTrigger | None = None,
        energy_estimates: EnergyEstimates | None = None,
    ) -> None:
        """``energy_estimates``: fed the snapshots by the caller; estimates each request's
        energy where the engines report none (real SGLang)."""
        self._settings = settings
        self._estimates = energy_estimates or EnergyEstimates(clock)
        self._placements = placements
        self._trigger = trigger
        self._cluster = cluster
        self._policy = policy
        self._policy_name = policy_name
        self._engine = engine
        self._reporter = reporter
        self._tracer = tracer
        self._metrics = metrics
        self._health = health
        self._clock = clock
        self._wall_clock = wall_clock
        # Tasks of the Generate calls running now (ended by drain() when it runs out).
        self._in_flight: set[asyncio.Task[Any]] = set()
        # Those of them suspended while their response goes out.
        self._yielding: set[asyncio.Task[Any]] = set()
        # Those of them that sent their last token: only the summary is left, so the drain
        # running out ends them with it, never with an error.
        self._finishing: set[asyncio.Task[Any]] = set()
        # gRPC Generate calls not yet over: a handler that returned may still be sending its
        # last message and status, which the server's stop must not cut off.
        self._open_calls: set[object] = set()
        self._calls_closed = asyncio.Event()
        self._calls_closed.set()
        self._draining = False
        self._aborting = False
        self.retries = 0

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def draining(self) -> bool:
        return self._draining

    def stop_accepting(self) -> None:
        """Refuse new requests (UNAVAILABLE, which clients retry elsewhere); running ones go
        on."""
        self._draining = True

    async def drain(self, drain_s: float) -> int:
        """Refuse new requests, let running ones finish for up to ``drain_s``, then end the
        rest with UNAVAILABLE (each is recorded), except those that sent their last token.
        Returns how many had to be ended."""
        self.stop_accepting()
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + drain_s
        while self._in_flight and loop.time() < deadline_s:
            await asyncio.sleep(_DRAIN_POLL_S)
        remaining = [task for task in self._in_flight if task not in self._finishing]
        if self._in_flight:
            self._aborting = True
            for task in list(self._in_flight):
                # One waiting for its engine is cancelled: it ends with UNAVAILABLE, or, when
                # its client has every token, with its summary. One handing a chunk to its
                # client ends so once the chunk is out (a cancel there would land in grpc and
                # end the call CANCELLED).
                if task not in self._yielding:
                    task.cancel()
            deadline_s = loop.time() + _ABORT_WAIT_S
            while self._in_flight and loop.time() < deadline_s:
                await asyncio.sleep(_DRAIN_POLL_S)
        return len(remaining)

    @property
    def cluster_slo(self) -> SloTarget:
        """The SLO of a request that brings none of its own."""
        return self._settings.slo

    def use_cluster_slo(self, slo: SloTarget) -> None:
        """Hold later requests without their own SLO to ``slo`` (telemetry's cluster SLO)."""
        self._settings = dataclasses.replace(self._settings, slo=slo)

    def use_policy(self, policy: RoutingPolicy) -> None:
        """Place later requests with ``policy`` (built for the GPU telemetry reports)."""
        self._policy = policy

    async def Place(
        self, request: router_pb2.GenerateRequest, context: Context
    ) -> router_pb2.Placement:
        # The server span of the gRPC instrumentation (voltana.v1.RouterService/Place).
        span = trace.get_current_span()
        try:
            validated = validate_request(request, self._settings)
            snapshot = self._cluster.routable()
            spec = validated.spec(self._cluster.now_s())
            # A copy decides, so a dry run does not move stateful policies (round-robin turn).
            placement = run_policy(copy.deepcopy(self._policy), spec, snapshot)
            set_placement_attributes(span, placement, self._policy_name)
            return placement_to_proto(placement, self._policy.name)
        except BaseException as error:
            mark_failed(span, error)
            raise

    def _place(
        self, validated: ValidatedRequest, parent: trace.Span
    ) -> tuple[Placement, PdTarget, bool]:
        """Decide, count the request on the chosen instances (in-flight ledger, arrivals), and
        resolve their endpoints. Last: whether a chosen instance may be parked (the request
        then waits for the controller to decide its clock)."""
        span = self._tracer.start_span("placement", context=child_of(parent))
        try:
            snapshot = self._cluster.routable()
            spec = validated.spec(self._cluster.now_s())
            placement = run_policy(self._policy, spec, snapshot)
            if placement.is_unified:
                target = PdTarget.colocated_on(self._cluster.endpoint(placement.prefill_id))
            else:
                target = PdTarget.for_instances(
                    self._cluster.endpoint(placement.prefill_id),
                    self._cluster.endpoint(placement.decode_id),
                )
            request_id = validated.request_id
            self._cluster.finished(request_id)  # an earlier attempt's placement is void
            # A request's own targets (its SLO class) unless they are the cluster SLO's.
            own_slo = None if validated.slo == self._settings.slo else validated.slo
            self._cluster.record_placement(request_id, placement, spec, own_slo)
            if self._placements is not None:
                self._placements.add(
                    PlacementEvent(
                        request_id,
                        placement.prefill_id,
                        placement.decode_id,
                        spec.input_tokens,
                        self._cluster.now_s(),
                    )
                )
            may_wait = any(
                may_be_parked(state)
                for state in map(snapshot.instance, placed_instances(placement))
                if state is not None
            )
            set_placement_attributes(span, placement, self._policy_name)
            span.set_attribute("voltana.snapshot.prefill_instances", len(snapshot.prefill))
            span.set_attribute("voltana.snapshot.decode_instances", len(snapshot.decode))
            span.set_attribute("voltana.snapshot.unified_instances", len(snapshot.unified))
        except BaseException as error:
            mark_failed(span, error)
            raise
        finally:
            span.end()
        set_placement_attributes(parent, placement, self._policy_name)
        parent.set_attribute("voltana.bootstrap_room", target.bootstrap_room)
        return placement, target, may_wait

    async def _notify_controller(self, placement: Placement, wait: bool, span: trace.Span) -> None:
        """Tell the controller of the placement; with ``wait``, return once it has set the
        placed instances' clocks (a parked one is raised before the request starts)."""
        if self._trigger is None:
            return
        instance_ids = placed_instances(placement)
        if wait:
            await self._trigger.notify_and_wait(instance_ids, child_of(span))
        else:
            self._trigger.notify(instance_ids, child_of(span))

    def _engine_deadline_s(self, context: CallContext) -> float:
        """Loop-clock deadline of the engine calls: the router's limit or the client's."""
        budget_s = self._settings.engine_request_timeout_s
        remaining_s = context.time_remaining()
        if remaining_s is not None:
            budget_s = min(budget_s, max(0.0, remaining_s))
        return asyncio.get_running_loop().time() + budget_s

    async def wait_for_calls(self, timeout_s: float) -> bool:
        """Until every Generate call is over on the wire (False when ``timeout_s`` passed)."""
        try:
            await asyncio.wait_for(self._calls_closed.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def _call_opened(self, context: Context) -> None:
        key = object()
        self._open_calls.add(key)
        self._calls_closed.clear()

        def closed(_: Context) -> None:
            self._open_calls.discard(key)
            if not self._open_calls:
                self._calls_closed.set()

        # The stubs type the callback as a class of their own; any callable taking the
        # context is what grpc calls.
        context.add_done_callback(cast(Any, closed))

    async def Generate(
        self, request: router_pb2.GenerateRequest, context: Context
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        self._call_opened(context)
        async with contextlib.aclosing(self.generate(request, context)) as responses:
            async for response in responses:
                yield response

    async def generate(
        self, request: router_pb2.GenerateRequest, context: CallContext, *, protocol: str = "grpc"
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        """The one generation pipeline (validate, place, dispatch, stream, complete, report) of
        every front door: gRPC's Generate and the HTTP API (``protocol`` labels its metrics).
        ``context`` needs ``time_remaining()`` only; the current span is the request's."""
        timeline = _Timeline(arrival_s=self._clock())
        arrival_wall_s = self._wall_clock()
        # The server span of the gRPC instrumentation (voltana.v1.RouterService/Generate).
        span = trace.get_current_span()
        observed = self._metrics.request(protocol) if self._metrics is not None else None
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        validated: ValidatedRequest | None = None
        placement: Placement | None = None
        reader = ChunkReader(self._clock)
        failure: BaseException | None = None
        # Every instance an attempt ran on: the request's energy includes failed attempts'.
        ran_on: list[str] = []
        try:
            try:
                if self._draining:
                    raise RouterShuttingDownError(
                        "the router is shutting down; send the request to another router"
                    )
                validated = validate_request(request, self._settings)
                span.set_attribute("voltana.request_id", validated.request_id)
                span.set_attribute("voltana.prompt_tokens", validated.prompt_tokens)
                span.set_attribute("voltana.max_new_tokens", validated.max_new_tokens)
                deadline_s = self._engine_deadline_s(context)
                attempt = 1
                while True:
                    placement, target, may_wait = self._place(validated, span)
                    if observed is not None:
                        observed.on_placed(placement, self._policy.name, validated.prompt_tokens)
                    await self._notify_controller(placement, may_wait, span)
                    reader = ChunkReader(self._clock)
                    # The prefill engine holds the request from its dispatch on.
                    self._cluster.reached(validated.request_id, placement.prefill_id)
                    ran_on += placed_instances(placement)
                    self._estimates.dispatched(
                        validated.request_id, placement.prefill_id, validated.prompt_tokens
                    )
                    relay = self._relay(
                        validated,
                        target,
                        reader,
                        timeline,
                        span,
                        deadline_s,
                        observed,
                        placement,
                    )
                    try:
                        async with contextlib.aclosing(relay):
                            async for response in relay:
                                if task is not None:
                                    self._yielding.add(task)
                                try:
                                    yield response
                                finally:
                                    if task is not None:
                                        self._yielding.discard(task)
                                if task is not None and _sent_last_token(reader, validated):
                                    self._finishing.add(task)
                                elif self._aborting:  # drain() ran out while this was sent
                                    raise self._shut_down_error(reader)
                        break
                    except asyncio.CancelledError:
                        if not (self._aborting and _sent_last_token(reader, validated)):
                            raise
                        # drain() ran out while the engine had yet to end a stream whose
                        # tokens are all out: end it with its summary, not an error.
                        if task is not None and task.cancelling():
                            task.uncancel()
                        break
                    except RouterError as error:
                        if not self._retry_after(error, target, attempt, timeline, deadline_s):
                            raise
                    self.retries += 1
                    span.add_event(
                        "retry",
                        {
                            "voltana.attempt": attempt,
                            "voltana.failed_prefill": placement.prefill_id,
                            "voltana.failed_decode": placement.decode_id,
                        },
                    )
                    attempt += 1
                timeline.end_s = self._clock()
                self._settle_estimate(validated, reader, ran_on)
                completion = self._completion(validated, placement, target, reader, timeline)
                span.set_attribute("voltana.finish_reason", completion.finish_reason)
                span.set_attribute("voltana.completion_tokens", completion.completion_tokens)
                span.set_attribute("voltana.ttft_ms", completion.ttft_ms)
                span.set_attribute("voltana.mean_itl_ms", completion.mean_itl_ms)
                span.set_attribute("voltana.e2e_latency_ms", completion.e2e_latency_ms)
                span.set_attribute("voltana.attempts", attempt)
                yield router_pb2.GenerateResponse(completion=completion)
            except asyncio.CancelledError:
                if self._aborting and task is not None and task.cancelling():
                    # drain() ran out: end with a status (and a record), not a cancellation.
                    task.uncancel()
                    raise self._shut_down_error(reader) from None
                raise
        except BaseException as error:  # GeneratorExit/CancelledError too: report, then re-raise
            failure = error
            mark_failed(span, error, self._failure_reason(error, context))
            raise
        finally:
            if task is not None:
                self._in_flight.discard(task)
                self._finishing.discard(task)
            if validated is not None:
                self._cluster.finished(validated.request_id)
                self._settle_estimate(validated, reader, ran_on)
            if timeline.end_s is None:
                timeline.end_s = self._clock()
            self._report(
                request, validated, placement, reader, timeline, arrival_wall_s, failure, context
            )
            if observed is not None:
                self._observe_end(observed, validated, reader, timeline, failure, context)

    def _settle_estimate(
        self, validated: ValidatedRequest, reader: ChunkReader, ran_on: list[str]
    ) -> None:
        """The router's energy estimate of the request, once (its instances forget it)."""
        if ran_on:
            estimate = self._estimates.finished(validated.request_id, tuple(ran_on))
            reader.totals.estimated_energy = estimate
            ran_on.clear()

    @staticmethod
    def _shut_down_error(reader: ChunkReader) -> RouterShuttingDownError:
        return RouterShuttingDownError(
            "the router shut down before the request finished "
            f"({reader.totals.completion_tokens} tokens sent)"
        )

    async def _relay(
        self,
        validated: ValidatedRequest,
        target: PdTarget,
        reader: ChunkReader,
        timeline: _Timeline,
        span: trace.Span,
        deadline_s: float,
        observed: RequestMetrics | None,
        placement: Placement,
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        """One attempt: the engines' tokens as response chunks."""
        decode_id = placement.decode_id
        dispatch_span = self._tracer.start_span(
            "dispatch",
            context=child_of(span),
            attributes={
                "voltana.prefill_url": target.prefill_url,
                "voltana.decode_url": target.decode_url,
                "voltana.bootstrap_room": target.bootstrap_room,
            },
        )
        tokens = stream_tokens(
            self._engine,
            target,
            validated,
            reader,
            deadline_s=deadline_s,
            trace_context=child_of(dispatch_span),
        )
        # aclosing: the engine requests end with this handler, also when it is closed
        # while suspended at a yield (the client went away).
        try:
            async with contextlib.aclosing(tokens):
                async for delta in tokens:
                    if timeline.first_token_s is None:
                        timeline.first_token_s = delta.at_s
                        # The decode engine's batch holds the request from its first token on
                        # (a colocated instance has held it since its dispatch).
                        if not placement.is_unified:
                            self._cluster.reached(validated.request_id, decode_id)
                        self._estimates.first_token(validated.request_id, target.prefill_id)
                        event = {"voltana.ttft_ms": timeline.ttft_ms() or 0.0}
                        span.add_event("first_token", event)
                        dispatch_span.add_event("first_token", event)
                    # The first token comes from prefill; the rest are decode steps.
                    decoded = delta.count - (1 if delta.index == 0 else 0)
                    self._estimates.tokens(validated.request_id, decode_id, decoded)
                    if observed is not None:
                        ttft_ms = timeline.ttft_ms()
                        observed.on_tokens(
                            delta.count,
                            delta.at_s,
                            ttft_ms / 1000.0 if ttft_ms is not None else None,
                        )
                    timeline.last_token_s = delta.at_s
                    yield router_pb2.GenerateResponse(
                        chunk=router_pb2.TokenChunk(
                            text=delta.text, token_ids=delta.token_ids, index=delta.index
                        )
                    )
        except BaseException as error:
            mark_failed(dispatch_span, error)
            raise
        finally:
            dispatch_span.end()

    def _retry_after(
        self,
        error: RouterError,
        target: PdTarget,
        attempt: int,
        timeline: _Timeline,
        deadline_s: float,
    ) -> bool:
        """Keep traffic away from an engine that is down; True when the request may be placed
        again (nothing reached the client, attempts and time are left)."""
        if not isinstance(error, _RETRYABLE):
            return False
        failed_id = target.instance_for_url(error.engine_url) if error.engine_url else None
        if failed_id is not None and self._health is not None:
            self._health.report_failure(failed_id, str(error))
        return (
            timeline.first_token_s is None
            and attempt < self._settings.max_attempts
            and not self._draining
            and asyncio.get_running_loop().time() < deadline_s
        )

    def _completion(
        self,
        request: ValidatedRequest,
        placement: Placement,
        target: PdTarget,
        reader: ChunkReader,
        timeline: _Timeline,
    ) -> router_pb2.Completion:
        totals = reader.totals
        tokens = totals.completion_tokens
        finish_reason = totals.finish_reason or (
            "length" if tokens >= request.max_new_tokens else "stop"
        )
        energy = totals.energy
        matched = totals.matched_stop
        completion = router_pb2.Completion(
            finish_reason=finish_reason,
            prompt_tokens=totals.prompt_tokens or request.prompt_tokens,
            completion_tokens=tokens,
            ttft_ms=timeline.ttft_ms() or 0.0,
            mean_itl_ms=timeline.mean_itl_ms(tokens) or 0.0,
            prefill_instance=placement.prefill_id,
            decode_instance=placement.decode_id,
            request_id=request.request_id,
            bootstrap_room=target.bootstrap_room,
            e2e_latency_ms=timeline.e2e_ms(),
            energy_j=energy.total_j if energy is not None else None,
            idle_energy_j=energy.idle_j if energy is not None else None,
        )
        if isinstance(matched, str):
            completion.matched_stop_text = matched
        elif matched is not None and 0 <= matched < 2**31:
            completion.matched_stop_token_id = matched
        return completion

    def _observe_end(
        self,
        observed: RequestMetrics,
        request: ValidatedRequest | None,
        reader: ChunkReader,
        timeline: _Timeline,
        failure: BaseException | None,
        context: CallContext,
    ) -> None:
        tokens = reader.totals.completion_tokens
        if timeline.end_s is None:
            timeline.end_s = self._clock()
        energy = reader.totals.energy
        if energy is not None and failure is None:
            observed.on_energy(energy.active_j, energy.idle_j)
        observed.finish(
            self._failure_status(failure, context) if failure is not None else OK_STATUS,
            slo=request.slo if request is not None else self._settings.slo,
            ttft_ms=timeline.ttft_ms(),
            mean_itl_ms=timeline.mean_itl_ms(tokens),
            e2e_s=timeline.e2e_ms() / 1000.0,
        )

    def _failure_reason(self, error: BaseException, context: CallContext) -> str:
        if isinstance(error, asyncio.CancelledError | GeneratorExit):
            if self._aborting:
                return "the router shut down before the request finished"
            remaining_s = context.time_remaining()
            if remaining_s is not None and remaining_s <= 0:
                return "deadline exceeded"
            return "cancelled by the client"
        return str(error) or type(error).__name__

    def _failure_status(self, error: BaseException, context: CallContext) -> str:
        """The gRPC status (name) the client got for ``error``."""
        if isinstance(error, asyncio.CancelledError | GeneratorExit):
            if self._aborting:
                return grpc.StatusCode.UNAVAILABLE.name
            remaining_s = context.time_remaining()
            if remaining_s is not None and remaining_s <= 0:
                return grpc.StatusCode.DEADLINE_EXCEEDED.name
            return grpc.StatusCode.CANCELLED.name
        code = status_code_for(error, ROUTER_STATUS_CODES)
        # Anything else escapes the servicer and grpc answers UNKNOWN.
        return (code or grpc.StatusCode.UNKNOWN).name

    def _report(
        self,
        request: router_pb2.GenerateRequest,
        validated: ValidatedRequest | None,
        placement: Placement | None,
        reader: ChunkReader,
        timeline: _Timeline,
        arrival_wall_s: float,
        failure: BaseException | None,
        context: CallContext,
    ) -> None:
        """Queue the outcome for telemetry (never blocks the stream). Every request is
        recorded, also one refused before it was placed (no instance ids then)."""
        totals = reader.totals
        if failure is not None:
            ok, reason = False, self._failure_reason(failure, context)
            status = self._failure_status(failure, context)
        else:
            ok, reason, status = True, totals.finish_reason or "stop", grpc.StatusCode.OK.name
        if validated is not None:
            request_id, prompt_tokens = validated.request_id, validated.prompt_tokens
        else:
            request_id, prompt_tokens = _record_id(request), 0
        tokens = totals.completion_tokens
        assert timeline.end_s is not None
        self._reporter.submit(
            Completion(
                request_id=request_id,
                prefill_id=placement.prefill_id if placement is not None else "",
                decode_id=placement.decode_id if placement is not None else "",
                input_tokens=totals.prompt_tokens or prompt_tokens,
                output_tokens=tokens,
                ttft_ms=timeline.ttft_ms(),
                mean_itl_ms=timeline.mean_itl_ms(tokens),
                ok=ok,
                reason=truncate(reason, MAX_TEXT_CHARS),
                arrival_s=arrival_wall_s,
                finished_at_s=arrival_wall_s + (timeline.end_s - timeline.arrival_s),
                slo=validated.slo if validated is not None else None,
                status=status,
                energy_j=totals.energy.total_j if totals.energy is not None else None,
                idle_energy_j=totals.energy.idle_j if totals.energy is not None else None,
            )
        )
