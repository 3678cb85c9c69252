"""What the router tells others about a placement, the moment it makes it.

- The controller decides the placed instances' clocks at once (NotifyPlacement) instead of at its
  next tick on a report that does not show the request yet, and answers once any new clock is
  applied: the router dispatches after that answer (or after ``timeout_s``, never later), so a
  prompt does not start behind a parked clock. The controller stays the only writer of clocks.
- Telemetry counts arrival rates at placement (ReportPlacements), batched every few tens of
  milliseconds; losing a batch only blurs a rate, so failures are logged, not retried. Each
  batch carries this router's in-flight share under its router id (active-active routers see
  each other's placements in the snapshot); it goes out while the share is not empty, and once
  more when it empties, so telemetry's copy never lags more than a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

import grpc

from voltana.lifecycle import cancel_and_wait
from voltana.policy.state import InstanceState
from voltana.rpc.channel import create_channel
from voltana.rpc.security import RpcSecurity
from voltana.services.telemetry.client import TelemetryClient
from voltana.services.telemetry.convert import state_to_proto
from voltana.services.telemetry.records import PendingPlacement, PlacementEvent
from voltana.v1 import controller_pb2, controller_pb2_grpc

_LOG = logging.getLogger(__name__)


class ControllerTrigger:
    """Asks the controller to decide for just-placed instances; never fails a request."""

    def __init__(self, address: str, *, timeout_s: float, security: RpcSecurity) -> None:
        self._address = address
        self._timeout_s = timeout_s
        # Traced: the notice is on the request's critical path, so it belongs in its trace.
        self._channel = create_channel(address, security=security)
        self._stub = controller_pb2_grpc.ControllerServiceStub(self._channel)
        self._failing = False
        self.sent = 0
        self.failed = 0

    async def notify(self, states: Sequence[InstanceState]) -> None:
        request = controller_pb2.NotifyPlacementRequest(
            instances=[state_to_proto(state) for state in states]
        )
        try:
            await self._stub.NotifyPlacement(request, timeout=self._timeout_s)
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
            return
        self.sent += 1
        if self._failing:
            _LOG.info("controller at %s takes placements again", self._address)
        self._failing = False

    async def close(self) -> None:
        await self._channel.close()


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
