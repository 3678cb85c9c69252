"""Run several policies on the same workload and cluster, side by side."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from voltana.contract.state import SloTarget
from voltana.hardware.gpus import GpuSpec
from voltana.perf.model import PerformanceModel
from voltana.policy.base import PolicyContext, PolicySuite
from voltana.policy.registry import (
    build_router,
    build_suite,
    static_best_router,
)
from voltana.report import add_savings, summarize
from voltana.sim.cluster import ClusterConfig
from voltana.sim.run import check_clock_range, policy_context, run_policy
from voltana.sim.simulator import ProgressCallback, Simulation, SimulationResult
from voltana.sim.static_best import find_static_best
from voltana.workloads.request import TraceRequest

ProgressFactory = Callable[[str], ProgressCallback | None]
# The router static policies place with when none is named.
STATIC_ROUTER = "round-robin"


__all__ = ["build_suites", "check_clock_range", "compare_policies", "policy_context", "run_policy"]


def build_suites(
    names: Sequence[str],
    router: str | None,
    gpu: GpuSpec,
    perf: PerformanceModel,
    slo: SloTarget,
    max_running_requests: int = 1024,
    *,
    allow_extrapolated_clocks: bool = False,
) -> list[PolicySuite | None]:
    """Build every named policy, so a bad name fails before any work starts. `static-best`
    (and `static-best+<router>-router`) gives None: a hindsight sweep on the workload resolves
    it. Each suite serves one run (policies keep memory), and each gets its own router."""
    context = PolicyContext(
        gpu, perf, slo, max_running_requests, allow_extrapolated_clocks=allow_extrapolated_clocks
    )
    if router:
        build_router(router, context)  # a bad --router fails here too
    for name in names:
        check_clock_range(name, context)
    return [
        None
        if static_best_router(name)[0]
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
    """Simulate each policy in order; returns raw results and report rows (savings vs first,
    and vs the static-best searched for the same router where one is among the policies).

    ``suites`` are the policies already built by `build_suites` (built here when absent).
    `static-best` is resolved by a hindsight search on the same workload (static_best.py) for
    its router: ``router`` when given, else the one its name asks for, else round-robin."""
    if suites is None:
        suites = build_suites(
            names,
            router,
            config.gpu,
            perf,
            config.slo,
            config.max_running_requests,
            allow_extrapolated_clocks=config.allow_extrapolated_clocks,
        )
    results: list[SimulationResult] = []
    routers: list[str] = []
    searches: list[dict[str, Any] | None] = []
    for name, suite in zip(names, suites, strict=True):
        callback = progress(name) if progress else None
        if suite is None:
            search_router = router or static_best_router(name)[1]
            best = find_static_best(
                requests, config, perf, router=search_router, seed=seed, progress=callback
            )
            best.result.policy = best.label()
            results.append(best.result)
            routers.append(search_router or STATIC_ROUTER)
            searches.append(best.summary())
            continue
        results.append(Simulation(config, perf, suite, seed=seed).run(requests, callback))
        routers.append(suite.router.name)
        searches.append(None)
    rows = [summarize(result.outcome(), config.slo) for result in results]
    for row, router_name, search in zip(rows, routers, searches, strict=True):
        row["router"] = router_name
        if search is not None:
            row["static_best"] = search
    add_savings(rows)
    add_savings_vs_static_best(rows)
    return results, rows


def add_savings_vs_static_best(rows: list[dict[str, Any]]) -> None:
    """Fill `energy_savings_vs_static_best`: the share of energy a row saves against the
    static-best searched for the same router (the honest headline), or None without one."""
    best_by_router = {row["router"]: row for row in rows if "static_best" in row}
    for row in rows:
        best = best_by_router.get(row.get("router"))
        known = best is not None and best["energy_j"] and row["energy_j"] is not None
        row["energy_savings_vs_static_best"] = (
            1.0 - row["energy_j"] / best["energy_j"] if known and best else None
        )
