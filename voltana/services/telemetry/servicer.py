"""TelemetryService gRPC handlers: validate, convert, store; snapshots and aggregates out.

Bad values in a registration, completion or request (negative counts, unknown phase) end the
call with INVALID_ARGUMENT via the InvalidTelemetryError → status mapping of voltana.rpc.
Sample streams are judged sample by sample, so one stray sample does not cut a node agent's or
engine's long-lived stream: a sample that cannot be used (a load gauge or GPU reading that
cannot be true, unregistered instance, older than the last one, stamped in the future) is
counted as rejected and the stream goes on; a measured latency that cannot be true (a negative
recent ITL) is dropped from its sample, which is stored without it. Only a malformed id ends a
stream (INVALID_ARGUMENT; the samples before it stay stored).

Every write (registration and all reports) is privileged (TELEMETRY_PRIVILEGED_METHODS: the
control-plane token is checked by voltana.rpc before a handler runs): policies steer on this
state, so a stranger must not be able to register an engine (and receive prompts), drop one,
or feed made-up load. Reads stay open; GetAggregates, whose cost grows with the cluster, is
rate-limited per caller host (``aggregates_rate_per_s``; RESOURCE_EXHAUSTED beyond).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc.aio

from voltana.contract.instances import GpuRef
from voltana.contract.state import slo_problem
from voltana.errors import InvalidArgumentError
from voltana.rpc.limits import MAX_TEXT_CHARS, check_address, check_id, check_ids
from voltana.rpc.names import TELEMETRY_SERVICE, method_names
from voltana.rpc.rate_limit import CallRateLimiter
from voltana.rpc.tracing import peer_host
from voltana.services.telemetry.arrivals import ArrivalRates
from voltana.services.telemetry.books import CompletionBooks, build_books
from voltana.services.telemetry.cluster_slo import ClusterSloKeeper
from voltana.services.telemetry.completion_index import DEFAULT_MAX_WINDOWS
from voltana.services.telemetry.convert import (
    completion_from_proto,
    info_from_register_request,
    phase_filter_from_proto,
    slo_from_proto,
    slo_to_proto,
    snapshot_to_proto,
    state_from_sample,
    window_report_to_proto,
)
from voltana.services.telemetry.errors import (
    InvalidTelemetryError,
    RateLimitedError,
    TooManyInstancesError,
    UnknownInstanceError,
)
from voltana.services.telemetry.gpu_groups import GpuGroups, MemberReading
from voltana.services.telemetry.records import Completion, GpuReading, PendingPlacement, RouterShare
from voltana.services.telemetry.registry import InstanceRegistry
from voltana.services.telemetry.router_shares import RouterShares
from voltana.services.telemetry.settings import TelemetrySettings
from voltana.services.telemetry.snapshots import ClusterView, SnapshotCache
from voltana.services.telemetry.store import TelemetryStore
from voltana.services.telemetry.validate import (
    drop_impossible_measurements,
    validate_gpu_sample,
    validate_instance_info,
    validate_instance_state,
    validate_window,
)
from voltana.text import truncate
from voltana.v1 import common_pb2, telemetry_pb2, telemetry_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
SampleT = TypeVar("SampleT")

_LOG = logging.getLogger(__name__)

# What a GetAggregates call for a window length not asked for lately costs against the
# caller's rate (in calls): the store then sums that whole window once.
NEW_WINDOW_COST = 10.0

# Writes: they need the control-plane token.
TELEMETRY_PRIVILEGED_METHODS = method_names(
    TELEMETRY_SERVICE,
    "RegisterInstance",
    "UnregisterInstance",
    "ReportInstanceSamples",
    "ReportGpuSamples",
    "ReportCompletion",
    "ReportCompletions",
    "ReportPlacements",
    "SetClusterSlo",
)


@dataclass
class _Rejection:
    """Why a sample was not stored; ``unknown_instance`` names an instance to re-register."""

    reason: str
    unknown_instance: str = ""


@dataclass(frozen=True)
class _Stored:
    """A sample stored without the fields named in ``dropped`` (why each was dropped)."""

    dropped: tuple[str, ...]


@dataclass
class _Tally:
    accepted: int = 0
    rejected: int = 0
    dropped_fields: int = 0
    first_rejection_reason: str = ""
    unknown_instance_ids: dict[str, None] = field(default_factory=dict)

    def count(self, outcome: _Rejection | _Stored | None) -> None:
        if isinstance(outcome, _Rejection):
            self.rejected += 1
            self.first_rejection_reason = self.first_rejection_reason or outcome.reason
            if outcome.unknown_instance:
                self.unknown_instance_ids[outcome.unknown_instance] = None
            return
        self.accepted += 1
        if isinstance(outcome, _Stored) and outcome.dropped:
            self.dropped_fields += len(outcome.dropped)
            self.first_rejection_reason = self.first_rejection_reason or outcome.dropped[0]

    def response(self) -> telemetry_pb2.ReportSamplesResponse:
        return telemetry_pb2.ReportSamplesResponse(
            accepted=self.accepted,
            rejected=self.rejected,
            first_rejection_reason=self.first_rejection_reason,
            unknown_instance_ids=list(self.unknown_instance_ids),
            dropped_fields=self.dropped_fields,
        )


def _unknown(instance_id: str) -> _Rejection:
    return _Rejection(f"instance {instance_id!r} is not registered", instance_id)


class TelemetryServicer(telemetry_pb2_grpc.TelemetryServiceServicer):
    def __init__(
        self,
        store: TelemetryStore,
        settings: TelemetrySettings,
        *,
        books: CompletionBooks | None = None,
        cluster_slo: ClusterSloKeeper | None = None,
    ) -> None:
        """``books`` stores completions (default: on ``store``, journaled per ``settings``);
        ``cluster_slo`` keeps the cluster SLO (default: on ``store``, seeded with
        ``settings.slo``, loaded by ``ClusterSloKeeper.load``)."""
        self._store = store
        self._settings = settings
        self._books = books if books is not None else build_books(store, settings)
        self._cluster_slo = (
            cluster_slo if cluster_slo is not None else ClusterSloKeeper(store, settings.slo)
        )
        self._registry = InstanceRegistry(store, refresh_s=settings.registry_refresh_s)
        self._arrivals = ArrivalRates(settings.arrival_rate_window_s)
        self._router_shares = RouterShares(
            ttl_s=settings.router_share_ttl_s,
            arrival_window_s=settings.arrival_rate_window_s,
            clock=store.clock,
        )
        self._snapshots = SnapshotCache(store)
        # Newest sample time accepted per instance, to drop samples that arrive late.
        self._last_load_s: dict[str, float] = {}
        self._last_gpu_s: dict[str, float] = {}
        self._gpu_groups = GpuGroups()
        self._closing = asyncio.Event()
        self._aggregates_limit = (
            CallRateLimiter(settings.aggregates_rate_per_s, settings.aggregates_burst)
            if settings.aggregates_rate_per_s > 0
            else None
        )
        # Window lengths asked for lately, as the stores keep them (completion_index.py).
        self._recent_windows: OrderedDict[float, None] = OrderedDict()

    def close(self) -> None:
        """End every watch stream (so the server can stop without waiting for them)."""
        self._closing.set()

    # Registration.

    async def RegisterInstance(
        self, request: telemetry_pb2.RegisterInstanceRequest, context: Context
    ) -> telemetry_pb2.RegisterInstanceResponse:
        check_id(request.instance_id, "instance_id", error=InvalidTelemetryError)
        info = info_from_register_request(request)
        validate_instance_info(info)  # before the count, which may read the store
        max_instances = self._settings.max_instances
        if await self._registry.count_without(info.instance_id) >= max_instances:
            raise TooManyInstancesError(
                f"telemetry already holds {max_instances} instances, its maximum "
                "(max_instances); unregister one first"
            )
        created = await self._registry.register(info)
        if created:
            # A new process behind the id (restarted engine) may stamp from another origin.
            self._last_load_s.pop(request.instance_id, None)
            self._last_gpu_s.pop(request.instance_id, None)
            self._gpu_groups.forget(request.instance_id)
        return telemetry_pb2.RegisterInstanceResponse(created=created)

    async def UnregisterInstance(
        self, request: telemetry_pb2.UnregisterInstanceRequest, context: Context
    ) -> telemetry_pb2.UnregisterInstanceResponse:
        instance_id = request.instance_id
        check_id(instance_id, "instance_id", error=InvalidTelemetryError)
        if not await self.forget_instance(instance_id):
            raise UnknownInstanceError(f"instance {instance_id!r} is not registered")
        return telemetry_pb2.UnregisterInstanceResponse()

    async def forget_instance(self, instance_id: str) -> bool:
        """Unregister an instance and drop what this process remembers of it (also used when
        a silent instance expires); False when it was not registered."""
        registered = await self._registry.unregister(instance_id)
        self._arrivals.forget(instance_id)
        self._router_shares.forget(instance_id)
        self._last_load_s.pop(instance_id, None)
        self._last_gpu_s.pop(instance_id, None)
        self._gpu_groups.forget(instance_id)
        return registered

    # Reports.

    async def _consume(
        self,
        samples: AsyncIterable[SampleT],
        accept: Callable[[SampleT], Awaitable[_Rejection | _Stored | None]],
    ) -> telemetry_pb2.ReportSamplesResponse:
        """``accept`` raises InvalidTelemetryError only for a malformed sample (a bad id):
        that ends the stream; anything else it cannot use it returns as a rejection."""
        tally = _Tally()
        async for sample in samples:
            try:
                outcome = await accept(sample)
            except InvalidTelemetryError as error:
                raise InvalidTelemetryError(
                    f"sample {tally.accepted + tally.rejected + 1} of the stream is invalid: "
                    f"{error} ({tally.accepted} earlier samples were stored)"
                ) from error
            tally.count(outcome)
        return tally.response()

    @staticmethod
    def _is_late(last_s: dict[str, float], instance_id: str, ts_s: float) -> bool:
        """Samples without a time (0) are stamped on arrival, so they are never late."""
        return ts_s > 0 and ts_s < last_s.get(instance_id, 0.0)

    def _future_problem(self, what: str, ts_s: float) -> _Rejection | None:
        """Why ``ts_s`` is too far ahead of telemetry's clock to accept, or None."""
        ahead_s = ts_s - self._store.clock()
        if ahead_s > self._settings.max_future_skew_s:
            return _Rejection(
                f"{what} is stamped {ahead_s:.3g} s ahead of telemetry's clock (at most "
                f"{self._settings.max_future_skew_s:g} s allowed); check the reporter's clock"
            )
        return None

    async def _accept_instance_sample(
        self, sample: telemetry_pb2.InstanceSample
    ) -> _Rejection | _Stored | None:
        instance_id = sample.instance_id
        check_id(instance_id, "instance_id", error=InvalidTelemetryError)
        info = await self._registry.get(instance_id)
        if info is None:
            return _unknown(instance_id)
        future = self._future_problem(f"sample of {instance_id!r}", sample.observed_at_s)
        if future is not None:
            return future
        if self._is_late(self._last_load_s, instance_id, sample.observed_at_s):
            return _Rejection(
                f"sample of {instance_id!r} at {sample.observed_at_s} is older than the last"
            )
        state, dropped = drop_impossible_measurements(state_from_sample(sample, info))
        try:
            validate_instance_state(state)
        except InvalidTelemetryError as error:  # a gauge that cannot be true: not this sample
            return _Rejection(str(error))
        await self._store.put_instance_state(state)
        if sample.observed_at_s > 0:
            self._last_load_s[instance_id] = sample.observed_at_s
        return _Stored(dropped)

    async def _accept_gpu_sample(self, sample: common_pb2.GpuSample) -> _Rejection | _Stored | None:
        check_id(sample.instance_id, "instance_id", error=InvalidTelemetryError, required=False)
        check_address(sample.agent_address, "agent_address", error=InvalidTelemetryError)
        if sample.instance_id:
            info = await self._registry.get(sample.instance_id)
            if info is None:
                return _unknown(sample.instance_id)
        else:
            info = await self._registry.on_gpu(sample.agent_address, sample.gpu_index)
            if info is None:
                return _Rejection(
                    f"no registered instance on GPU {sample.gpu_index} "
                    f"of agent {sample.agent_address!r}"
                )
        instance_id = info.instance_id
        future = self._future_problem(f"GPU sample of {instance_id!r}", sample.timestamp_s)
        if future is not None:
            return future
        reading = GpuReading(
            instance_id, sample.timestamp_s, sample.sm_clock_mhz, sample.power_w, sample.energy_j
        )
        try:
            validate_gpu_sample(reading)
        except InvalidTelemetryError as error:  # a reading that cannot be true: not this one
            return _Rejection(str(error))
        # A tensor-parallel instance's GPUs report one by one: one summed reading for it.
        combined = self._gpu_groups.combine(
            info,
            GpuRef(sample.agent_address, sample.gpu_index),
            MemberReading(sample.timestamp_s, sample.sm_clock_mhz, sample.power_w, sample.energy_j),
        )
        if isinstance(combined, str):
            return _Rejection(combined)
        if combined is None:  # the group's other GPUs have not reported yet
            return None
        if self._is_late(self._last_gpu_s, instance_id, combined.ts_s):
            return _Rejection(
                f"GPU sample of {instance_id!r} at {combined.ts_s} is older than the last"
            )
        await self._store.put_gpu_sample(
            instance_id, combined.ts_s, combined.sm_clock_mhz, combined.power_w, combined.energy_j
        )
        self._last_gpu_s[instance_id] = combined.ts_s
        return None

    async def ReportInstanceSamples(
        self, request_iterator: AsyncIterable[telemetry_pb2.InstanceSample], context: Context
    ) -> telemetry_pb2.ReportSamplesResponse:
        return await self._consume(request_iterator, self._accept_instance_sample)

    async def ReportGpuSamples(
        self, request_iterator: AsyncIterable[common_pb2.GpuSample], context: Context
    ) -> telemetry_pb2.ReportSamplesResponse:
        return await self._consume(request_iterator, self._accept_gpu_sample)

    def _checked_completion(self, record: telemetry_pb2.CompletionRecord) -> Completion:
        """The record as stored; InvalidTelemetryError when it cannot be."""
        completion = completion_from_proto(record)
        # The reason is free text (often an engine's error): cut, not refused, so the record
        # still counts.
        completion = dataclasses.replace(
            completion, reason=truncate(completion.reason, MAX_TEXT_CHARS)
        )
        for what, ts_s in (
            ("arrival_s", completion.arrival_s),
            ("finished_at_s", completion.finished_at_s),
        ):
            future = self._future_problem(f"the completion's {what}", ts_s)
            if future is not None:
                raise InvalidTelemetryError(future)
        return completion

    async def ReportCompletion(
        self, request: telemetry_pb2.CompletionRecord, context: Context
    ) -> telemetry_pb2.ReportCompletionResponse:
        await self._books.record(self._checked_completion(request))
        return telemetry_pb2.ReportCompletionResponse()

    async def ReportCompletions(
        self, request: telemetry_pb2.ReportCompletionsRequest, context: Context
    ) -> telemetry_pb2.ReportCompletionsResponse:
        response = telemetry_pb2.ReportCompletionsResponse()
        for index, record in enumerate(request.records):
            try:
                await self._books.record(self._checked_completion(record))
            except InvalidArgumentError as error:
                response.rejected.add(index=index, reason=str(error))
                continue
            response.accepted += 1
        return response

    async def ReportPlacements(
        self, request: telemetry_pb2.ReportPlacementsRequest, context: Context
    ) -> telemetry_pb2.ReportPlacementsResponse:
        now_s = self._store.clock()
        accepted = 0
        router_id = request.router_id
        if router_id:
            check_id(router_id, "router_id", error=InvalidTelemetryError)
            self._router_shares.report(router_id, self._pending_placements(request.pending))
        elif request.pending:
            raise InvalidTelemetryError("pending placements need the router_id they belong to")
        for placement in request.placements:
            for instance_id in (placement.prefill_instance_id, placement.decode_instance_id):
                check_id(instance_id, "instance_id", error=InvalidTelemetryError)
            future = self._future_problem("a placement", placement.placed_at_s)
            if future is not None:
                raise InvalidTelemetryError(future)
            if placement.input_tokens < 0:
                raise InvalidTelemetryError(
                    f"input_tokens must be >= 0, got {placement.input_tokens}"
                )
            placed_at_s = placement.placed_at_s or now_s
            if placed_at_s < now_s - self._settings.arrival_rate_window_s:
                continue  # already outside every window (a batch held up somewhere)
            # A colocated placement names its instance twice: one arrival there.
            placed_on = dict.fromkeys((placement.prefill_instance_id, placement.decode_instance_id))
            for instance_id in placed_on:
                self._arrivals.record(instance_id, placed_at_s, placement.input_tokens)
                if router_id:
                    self._router_shares.arrival(
                        router_id, instance_id, placed_at_s, placement.input_tokens
                    )
            accepted += 1
        return telemetry_pb2.ReportPlacementsResponse(accepted=accepted)

    def _pending_placements(
        self, messages: Iterable[telemetry_pb2.PendingPlacement]
    ) -> list[PendingPlacement]:
        pending = []
        for message in messages:
            check_id(message.instance_id, "instance_id", error=InvalidTelemetryError)
            if message.tokens < 0:
                raise InvalidTelemetryError(f"tokens must be >= 0, got {message.tokens}")
            visible_from_s = message.visible_from_s
            if not math.isfinite(visible_from_s) or visible_from_s < 0:
                raise InvalidTelemetryError(
                    f"visible_from_s must be a finite time >= 0, got {visible_from_s}"
                )
            pending.append(
                PendingPlacement(message.instance_id, message.tokens, visible_from_s or None)
            )
        return pending

    # Snapshots.

    async def _selected_view(self, phase: int, instance_ids: list[str]) -> ClusterView:
        view = await self._snapshots.read()
        return view.select(phase_filter_from_proto(phase), instance_ids)

    def _to_proto(self, view: ClusterView) -> common_pb2.ClusterSnapshot:
        now_s = self._store.clock()
        states = {}
        shares: list[RouterShare] = []
        for instance_id, state in view.states.items():
            rate_rps, tokens_per_s = self._arrivals.rates(instance_id, now_s)
            # Listed apart, not added to the state: the controller observes what engines
            # report (as offline); routers add the shares to their own ledgers.
            shares += self._router_shares.shares(instance_id, state.observed_at_s, now_s)
            states[instance_id] = dataclasses.replace(
                state, arrival_rate_rps=rate_rps, arrival_tokens_per_s=tokens_per_s
            )
        return snapshot_to_proto(states, view.infos, now_s, shares, self._cluster_slo.current)

    async def GetSnapshot(
        self, request: telemetry_pb2.GetSnapshotRequest, context: Context
    ) -> common_pb2.ClusterSnapshot:
        check_ids(request.instance_ids, "instance_ids", error=InvalidTelemetryError)
        view = await self._selected_view(request.phase, list(request.instance_ids))
        return self._to_proto(view)

    def _watch_interval_s(self, interval_ms: int) -> float:
        if interval_ms < 0:
            raise InvalidTelemetryError(f"interval_ms must be >= 0, got {interval_ms}")
        interval_ms = interval_ms or self._settings.watch_default_interval_ms
        return max(interval_ms, self._settings.watch_min_interval_ms) / 1000.0

    async def _closing_within(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), max(timeout_s, 0.0))
        return self._closing.is_set()

    async def _change_or_closing(self, seen: tuple[int, int], timeout_s: float) -> None:
        """Until the store or a router's share changes (``seen``: both versions), or the
        service closes, or ``timeout_s``."""
        timeout_s = max(timeout_s, 0.0)
        waits = {
            asyncio.ensure_future(self._store.changes.wait_for_change(seen[0], timeout_s)),
            asyncio.ensure_future(self._router_shares.changes.wait_for_change(seen[1], timeout_s)),
            asyncio.ensure_future(self._closing.wait()),
        }
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def _versions(self) -> tuple[int, int]:
        return self._store.changes.version, self._router_shares.changes.version

    async def WatchSnapshots(
        self, request: telemetry_pb2.WatchSnapshotsRequest, context: Context
    ) -> AsyncIterator[common_pb2.ClusterSnapshot]:
        """A snapshot now; then one after each change, at most every interval and at least
        every ``watch_idle_resend_s`` (so ``now_s`` keeps moving on a quiet cluster)."""
        interval_s = self._watch_interval_s(request.interval_ms)
        check_ids(request.instance_ids, "instance_ids", error=InvalidTelemetryError)
        idle_resend_s = self._settings.watch_idle_resend_s
        instance_ids = list(request.instance_ids)
        loop = asyncio.get_running_loop()
        last_sent: tuple[list[Any], list[Any], Any] | None = None
        last_sent_at = 0.0
        while not self._closing.is_set():
            versions = self._versions()
            snapshot = self._to_proto(await self._selected_view(request.phase, instance_ids))
            shown = (
                list(snapshot.instances),
                list(snapshot.router_shares),
                snapshot.cluster_slo,
            )
            resend_due = loop.time() - last_sent_at >= idle_resend_s
            if last_sent is None or shown != last_sent or resend_due:
                yield snapshot
                last_sent, last_sent_at = shown, loop.time()
                if await self._closing_within(interval_s):
                    return
            await self._change_or_closing(versions, idle_resend_s - (loop.time() - last_sent_at))

    # Aggregates.

    async def GetAggregates(
        self, request: telemetry_pb2.GetAggregatesRequest, context: Context
    ) -> telemetry_pb2.GetAggregatesResponse:
        limit = self._aggregates_limit
        if limit is not None:
            # A window length not asked for lately makes the store sum that whole window once
            # (later calls only move it): it costs as much as NEW_WINDOW_COST calls.
            window_key = request.window_s or self._settings.window_s
            cost = 1.0 if window_key in self._recent_windows else NEW_WINDOW_COST
            self._recent_windows[window_key] = None
            self._recent_windows.move_to_end(window_key)
            while len(self._recent_windows) > DEFAULT_MAX_WINDOWS:
                self._recent_windows.popitem(last=False)
            wait_s = limit.take(peer_host(context.peer()) or context.peer(), cost)
            if wait_s > 0:
                raise RateLimitedError(
                    f"GetAggregates is limited to {limit.rate_per_s:g} calls a second per "
                    f"client (burst {limit.burst}); retry in {wait_s:.2f} s"
                )
        window_s = request.window_s or self._settings.window_s
        validate_window(window_s)
        check_ids(request.instance_ids, "instance_ids", error=InvalidTelemetryError)
        report = await self._store.window_report(
            list(request.instance_ids) or None, window_s, self._cluster_slo.current
        )
        view = await self._snapshots.read()
        phases = {instance_id: state.phase for instance_id, state in view.states.items()}
        return window_report_to_proto(report, phases)

    # The cluster SLO.

    async def SetClusterSlo(
        self, request: telemetry_pb2.SetClusterSloRequest, context: Context
    ) -> telemetry_pb2.SetClusterSloResponse:
        if not request.HasField("slo"):
            raise InvalidTelemetryError("SetClusterSlo needs an slo with ttft_ms and itl_ms")
        slo = slo_from_proto(request.slo)
        problem = slo_problem(slo)
        if problem is not None:
            raise InvalidTelemetryError(f"invalid SLO: {problem}")
        previous = await self._cluster_slo.set(slo)
        _LOG.info("cluster SLO set: TTFT %g ms, ITL %g ms", slo.ttft_ms, slo.itl_ms)
        return telemetry_pb2.SetClusterSloResponse(
            previous_slo=slo_to_proto(previous), slo=slo_to_proto(slo), set_at_s=self._store.clock()
        )
