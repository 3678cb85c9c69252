"""The interface every telemetry store offers, and the change signal watchers wait on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Mapping
from typing import Protocol

from voltana.contract.instances import InstanceInfo
from voltana.contract.state import ClusterSnapshot, InstanceState, Phase, SloTarget
from voltana.services.telemetry.errors import InvalidTelemetryError
from voltana.services.telemetry.records import (
    Aggregates,
    Completion,
    Metric,
    SeriesPoint,
    WindowReport,
)

Clock = Callable[[], float]

DEFAULT_SERIES_CAP = 10_000
DEFAULT_COMPLETIONS_CAP = 100_000
DEFAULT_SLO = SloTarget()


class ChangeNotifier:
    """A version number that moves on every write that changes what a snapshot would show.

    Watchers remember the version they last sent and sleep until it moves, so a quiet cluster
    costs nothing and a busy one is read once per change, not once per watcher poll.
    """

    def __init__(self) -> None:
        self._version = 0
        self._event = asyncio.Event()

    @property
    def version(self) -> int:
        return self._version

    def changed(self) -> None:
        self._version += 1
        # Wake everyone waiting on the old event; later waiters get a fresh one.
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for_change(self, seen_version: int, timeout_s: float | None = None) -> int:
        """Return the current version once it differs from ``seen_version`` (or on timeout)."""
        if self._version != seen_version:
            return self._version
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)
        return self._version


class TelemetryStore(Protocol):
    """Latest state per instance, capped time series and request completions.

    Every write is validated (``InvalidTelemetryError``) before anything is stored. Writes that
    change what a snapshot shows (registration, load reports, GPU readings) move ``changes``.
    """

    @property
    def changes(self) -> ChangeNotifier: ...

    @property
    def clock(self) -> Clock: ...

    async def register_instance(self, info: InstanceInfo) -> bool:
        """Record (or replace) where an instance is reached; True when it was new.

        A registered instance shows in snapshots even before its first load report.
        """
        ...

    async def unregister_instance(self, instance_id: str) -> bool:
        """Forget an instance's registration, state and series (completions stay).

        Returns whether it was registered.
        """
        ...

    async def put_instance_state(self, state: InstanceState) -> None:
        """Replace the instance's latest load report and append its load series points.

        Times left at 0 are stamped with the store's clock.
        """
        ...

    async def put_gpu_sample(
        self,
        instance_id: str,
        ts_s: float,
        sm_clock_mhz: int,
        power_w: float,
        energy_j: float,
    ) -> None:
        """Record a GPU reading; it overrides the clock/power/energy of the instance's state.

        A reading with ``ts_s`` 0 is stamped with the store's clock.
        """
        ...

    async def record_completion(self, completion: Completion) -> None:
        """Keep one request's outcome; the same record sent twice (a retried report) is kept
        once."""
        ...

    async def last_seen(self) -> dict[str, float]:
        """When each registered instance was last heard of (registered or reported load), on
        the store's clock: what expiry of silent instances goes by."""
        ...

    async def cluster_slo(self) -> SloTarget | None:
        """The cluster SLO stored (None: none yet, or what is stored cannot be an SLO)."""
        ...

    async def put_cluster_slo(self, slo: SloTarget) -> None:
        """Store the cluster SLO (replacing whatever is there)."""
        ...

    async def ping(self) -> None:
        """Raise TelemetryStoreError unless the store can be used now."""
        ...

    async def epoch(self) -> str:
        """Names the store's current incarnation (TelemetryStoreError when unreachable): it
        changes when the store may have lost writes it acknowledged (a Redis restart), so
        telemetry writes its recent completions again (voltana.services.telemetry.books)."""
        ...

    async def latest_states(self) -> dict[str, InstanceState]:
        """Every instance whose phase is known, ordered by instance id."""
        ...

    async def instance_infos(self) -> dict[str, InstanceInfo]:
        """Every registered instance, ordered by instance id."""
        ...

    async def series(
        self, instance_id: str, metric: Metric | str, since_s: float = 0.0
    ) -> list[SeriesPoint]:
        """Points with ``ts_s >= since_s`` in the order they arrived (at most the series cap)."""
        ...

    async def window_report(
        self, instance_ids: Collection[str] | None, window_s: float, slo: SloTarget = DEFAULT_SLO
    ) -> WindowReport:
        """Aggregates of each selected instance (None = every known one) and of the selection.

        With None the cluster aggregate counts every request, also those of forgotten
        instances. ``slo`` judges requests that carry no SLO of their own.
        """
        ...

    async def aggregates(
        self, instance_id: str | None, window_s: float, slo: SloTarget = DEFAULT_SLO
    ) -> Aggregates:
        """Aggregates of one instance (or the whole cluster for None) over the last window."""
        ...

    async def close(self) -> None: ...


def parse_metric(metric: Metric | str) -> Metric:
    try:
        return Metric(metric)
    except ValueError:
        valid = ", ".join(m.value for m in Metric)
        raise InvalidTelemetryError(f"unknown metric {metric!r}; valid: {valid}") from None


def build_snapshot(states: Mapping[str, InstanceState], now_s: float) -> ClusterSnapshot:
    return ClusterSnapshot(
        now_s=now_s,
        prefill={i: s for i, s in states.items() if s.phase is Phase.PREFILL},
        decode={i: s for i, s in states.items() if s.phase is Phase.DECODE},
        unified={i: s for i, s in states.items() if s.phase is Phase.UNIFIED},
    )


async def snapshot_of(store: TelemetryStore) -> ClusterSnapshot:
    """Every known instance, split by phase, stamped with the store's clock."""
    return build_snapshot(await store.latest_states(), store.clock())
