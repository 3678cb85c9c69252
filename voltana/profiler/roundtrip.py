"""Profile the simulated GPU and check the profile against the model the simulation runs.

A simulated SGLang engine and a node agent (sim backend) share one ``SimulatedGpu`` whose
physics is a known performance model; `voltana profile`'s code measures it through HTTP and the
agent exactly as on hardware, and the profiled model must reproduce the known one at every
profiled point. Used by tests/test_profile.py and bench/profile_roundtrip.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from voltana.engine import SimEngineSettings
from voltana.perf.measured import MeasuredProfile
from voltana.perf.model import PerformanceModel
from voltana.profiler.runner import Profiler, ProfileSettings
from voltana.rpc import RpcSecurity
from voltana.stack import EngineNode, EngineNodeSettings


@dataclass(frozen=True)
class PointError:
    phase: str
    sm_clock_mhz: int
    batch_size: int
    tokens: int
    # Relative errors of the profiled model against the simulated GPU's model.
    latency_error: float
    power_error: float


async def profile_simulated_gpu(
    engine: SimEngineSettings,
    settings: ProfileSettings,
    progress: Callable[[str], None] | None = None,
) -> tuple[MeasuredProfile, PerformanceModel]:
    """(the measured profile, the model the simulated GPU ran) for a null-mode engine."""
    security = RpcSecurity.generated()
    node = EngineNode(
        EngineNodeSettings(
            engine=replace(engine, mode="null"),
            agent_listen_address="127.0.0.1:0",
            security=security,
        )
    )
    await node.start()
    try:
        assert node.engine is not None and node.agent is not None
        settings = replace(
            settings,
            engine_url=node.engine.url,
            agent_address=node.agent.address,
            gpu_indices=tuple(gpu.index for gpu in node.gpus),
            security=security,
        )
        profile = await Profiler(settings, progress).run()
    finally:
        await node.stop()
    return profile, node.perf


def roundtrip_errors(profile: MeasuredProfile, truth: PerformanceModel) -> list[PointError]:
    """The profiled model against ``truth`` at every profiled point (prefill, decode, idle)."""
    profiled = profile.performance_model()
    errors = []
    for point in profile.table.points:
        clock = point.sm_clock_mhz
        if point.phase == "prefill":
            expected = truth.prefill_iteration(point.tokens, clock)
            got = profiled.prefill_iteration(point.tokens, clock)
        elif point.phase == "decode":
            expected = truth.decode_iteration(point.batch_size, point.tokens, clock)
            got = profiled.decode_iteration(point.batch_size, point.tokens, clock)
        else:
            idle_w = truth.idle_power_w(clock)
            power_error = abs(profiled.idle_power_w(clock) - idle_w) / idle_w
            errors.append(PointError("idle", clock, 0, 0, 0.0, power_error))
            continue
        errors.append(
            PointError(
                point.phase,
                clock,
                point.batch_size,
                point.tokens,
                abs(got.latency_s - expected.latency_s) / expected.latency_s,
                abs(got.power_w - expected.power_w) / expected.power_w,
            )
        )
    return errors
