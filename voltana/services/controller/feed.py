"""The controller's view of the cluster: the latest telemetry snapshot, kept fresh in the
background (one watch stream, or a poll per control interval) and reconnected on failure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from voltana.contract.instances import InstanceInfo
from voltana.contract.state import ClusterSnapshot
from voltana.errors import VoltanaError
from voltana.services.controller.settings import SnapshotMode
from voltana.services.telemetry.client import TelemetryClient

_LOG = logging.getLogger(__name__)

Clock = Callable[[], float]

_RECONNECT_MIN_S = 0.1
_RECONNECT_MAX_S = 2.0


@dataclass(frozen=True, slots=True)
class ClusterView:
    """One telemetry snapshot with each instance's registration (agent address, GPU index)."""

    snapshot: ClusterSnapshot
    endpoints: Mapping[str, InstanceInfo]
    received_at_s: float


class SnapshotFeed:
    """Holds the newest ClusterView.

    ``down_since_s`` is when telemetry became unreachable (the feed's start until the first
    snapshot), None while it answers. A watch stream that stays open counts as healthy even
    when quiet: telemetry only sends on change.
    """

    def __init__(
        self,
        client: TelemetryClient,
        *,
        mode: SnapshotMode,
        interval_ms: int,
        clock: Clock,
    ) -> None:
        self._client = client
        self._mode = mode
        self._interval_ms = interval_ms
        self._clock = clock
        self._latest: ClusterView | None = None
        self._down_since_s: float | None = clock()
        self._failures = 0

    @property
    def latest(self) -> ClusterView | None:
        return self._latest

    @property
    def down_since_s(self) -> float | None:
        return self._down_since_s

    def is_stale(self, now_s: float, stale_after_s: float) -> bool:
        """True when telemetry has been unreachable for ``stale_after_s`` or more."""
        return self._down_since_s is not None and now_s - self._down_since_s >= stale_after_s

    async def run(self) -> None:
        """Keep the view fresh until cancelled."""
        while True:
            try:
                if self._mode == "watch":
                    await self._watch()
                else:
                    await self._poll()
            except VoltanaError as error:
                self._mark_down(error)
            except Exception as error:  # a bug must not end the feed (control would go blind)
                _LOG.exception("telemetry snapshot feed failed")
                self._mark_down(VoltanaError(f"{type(error).__name__}: {error}"))
            await asyncio.sleep(min(_RECONNECT_MIN_S * 2**self._failures, _RECONNECT_MAX_S))

    async def _watch(self) -> None:
        stream = self._client.watch_with_endpoints(self._interval_ms)
        try:
            async for snapshot, endpoints in stream:
                self._accept(snapshot, endpoints)
        finally:
            await stream.aclose()
        # Telemetry ended the stream (it is stopping): treat it as unreachable and reconnect.
        self._mark_down(None)

    async def _poll(self) -> None:
        while True:
            snapshot, endpoints = await self._client.snapshot_with_endpoints()
            self._accept(snapshot, endpoints)
            await asyncio.sleep(self._interval_ms / 1000.0)

    def _accept(self, snapshot: ClusterSnapshot, endpoints: Mapping[str, InstanceInfo]) -> None:
        if self._down_since_s is not None and self._failures:
            _LOG.info("telemetry reachable again")
        self._down_since_s = None
        self._failures = 0
        self._latest = ClusterView(snapshot, endpoints, self._clock())

    def _mark_down(self, error: VoltanaError | None) -> None:
        if self._down_since_s is None:
            self._down_since_s = self._clock()
        if self._failures == 0:
            _LOG.warning("telemetry snapshot feed lost: %s", error or "stream ended")
        else:
            _LOG.debug("telemetry still unreachable: %s", error or "stream ended")
        self._failures = min(self._failures + 1, 16)
