"""Elasticity in the simulator: which instances to drain, and what a run's record of service
states reports (energy and GPU time by state, the two accountings of a stopped GPU, the
in-service counts over time)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from voltana.perf.engine_costs import EngineCosts
from voltana.sim.instance import SERVICE_STATES, STARTING, STOPPED


class _Drainable(Protocol):
    @property
    def index(self) -> int: ...

    @property
    def assigned(self) -> int: ...


_T = TypeVar("_T", bound=_Drainable)


def choose_to_drain(serving: Sequence[_T], count: int) -> list[_T]:
    """The ``count`` serving instances to drain: the least loaded (fewest requests placed on
    them and not yet done), the highest index first among equals."""
    if count <= 0:
        return []
    return sorted(serving, key=lambda inst: (inst.assigned, -inst.index))[:count]


@dataclass(frozen=True)
class ElasticRecord:
    """What a run with a planner records about its instances' service states."""

    costs: EngineCosts
    released_gpu_w: float | None  # None: a stopped GPU counted at its bare idle draw
    gpus_per_instance: int
    time_s_by_state: list[dict[str, float]]  # per instance
    energy_j_by_state: list[dict[str, float]]
    # (from s, serving prefill, serving decode, serving unified, starting): at each change;
    # "serving" counts every instance with its engine up (draining ones included).
    count_series: list[tuple[float, int, int, int, int]]
    end_s: float

    def state_total(self, table: list[dict[str, float]], state: str) -> float:
        return sum(per_instance.get(state, 0.0) for per_instance in table)

    @property
    def stopped_gpu_s(self) -> float:
        return self.state_total(self.time_s_by_state, STOPPED) * self.gpus_per_instance


def _count_range(series: list[tuple[float, int, int, int, int]], end_s: float) -> dict[str, Any]:
    """Min, max and time-weighted mean of the engines up per phase and in all."""
    figures: dict[str, Any] = {}
    if not series:
        return figures
    names = ("prefill", "decode", "unified")
    spans = [
        (row, (series[n + 1][0] if n + 1 < len(series) else end_s) - row[0])
        for n, row in enumerate(series)
    ]
    total_s = sum(span for _, span in spans) or 1.0
    for column, name in enumerate(names, start=1):
        values = [row[column] for row in series]
        if max(values) == 0:
            continue
        figures[name] = {
            "min": min(values),
            "max": max(values),
            "mean": sum(row[column] * span for row, span in spans) / total_s,
        }
    totals = [sum(row[1:4]) for row in series]
    figures["all"] = {
        "min": min(totals),
        "max": max(totals),
        "mean": sum(sum(row[1:4]) * span for row, span in spans) / total_s,
    }
    return figures


def elastic_figures(record: ElasticRecord) -> dict[str, Any]:
    """Report figures of an elastic run. Energy is counted with a stopped GPU at the run's
    accounting; both accountings are always given: ``energy_j_in_server`` (a stopped GPU draws
    its bare idle power, it is still in the server) and ``energy_j_released`` (it draws
    ``released_gpu_w``, 0 unless given: back to a pool)."""
    costs = record.costs
    counted_w = costs.no_engine_w if record.released_gpu_w is None else record.released_gpu_w
    released_w = record.released_gpu_w or 0.0
    energy_by_state = {
        state: record.state_total(record.energy_j_by_state, state) for state in SERVICE_STATES
    }
    total_j = sum(energy_by_state.values())
    stopped_gpu_s = record.stopped_gpu_s
    return {
        "elastic": {
            "engine_start_s": costs.start_s,
            "starting_w": costs.starting_w,
            "no_engine_w": costs.no_engine_w,
            "parked_w": costs.parked_w,
            "released_gpu_w": record.released_gpu_w,
            "energy_j_by_state": energy_by_state,
            "gpu_s_by_state": {
                state: record.state_total(record.time_s_by_state, state) * record.gpus_per_instance
                for state in SERVICE_STATES
            },
            "starting_s": record.state_total(record.time_s_by_state, STARTING),
            "released_gpu_h": stopped_gpu_s / 3600.0,
            "energy_j_in_server": total_j + stopped_gpu_s * (costs.no_engine_w - counted_w),
            "energy_j_released": total_j + stopped_gpu_s * (released_w - counted_w),
            "instances": _count_range(record.count_series, record.end_s),
            "instance_count_series": [list(row) for row in record.count_series],
        }
    }
