"""Run several policies on the same workload and cluster, side by side."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from voltana.hardware.gpus import GpuSpec
from voltana.perf.model import PerformanceModel
from voltana.policy.base import PolicyContext, PolicySuite
from voltana.policy.registry import build_router, build_suite
from voltana.policy.state import SloTarget
from voltana.report import add_savings, summarize
from voltana.sim.cluster import ClusterConfig
from voltana.sim.run import run_policy
from voltana.sim.simulator import ProgressCallback, Simulation, SimulationResult
from voltana.sim.static_best import STATIC_BEST, find_static_best
from voltana.workloads.request import TraceRequest

ProgressFactory = Callable[[str], ProgressCallback | None]

__all__ = ["build_suites", "compare_policies", "run_policy"]


def build_suites(
    names: Sequence[str],
    router: str | None,
    gpu: GpuSpec,
    perf: PerformanceModel,
    slo: SloTarget,
    max_running_requests: int = 1024,
) -> list[PolicySuite | None]:
    """Build every named policy, so a bad name fails before any work starts. `static-best` gives
    None: a hindsight sweep on the workload resolves it. Each suite serves one run (policies
    keep memory), and each gets its own router."""
    context = PolicyContext(gpu, perf, slo, max_running_requests)
    return [
        None
        if name == STATIC_BEST
        else build_suite(name, context, build_router(router, context) if router else None)
        for name in names
    ]


def compare_policies(
    names: Sequence[str],
    requests: Sequence[TraceRequest],
    config: ClusterConfig,
    perf: PerformanceModel,
    *,
    router: str | None = None,
    seed: int = 0,
    progress: ProgressFactory | None = None,
    suites: Sequence[PolicySuite | None] | None = None,
) -> tuple[list[SimulationResult], list[dict[str, Any]]]:
    """Simulate each policy in order; returns raw results and report rows (savings vs first).

    ``suites`` are the policies already built by `build_suites` (built here when absent).
    `static-best` is resolved by a hindsight sweep on the same workload (static_best.py)."""
    if suites is None:
        suites = build_suites(
            names, router, config.gpu, perf, config.slo, config.max_running_requests
        )
    results: list[SimulationResult] = []
    for name, suite in zip(names, suites, strict=True):
        callback = progress(name) if progress else None
        if suite is None:
            best = find_static_best(
                requests, config, perf, router=router, seed=seed, progress=callback
            )
            best.result.policy = f"static-best({best.prefill_mhz}/{best.decode_mhz})"
            results.append(best.result)
            continue
        results.append(Simulation(config, perf, suite, seed=seed).run(requests, callback))
    rows = [summarize(result.outcome(), config.slo) for result in results]
    add_savings(rows)
    return results, rows
