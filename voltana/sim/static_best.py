"""`static-best`: the best fixed clock per phase in hindsight, found by sweeping the trace.

Not an online policy: it needs the whole workload up front. It answers "what would the best
static configuration have achieved?", the strongest static baseline to compare against.
The SLO target is 99% joint attainment, or 0.5 points below `static-max` when even the maximum
clock cannot reach 99% on this workload.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from voltana.perf.model import PerformanceModel
from voltana.policy.state import SloTarget
from voltana.report import summarize
from voltana.sim.cluster import ClusterConfig
from voltana.sim.run import run_policy
from voltana.sim.simulator import ProgressCallback, SimulationResult
from voltana.workloads.request import TraceRequest

STATIC_BEST = "static-best"


@dataclass(frozen=True)
class StaticBest:
    prefill_mhz: int
    decode_mhz: int
    target_attainment: float
    result: SimulationResult
    simulations: int

    @property
    def policy_name(self) -> str:
        return f"static:{self.prefill_mhz}/{self.decode_mhz}"


def _grid(clocks: Sequence[int], points: int) -> list[int]:
    """About ``points`` clocks spread over the range, highest first, max always included."""
    step = max(1, len(clocks) // points)
    grid = sorted(set(clocks[::-step]) | {clocks[-1]}, reverse=True)
    return grid


def _attainment(result: SimulationResult, slo: SloTarget) -> float:
    return float(summarize(result.outcome(), slo)["slo_attainment"])


def find_static_best(
    requests: Sequence[TraceRequest],
    config: ClusterConfig,
    perf: PerformanceModel,
    *,
    router: str | None = None,
    seed: int = 0,
    grid_points: int = 12,
    progress: ProgressCallback | None = None,
) -> StaticBest:
    """Sweep the prefill clock (decode at max), then the decode clock; keep the cheapest that
    meets the target. Lower clocks are tried until two in a row miss it."""
    gpu = config.gpu
    clocks = list(gpu.supported_sm_clocks_mhz)
    grid = _grid(clocks, grid_points)
    max_mhz = gpu.default_sm_clock_mhz
    runs = 0
    total = 2 * len(grid) + 1

    def simulate(prefill_mhz: int, decode_mhz: int) -> SimulationResult:
        nonlocal runs
        runs += 1
        if progress:
            progress(min(1.0, runs / total))
        name = f"static:{prefill_mhz}/{decode_mhz}"
        return run_policy(name, requests, config, perf, router=router, seed=seed)

    baseline = simulate(max_mhz, max_mhz)
    target = min(0.99, _attainment(baseline, config.slo) - 0.005)
    best = (baseline.energy_j, max_mhz, max_mhz, baseline)

    def sweep(phase: str) -> None:
        nonlocal best
        misses = 0
        for clock in grid:
            prefill_mhz, decode_mhz = (clock, best[2]) if phase == "prefill" else (best[1], clock)
            if (prefill_mhz, decode_mhz) == (best[1], best[2]):
                continue
            result = simulate(prefill_mhz, decode_mhz)
            if _attainment(result, config.slo) >= target:
                misses = 0
                if result.energy_j < best[0]:
                    best = (result.energy_j, prefill_mhz, decode_mhz, result)
            else:
                misses += 1
                if misses >= 2:
                    return

    sweep("prefill")
    sweep("decode")
    if progress:
        progress(1.0)
    _, prefill_mhz, decode_mhz, result = best
    return StaticBest(prefill_mhz, decode_mhz, target, result, runs)
