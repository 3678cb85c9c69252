"""One policy over one workload: build its suite and simulate it."""

from __future__ import annotations

from collections.abc import Sequence

from voltana.perf.model import PerformanceModel
from voltana.policy.base import PolicyContext
from voltana.policy.registry import build_router, build_suite
from voltana.sim.cluster import ClusterConfig
from voltana.sim.simulator import ProgressCallback, Simulation, SimulationResult
from voltana.workloads.request import TraceRequest


def run_policy(
    name: str,
    requests: Sequence[TraceRequest],
    config: ClusterConfig,
    perf: PerformanceModel,
    *,
    router: str | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> SimulationResult:
    context = PolicyContext(config.gpu, perf, config.slo, config.max_running_requests)
    routing = build_router(router, context) if router else None
    suite = build_suite(name, context, routing)
    return Simulation(config, perf, suite, seed=seed).run(requests, progress)
