"""How the store turns what it was told (registration, load reports, GPU samples) into one state.

Load reports and GPU samples come from different processes (engine scraper vs. node agent), so
the store keeps them apart and merges on read: once an instance has a GPU sample, its clock,
power and energy come only from GPU samples (NVML is the authority); until then they come from
the load report (the simulator reports everything at once).
"""

from __future__ import annotations

import dataclasses

from voltana.contract.instances import InstanceInfo
from voltana.contract.state import InstanceState
from voltana.services.telemetry.records import LOAD_METRICS, GpuReading, Metric


def stamp_state(state: InstanceState, now_s: float) -> InstanceState:
    """Fill the times a reporter left at 0 with the moment the store received the report."""
    observed_at_s = state.observed_at_s or now_s
    last_activity_s = state.last_activity_s or observed_at_s
    if (observed_at_s, last_activity_s) == (state.observed_at_s, state.last_activity_s):
        return state
    return dataclasses.replace(state, observed_at_s=observed_at_s, last_activity_s=last_activity_s)


def merge_state(
    instance_id: str,
    info: InstanceInfo | None,
    state: InstanceState | None,
    gpu: GpuReading | None,
) -> InstanceState | None:
    """The state policies see, or None while the store knows too little (no phase yet)."""
    if state is None:
        if info is None:
            return None
        state = InstanceState(
            instance_id=instance_id, phase=info.phase, gpu_key=info.gpu_key, sm_clock_mhz=0
        )
    if info is not None:
        # Registration fills what a load report leaves unknown (gpu key, engine limits).
        state = dataclasses.replace(
            state,
            gpu_key=state.gpu_key or info.gpu_key,
            kv_tokens_capacity=state.kv_tokens_capacity or info.kv_tokens_capacity,
            max_running_requests=state.max_running_requests or info.max_running_requests,
        )
    if gpu is not None:
        state = dataclasses.replace(
            state,
            sm_clock_mhz=gpu.sm_clock_mhz,
            power_w=gpu.power_w,
            energy_j=gpu.energy_j,
            # The load fields are as of the engine's report, not the GPU sample: a later
            # sample must not make an old report look fresh (the router's in-flight ledger
            # would settle requests the report never saw). Until the engine reports, the
            # sample's time is all there is.
            observed_at_s=state.observed_at_s or gpu.ts_s,
        )
    return state


def load_metric_values(state: InstanceState) -> dict[Metric, float]:
    """The series points a load report adds (latencies only when they were measured)."""
    values: dict[Metric, float] = {}
    for metric in LOAD_METRICS:
        value = getattr(state, metric.value)
        if value is not None:
            values[metric] = float(value)
    return values


def gpu_metric_values(sample: GpuReading) -> dict[Metric, float]:
    return {
        Metric.SM_CLOCK_MHZ: float(sample.sm_clock_mhz),
        Metric.POWER_W: sample.power_w,
        Metric.ENERGY_J: sample.energy_j,
    }
