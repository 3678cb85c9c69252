"""The embedded store: everything in process memory (the default when no Redis URL is set)."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection

from voltana.contract.instances import InstanceInfo
from voltana.contract.state import InstanceState, SloTarget
from voltana.services.telemetry.completion_index import CompletionIndex
from voltana.services.telemetry.merge import (
    gpu_metric_values,
    load_metric_values,
    merge_state,
    stamp_state,
)
from voltana.services.telemetry.records import (
    Aggregates,
    Completion,
    GpuReading,
    Metric,
    SeriesPoint,
    WindowReport,
)
from voltana.services.telemetry.store import (
    DEFAULT_COMPLETIONS_CAP,
    DEFAULT_SERIES_CAP,
    DEFAULT_SLO,
    ChangeNotifier,
    Clock,
    parse_metric,
)
from voltana.services.telemetry.validate import (
    validate_completion,
    validate_gpu_sample,
    validate_instance_info,
    validate_instance_state,
    validate_window,
)


class MemoryTelemetryStore:
    def __init__(
        self,
        *,
        clock: Clock,
        series_cap: int = DEFAULT_SERIES_CAP,
        completions_cap: int = DEFAULT_COMPLETIONS_CAP,
    ) -> None:
        self._clock = clock
        self._series_cap = series_cap
        self._changes = ChangeNotifier()
        self._infos: dict[str, InstanceInfo] = {}
        self._states: dict[str, InstanceState] = {}
        self._gpu: dict[str, GpuReading] = {}
        self._series: dict[tuple[str, Metric], deque[SeriesPoint]] = {}
        # Each record once (a retried report, or one whose record id is known, is not counted
        # twice), with running windows.
        self._completions = CompletionIndex(completions_cap)
        self._seen_s: dict[str, float] = {}
        self._cluster_slo: SloTarget | None = None

    @property
    def changes(self) -> ChangeNotifier:
        return self._changes

    @property
    def clock(self) -> Clock:
        return self._clock

    def _append(self, instance_id: str, ts_s: float, values: dict[Metric, float]) -> None:
        for metric, value in values.items():
            points = self._series.get((instance_id, metric))
            if points is None:
                points = self._series[instance_id, metric] = deque(maxlen=self._series_cap)
            points.append(SeriesPoint(ts_s, value))

    def _known_ids(self) -> list[str]:
        series_ids = {instance_id for instance_id, _ in self._series}
        return sorted(self._infos.keys() | self._states.keys() | self._gpu.keys() | series_ids)

    async def register_instance(self, info: InstanceInfo) -> bool:
        validate_instance_info(info)
        created = info.instance_id not in self._infos
        self._infos[info.instance_id] = info
        self._seen_s[info.instance_id] = self._clock()
        self._changes.changed()
        return created

    async def unregister_instance(self, instance_id: str) -> bool:
        registered = self._infos.pop(instance_id, None) is not None
        self._seen_s.pop(instance_id, None)
        self._states.pop(instance_id, None)
        self._gpu.pop(instance_id, None)
        for metric in Metric:
            self._series.pop((instance_id, metric), None)
        self._changes.changed()
        return registered

    async def put_instance_state(self, state: InstanceState) -> None:
        validate_instance_state(state)
        now_s = self._clock()
        state = stamp_state(state, now_s)
        self._states[state.instance_id] = state
        if state.instance_id in self._infos:
            self._seen_s[state.instance_id] = now_s
        self._append(state.instance_id, state.observed_at_s, load_metric_values(state))
        self._changes.changed()

    async def put_gpu_sample(
        self,
        instance_id: str,
        ts_s: float,
        sm_clock_mhz: int,
        power_w: float,
        energy_j: float,
    ) -> None:
        # A reading without a time (0) is stamped on arrival, like load reports.
        ts_s = ts_s or self._clock()
        reading = GpuReading(instance_id, ts_s, sm_clock_mhz, power_w, energy_j)
        validate_gpu_sample(reading)
        self._gpu[instance_id] = reading
        self._append(instance_id, ts_s, gpu_metric_values(reading))
        self._changes.changed()

    async def record_completion(self, completion: Completion) -> None:
        validate_completion(completion)
        self._completions.add(completion)

    async def last_seen(self) -> dict[str, float]:
        return dict(self._seen_s)

    async def cluster_slo(self) -> SloTarget | None:
        return self._cluster_slo

    async def put_cluster_slo(self, slo: SloTarget) -> None:
        self._cluster_slo = slo

    async def ping(self) -> None:
        """Process memory is always there."""

    async def epoch(self) -> str:
        """Constant: what this store holds lives and dies with the process that replays."""
        return "memory"

    async def latest_states(self) -> dict[str, InstanceState]:
        states: dict[str, InstanceState] = {}
        for instance_id in sorted(self._infos.keys() | self._states.keys()):
            merged = merge_state(
                instance_id,
                self._infos.get(instance_id),
                self._states.get(instance_id),
                self._gpu.get(instance_id),
            )
            if merged is not None:
                states[instance_id] = merged
        return states

    async def instance_infos(self) -> dict[str, InstanceInfo]:
        return {i: self._infos[i] for i in sorted(self._infos)}

    async def series(
        self, instance_id: str, metric: Metric | str, since_s: float = 0.0
    ) -> list[SeriesPoint]:
        points = self._series.get((instance_id, parse_metric(metric)), ())
        return [p for p in points if p.ts_s >= since_s]

    async def window_report(
        self, instance_ids: Collection[str] | None, window_s: float, slo: SloTarget = DEFAULT_SLO
    ) -> WindowReport:
        validate_window(window_s)
        now_s = self._clock()
        ids = self._known_ids() if instance_ids is None else list(instance_ids)
        return self._completions.report(
            instance_ids=ids,
            whole_cluster=instance_ids is None,
            window_s=window_s,
            now_s=now_s,
            energy_series={i: list(self._series.get((i, Metric.ENERGY_J), ())) for i in ids},
            clock_series={i: list(self._series.get((i, Metric.SM_CLOCK_MHZ), ())) for i in ids},
            slo=slo,
        )

    async def aggregates(
        self, instance_id: str | None, window_s: float, slo: SloTarget = DEFAULT_SLO
    ) -> Aggregates:
        if instance_id is None:
            return (await self.window_report(None, window_s, slo)).cluster
        return (await self.window_report([instance_id], window_s, slo)).instances[instance_id]

    async def close(self) -> None:
        """Nothing to release; present so both stores are closed the same way."""
