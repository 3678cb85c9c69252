"""One policy over one workload: build its suite and simulate it."""

from __future__ import annotations

from collections.abc import Sequence

from voltana.perf.model import PerformanceModel
from voltana.policy.base import PolicyContext
from voltana.policy.registry import build_router, build_suite, parse_clock_mhz
from voltana.sim.cluster import ClusterConfig
from voltana.sim.simulator import ProgressCallback, Simulation, SimulationResult
from voltana.workloads.request import TraceRequest


def policy_context(config: ClusterConfig, perf: PerformanceModel) -> PolicyContext:
    return PolicyContext(
        config.gpu,
        perf,
        config.slo,
        config.max_running_requests,
        allow_extrapolated_clocks=config.allow_extrapolated_clocks,
    )


def check_clock_range(name: str, context: PolicyContext) -> None:
    """Offline figures come from the model: a fixed clock outside the range where it is
    calibrated needs the opt-in (a live GPU takes any supported clock; dynamic policies keep to
    the context's range by themselves)."""
    if name.startswith("static:") and not context.allow_extrapolated_clocks:
        for text in name.removeprefix("static:").split("/"):
            if text:
                parse_clock_mhz(text, context.gpu, context.clock_range_mhz)


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
    context = policy_context(config, perf)
    check_clock_range(name, context)
    routing = build_router(router, context) if router else None
    suite = build_suite(name, context, routing)
    return Simulation(config, perf, suite, seed=seed).run(requests, progress)
