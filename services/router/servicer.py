"""RouterService RPCs: Place (dry run) and Generate (place, dispatch, stream, report)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc.aio
from opentelemetry import trace

from voltana.engine import SglangHttpClient
from voltana.policy.base import RoutingPolicy
from voltana.policy.routing import NoInstanceError
from voltana.policy.state import ClusterSnapshot, Placement, RequestSpec
from voltana.rpc import status_code_for
from voltana.rpc.names import ROUTER_SERVICE, method_names
from voltana.services.router.cluster import LiveCluster
from voltana.services.router.convert import placement_to_proto
from voltana.services.router.dispatch import ChunkReader, PdTarget, stream_tokens
from voltana.services.router.errors import (
    ROUTER_STATUS_CODES,
    NoInstanceAvailableError,
    RouterError,
)
from voltana.services.router.metrics import OK_STATUS, RequestMetrics, RouterMetrics
from voltana.services.router.reporting import CompletionReporter
from voltana.services.router.settings import RouterSettings
from voltana.services.router.tracing import (
    child_of,
    mark_failed,
    set_placement_attributes,
)
from voltana.services.router.validation import ValidatedRequest, validate_request
from voltana.services.telemetry.records import Completion
from voltana.v1 import router_pb2, router_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]

# Request submission: open, or API-keyed when RouterSettings.api_keys is set. The router has
# no privileged method (its policy is changed through the controller and its own settings).
ROUTER_KEYED_METHODS = method_names(ROUTER_SERVICE, "Generate", "Place")


def run_policy(policy: RoutingPolicy, spec: RequestSpec, snapshot: ClusterSnapshot) -> Placement:
    """``policy.place`` with its answer checked against the snapshot it was given."""
    try:
        placement = policy.place(spec, snapshot)
    except NoInstanceError as error:
        raise NoInstanceAvailableError(str(error)) from error
    if placement.prefill_id not in snapshot.prefill or placement.decode_id not in snapshot.decode:
        raise RouterError(
            f"routing policy {policy.name!r} chose instances outside the snapshot "
            f"(prefill {placement.prefill_id!r}, decode {placement.decode_id!r})"
        )
    return placement


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
        metrics: RouterMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._cluster = cluster
        self._policy = policy
        self._policy_name = policy_name
        self._engine = engine
        self._reporter = reporter
        self._tracer = tracer
        self._metrics = metrics
        self._clock = clock
        self._wall_clock = wall_clock

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

    def _place(self, validated: ValidatedRequest, parent: trace.Span) -> tuple[Placement, PdTarget]:
        """Decide, bump the chosen instances' load, and resolve their endpoints."""
        span = self._tracer.start_span("placement", context=child_of(parent))
        try:
            snapshot = self._cluster.routable()
            spec = validated.spec(self._cluster.now_s())
            placement = run_policy(self._policy, spec, snapshot)
            target = PdTarget.for_instances(
                self._cluster.endpoint(placement.prefill_id),
                self._cluster.endpoint(placement.decode_id),
            )
            self._cluster.record_placement(placement, spec)
            set_placement_attributes(span, placement, self._policy_name)
            span.set_attribute("voltana.snapshot.prefill_instances", len(snapshot.prefill))
            span.set_attribute("voltana.snapshot.decode_instances", len(snapshot.decode))
        except BaseException as error:
            mark_failed(span, error)
            raise
        finally:
            span.end()
        set_placement_attributes(parent, placement, self._policy_name)
        parent.set_attribute("voltana.bootstrap_room", target.bootstrap_room)
        return placement, target

    def _engine_deadline_s(self, context: Context) -> float:
        """Loop-clock deadline of the engine calls: the router's limit or the client's."""
        budget_s = self._settings.engine_request_timeout_s
        remaining_s = context.time_remaining()
        if remaining_s is not None:
            budget_s = min(budget_s, max(0.0, remaining_s))
        return asyncio.get_running_loop().time() + budget_s

    async def Generate(
        self, request: router_pb2.GenerateRequest, context: Context
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        timeline = _Timeline(arrival_s=self._clock())
        arrival_wall_s = self._wall_clock()
        # The server span of the gRPC instrumentation (voltana.v1.RouterService/Generate).
        span = trace.get_current_span()
        observed = self._metrics.request("grpc") if self._metrics is not None else None
        validated: ValidatedRequest | None = None
        placement: Placement | None = None
        reader = ChunkReader(self._clock)
        failure: BaseException | None = None
        try:
            validated = validate_request(request, self._settings)
            span.set_attribute("voltana.request_id", validated.request_id)
            span.set_attribute("voltana.prompt_tokens", validated.prompt_tokens)
            span.set_attribute("voltana.max_new_tokens", validated.max_new_tokens)
            placement, target = self._place(validated, span)
            if observed is not None:
                observed.on_placed(placement, self._policy.name, validated.prompt_tokens)
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
                deadline_s=self._engine_deadline_s(context),
                trace_context=child_of(dispatch_span),
            )
            # aclosing: the engine requests end with this handler, also when it is closed
            # while suspended at a yield (the client went away).
            try:
                async with contextlib.aclosing(tokens):
                    async for delta in tokens:
                        if timeline.first_token_s is None:
                            timeline.first_token_s = delta.at_s
                            event = {"voltana.ttft_ms": timeline.ttft_ms() or 0.0}
                            span.add_event("first_token", event)
                            dispatch_span.add_event("first_token", event)
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
            timeline.end_s = self._clock()
            completion = self._completion(validated, placement, target, reader, timeline)
            span.set_attribute("voltana.finish_reason", completion.finish_reason)
            span.set_attribute("voltana.completion_tokens", completion.completion_tokens)
            span.set_attribute("voltana.ttft_ms", completion.ttft_ms)
            span.set_attribute("voltana.mean_itl_ms", completion.mean_itl_ms)
            span.set_attribute("voltana.e2e_latency_ms", completion.e2e_latency_ms)
            yield router_pb2.GenerateResponse(completion=completion)
        except BaseException as error:  # GeneratorExit/CancelledError too: report, then re-raise
            failure = error
            mark_failed(span, error, self._failure_reason(error, context))
            raise
        finally:
            if validated is not None and placement is not None:
                if timeline.end_s is None:
                    timeline.end_s = self._clock()
                self._report(
                    validated, placement, reader, timeline, arrival_wall_s, failure, context
                )
            if observed is not None:
                self._observe_end(observed, validated, reader, timeline, failure, context)

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
        return router_pb2.Completion(
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
        )

    def _observe_end(
        self,
        observed: RequestMetrics,
        request: ValidatedRequest | None,
        reader: ChunkReader,
        timeline: _Timeline,
        failure: BaseException | None,
        context: Context,
    ) -> None:
        tokens = reader.totals.completion_tokens
        if timeline.end_s is None:
            timeline.end_s = self._clock()
        observed.finish(
            self._status_name(failure, reader.totals.finish_reason == "abort", context),
            slo=request.slo if request is not None else self._settings.slo,
            ttft_ms=timeline.ttft_ms(),
            mean_itl_ms=timeline.mean_itl_ms(tokens),
            e2e_s=timeline.e2e_ms() / 1000.0,
        )

    @staticmethod
    def _status_name(failure: BaseException | None, aborted: bool, context: Context) -> str:
        """The gRPC status code name a request ended with ("ABORTED": the engine aborted it)."""
        if failure is None:
            return "ABORTED" if aborted else OK_STATUS
        if isinstance(failure, asyncio.CancelledError | GeneratorExit):
            remaining_s = context.time_remaining()
            expired = remaining_s is not None and remaining_s <= 0
            return "DEADLINE_EXCEEDED" if expired else "CANCELLED"
        code = status_code_for(failure, ROUTER_STATUS_CODES)
        return code.name if code is not None else "UNKNOWN"

    @staticmethod
    def _failure_reason(error: BaseException, context: Context) -> str:
        if isinstance(error, asyncio.CancelledError | GeneratorExit):
            remaining_s = context.time_remaining()
            if remaining_s is not None and remaining_s <= 0:
                return "deadline exceeded"
            return "cancelled by the client"
        return str(error) or type(error).__name__

    def _report(
        self,
        request: ValidatedRequest,
        placement: Placement,
        reader: ChunkReader,
        timeline: _Timeline,
        arrival_wall_s: float,
        failure: BaseException | None,
        context: Context,
    ) -> None:
        """Queue the completion for telemetry (never blocks the stream)."""
        totals = reader.totals
        aborted = totals.finish_reason == "abort"
        if failure is not None:
            ok, reason = False, self._failure_reason(failure, context)
        elif aborted:
            ok, reason = False, f"aborted by the engine: {totals.abort_message or 'no reason'}"
        else:
            ok, reason = True, totals.finish_reason or "stop"
        tokens = totals.completion_tokens
        assert timeline.end_s is not None
        self._reporter.submit(
            Completion(
                request_id=request.request_id,
                prefill_id=placement.prefill_id,
                decode_id=placement.decode_id,
                input_tokens=totals.prompt_tokens or request.prompt_tokens,
                output_tokens=tokens,
                ttft_ms=timeline.ttft_ms(),
                mean_itl_ms=timeline.mean_itl_ms(tokens),
                ok=ok,
                reason=reason,
                arrival_s=arrival_wall_s,
                finished_at_s=arrival_wall_s + (timeline.end_s - timeline.arrival_s),
                slo=request.slo,
            )
        )
