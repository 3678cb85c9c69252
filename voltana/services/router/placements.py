"""What the router tells others about a placement, the moment it makes it.

- The controller decides the placed instances' clocks at once (NotifyPlacement) instead of at its
  next tick on a report that does not show the request yet. It stays the only writer of clocks.
  The notice is off the request's path: placements are queued, and one sender at a time tells
  the controller the router's current view of every instance placed on since its last notice,
  at most every ``interval_s`` (under load one notice covers many placements). Only a request placed on an instance that may
  be parked (idle, below its GPU's highest clock: ``may_be_parked``) waits for the controller's
  answer, given once the new clock is applied (or after ``timeout_s``, never later), so its
  prompt does not start behind the parked clock; a busy instance already runs at the clock its
  policy wants for work.
- Telemetry counts arrival rates at placement (ReportPlacements), batched every few tens of
  milliseconds; losing a batch only blurs a rate, so failures are logged, not retried. Each
  batch carries this router's in-flight share under its router id (active-active routers see
  each other's placements in the snapshot); it goes out while the share is not empty, and once
  more when it empties, so telemetry's copy never lags more than a batch.
- SLO classes: once requests with their own targets come, each notice also says what this
  router's requests on each instance it names are held to (control/serving.py), and a notice
  goes out when that changes (a class's last request left an instance) and every
  ``refresh_s`` for every instance serving anything, so the controller's copy, which lapses,
  stands while it is true.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate

from voltana.contract.state import InstanceState
from voltana.control import MAX_NOTIFIED_INSTANCES, SERVED_REFRESH_S, Served
from voltana.hardware import GPU_CATALOG
from voltana.lifecycle import cancel_and_wait
from voltana.rpc.channel import create_channel
from voltana.rpc.security import RpcSecurity
from voltana.services.telemetry.client import TelemetryClient
from voltana.services.telemetry.convert import slo_to_proto, state_to_proto
from voltana.services.telemetry.records import PendingPlacement, PlacementEvent
from voltana.v1 import controller_pb2, controller_pb2_grpc

_LOG = logging.getLogger(__name__)


def may_be_parked(state: InstanceState) -> bool:
    """Whether a request placed on ``state`` (as the router saw it before placing) could start
    behind a clock the controller is about to raise: the instance had nothing to do, so an
    energy policy may have lowered its clock, and it does not report its GPU's highest clock
    (an unknown GPU or clock counts as possibly parked)."""
    if not state.is_idle or state.inflight_requests:
        return False
    gpu = GPU_CATALOG.get(state.gpu_key.lower())
    if gpu is None or state.sm_clock_mhz <= 0:
        return True
    return state.sm_clock_mhz < gpu.max_sm_clock_mhz


class ControllerTrigger:
    """Tells the controller of placements; never fails a request.

    ``view_of`` gives the router's current view of an instance (in-flight requests included),
    taken when a notice is sent, so a coalesced notice shows every placement it covers.
    ``served_of`` gives what this router's requests on an instance are held to (None while it
    has seen no SLO class: notices then carry none) and ``serving_now`` every instance serving
    one of its requests.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float,
        security: RpcSecurity,
        view_of: Callable[[str], InstanceState | None],
        interval_s: float = 0.0,
        router_id: str = "",
        served_of: Callable[[str], Served | None] | None = None,
        serving_now: Callable[[], Iterable[str]] = tuple,
        refresh_s: float = SERVED_REFRESH_S,
    ) -> None:
        """``interval_s``: the least time between two queued notices."""
        self._address = address
        self._router_id = router_id
        self._served_of = served_of
        self._serving_now = serving_now
        self._refresh_s = refresh_s
        # Instances whose served targets changed since the last notice (no state sent).
        self._served_pending: dict[str, None] = {}
        self._timeout_s = timeout_s
        self._interval_s = interval_s
        self._view_of = view_of
        # A notice (and the clock change it asks for) belongs to the trace of the request it is
        # for, the first one it covers when it covers several: its trace context goes in the
        # call's metadata by hand, which costs far less than a client interceptor per call.
        self._channel = create_channel(address, security=security, traced=False)
        self._stub = controller_pb2_grpc.ControllerServiceStub(self._channel)
        # Instances placed on since the last queued notice (a dict: insertion order, no repeats)
        # and the trace context of the first request among those placements.
        self._pending: dict[str, None] = {}
        self._pending_trace: otel_context.Context | None = None
        self._has_work = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.sent = 0
        self.failed = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="router-placement-notices")

    def notify(
        self, instance_ids: Iterable[str], trace_context: otel_context.Context | None = None
    ) -> None:
        """Queue a notice for these instances; never blocks."""
        if not self._pending:
            self._pending_trace = trace_context
        for instance_id in instance_ids:
            self._pending[instance_id] = None
        self._has_work.set()

    def serving_changed(self, instance_ids: Iterable[str]) -> None:
        """What this router's requests on these instances are held to changed; tell the
        controller with the next notice (never blocks)."""
        for instance_id in instance_ids:
            self._served_pending[instance_id] = None
        self._has_work.set()

    async def notify_and_wait(
        self, instance_ids: Sequence[str], trace_context: otel_context.Context | None = None
    ) -> None:
        """A notice for these instances now; returns once the controller applied any new
        clock (or after the timeout)."""
        for instance_id in instance_ids:
            self._pending.pop(instance_id, None)  # this notice shows them as they are now
        await self._send(instance_ids, trace_context)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        refresh_at_s = loop.time() + self._refresh_s
        while True:
            timeout_s = None if self._served_of is None else refresh_at_s - loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._has_work.wait(), timeout_s)
            self._has_work.clear()
            if self._served_of is not None and loop.time() >= refresh_at_s:
                # The controller's copy lapses: say again what every serving instance serves.
                self.serving_changed(self._serving_now())
                refresh_at_s = loop.time() + self._refresh_s
            instance_ids, self._pending = list(self._pending), {}
            served_ids, self._served_pending = list(self._served_pending), {}
            if instance_ids or served_ids:
                await self._send(instance_ids, self._pending_trace, served_ids)
                # What is placed meanwhile goes in the next notice: under load, one per interval.
                await asyncio.sleep(self._interval_s)

    async def _send(
        self,
        instance_ids: Sequence[str],
        trace_context: otel_context.Context | None,
        served_ids: Iterable[str] = (),
    ) -> None:
        states = [s for s in map(self._view_of, instance_ids) if s is not None]
        serving = []
        if self._served_of is not None:
            for instance_id in dict.fromkeys([*instance_ids, *served_ids]):
                served = self._served_of(instance_id)
                if served is not None:
                    serving.append(_served_to_proto(instance_id, served))
        if not states and not serving:
            return
        # A notice names at most MAX_NOTIFIED_INSTANCES of each (a cluster's worth at once).
        step = MAX_NOTIFIED_INSTANCES
        for start in range(0, max(len(states), len(serving)), step):
            request = controller_pb2.NotifyPlacementRequest(
                instances=[state_to_proto(state) for state in states[start : start + step]],
                router_id=self._router_id if serving else "",
                serving=serving[start : start + step],
            )
            if not await self._call(request, trace_context):
                return

    async def _call(
        self,
        request: controller_pb2.NotifyPlacementRequest,
        trace_context: otel_context.Context | None,
    ) -> bool:
        carrier: dict[str, str] = {}
        if trace_context is not None:
            propagate.inject(carrier, context=trace_context)
        try:
            await self._stub.NotifyPlacement(
                request, timeout=self._timeout_s, metadata=tuple(carrier.items())
            )
        except grpc.aio.AioRpcError as error:
            self.failed += 1
            if not self._failing:  # once per outage: a slow controller must not spam logs
                _LOG.warning(
                    "controller at %s did not take a placement (%s: %s); dispatching anyway",
                    self._address,
                    error.code().name,
                    error.details(),
                )
            self._failing = True
            return False
        self.sent += 1
        if self._failing:
            _LOG.info("controller at %s takes placements again", self._address)
        self._failing = False
        return True

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait([task])
        await self._channel.close()


def _served_to_proto(instance_id: str, served: Served) -> controller_pb2.ServedSlo:
    entry = controller_pb2.ServedSlo(instance_id=instance_id, cluster_slo=served.cluster_slo)
    if served.own_slo is not None:
        entry.own_slo.CopyFrom(slo_to_proto(served.own_slo))
    return entry


class PlacementReporter:
    """Sends placements to telemetry in batches, every ``interval_s``, with ``share()`` (this
    router's pending placements) under ``router_id``."""

    def __init__(
        self,
        telemetry: TelemetryClient,
        *,
        interval_s: float,
        max_pending: int = 10_000,
        router_id: str = "",
        share: Callable[[], list[PendingPlacement]] = list,
    ) -> None:
        self._telemetry = telemetry
        self._router_id = router_id
        self._share = share
        self._shared_any = False
        self._interval_s = interval_s
        self._max_pending = max_pending
        self._pending: list[PlacementEvent] = []
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.sent = 0
        self.dropped = 0

    def add(self, event: PlacementEvent) -> None:
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            return
        self._pending.append(event)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="router-placement-reporter")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        share = self._share() if self._router_id else []
        if not batch and not share and not self._shared_any:
            return
        self._shared_any = bool(share)
        try:
            self.sent += await self._telemetry.report_placements(
                batch, router_id=self._router_id, pending=share
            )
        except Exception as error:  # a blurred arrival rate, not a lost request
            self.dropped += len(batch)
            if not self._failing:
                _LOG.warning("telemetry did not take %d placements: %s", len(batch), error)
            self._failing = True
            return
        self._failing = False

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait([task])
        with contextlib.suppress(Exception):
            await self.flush()
