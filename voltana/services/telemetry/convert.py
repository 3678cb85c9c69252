"""Conversions between voltana.v1 messages and the policy/telemetry dataclasses.

Proto3 scalars have no "unset"; where a dataclass uses None, the proto uses an ``optional``
field (HasField) or, for completions, the documented zero convention.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from voltana.contract.instances import GpuRef, InstanceInfo
from voltana.contract.state import (
    ClusterSnapshot,
    InstanceState,
    Phase,
    SloTarget,
    optional_state_fields,
)
from voltana.gpu import GpuSample
from voltana.observation import ENGINE_REPORT_FIELDS
from voltana.services.telemetry.errors import InvalidTelemetryError
from voltana.services.telemetry.records import (
    Aggregates,
    Completion,
    ReportResult,
    RouterShare,
    WindowReport,
)
from voltana.services.telemetry.store import build_snapshot
from voltana.v1 import common_pb2, telemetry_pb2

_PHASE_TO_PROTO: Mapping[Phase, common_pb2.Phase.ValueType] = {
    Phase.PREFILL: common_pb2.PHASE_PREFILL,
    Phase.DECODE: common_pb2.PHASE_DECODE,
    Phase.UNIFIED: common_pb2.PHASE_UNIFIED,
}
_PHASE_FROM_PROTO: Mapping[int, Phase] = {value: phase for phase, value in _PHASE_TO_PROTO.items()}


def phase_to_proto(phase: Phase | None) -> common_pb2.Phase.ValueType:
    """None stands for "every phase" (PHASE_UNSPECIFIED) in filters."""
    return common_pb2.PHASE_UNSPECIFIED if phase is None else _PHASE_TO_PROTO[phase]


def phase_from_proto(value: int, owner: str) -> Phase:
    try:
        return _PHASE_FROM_PROTO[value]
    except KeyError:
        raise InvalidTelemetryError(
            f"{owner}: phase must be PHASE_PREFILL, PHASE_DECODE or PHASE_UNIFIED, got {value}"
        ) from None


def phase_filter_from_proto(value: int) -> Phase | None:
    """A request filter: PHASE_UNSPECIFIED means every phase."""
    if value == common_pb2.PHASE_UNSPECIFIED:
        return None
    return phase_from_proto(value, "filter")


def _optional(message: object, field: str) -> float | None:
    return getattr(message, field) if message.HasField(field) else None  # type: ignore[attr-defined]


# SLO targets.


def slo_to_proto(slo: SloTarget) -> common_pb2.SloTarget:
    return common_pb2.SloTarget(
        ttft_ms=slo.ttft_ms, itl_ms=slo.itl_ms, ttft_ms_per_1k_tokens=slo.ttft_ms_per_1k_tokens
    )


def slo_from_proto(message: common_pb2.SloTarget) -> SloTarget:
    return SloTarget(
        ttft_ms=message.ttft_ms,
        itl_ms=message.itl_ms,
        ttft_ms_per_1k_tokens=message.ttft_ms_per_1k_tokens,
    )


# Registration and endpoints.


def endpoint_to_proto(info: InstanceInfo) -> common_pb2.InstanceEndpoint:
    return common_pb2.InstanceEndpoint(
        engine_url=info.engine_url,
        bootstrap_host=info.bootstrap_host,
        bootstrap_port=info.bootstrap_port,
        agent_address=info.agent_address,
        gpu_index=info.gpu_index,
        gpus=[
            common_pb2.GpuRef(agent_address=ref.agent_address, gpu_index=ref.gpu_index)
            for ref in info.gpus
        ],
    )


def gpu_refs_from_endpoint(endpoint: common_pb2.InstanceEndpoint) -> tuple[GpuRef, ...]:
    return tuple(GpuRef(ref.agent_address, ref.gpu_index) for ref in endpoint.gpus)


def _endpoint_agent(endpoint: common_pb2.InstanceEndpoint) -> tuple[str, int]:
    """The first GPU's agent and index (the GPU list's when only that is given)."""
    if not endpoint.agent_address and endpoint.gpus:
        return endpoint.gpus[0].agent_address, endpoint.gpus[0].gpu_index
    return endpoint.agent_address, endpoint.gpu_index


def register_request_to_proto(info: InstanceInfo) -> telemetry_pb2.RegisterInstanceRequest:
    return telemetry_pb2.RegisterInstanceRequest(
        instance_id=info.instance_id,
        phase=phase_to_proto(info.phase),
        gpu_key=info.gpu_key,
        endpoint=endpoint_to_proto(info),
        kv_tokens_capacity=info.kv_tokens_capacity,
        max_running_requests=info.max_running_requests,
    )


def info_from_register_request(request: telemetry_pb2.RegisterInstanceRequest) -> InstanceInfo:
    endpoint = request.endpoint
    return InstanceInfo(
        instance_id=request.instance_id,
        phase=phase_from_proto(request.phase, f"instance {request.instance_id!r}"),
        gpu_key=request.gpu_key,
        engine_url=endpoint.engine_url,
        bootstrap_host=endpoint.bootstrap_host,
        bootstrap_port=endpoint.bootstrap_port,
        agent_address=_endpoint_agent(endpoint)[0],
        gpu_index=_endpoint_agent(endpoint)[1],
        kv_tokens_capacity=request.kv_tokens_capacity,
        max_running_requests=request.max_running_requests,
        gpus=gpu_refs_from_endpoint(endpoint),
    )


# Instance state and snapshots.


_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(InstanceState))
_OPTIONAL_STATE_FIELDS = optional_state_fields()


def state_to_proto(
    state: InstanceState, info: InstanceInfo | None = None
) -> common_pb2.InstanceState:
    """Every InstanceState field, by name (the proto mirrors the dataclass; a test checks it)."""
    values = {name: getattr(state, name) for name in _STATE_FIELDS}
    values["phase"] = phase_to_proto(state.phase)
    message = common_pb2.InstanceState(**values)
    if info is not None:
        message.endpoint.CopyFrom(endpoint_to_proto(info))
    return message


def state_from_proto(message: common_pb2.InstanceState) -> InstanceState:
    values: dict[str, Any] = {
        name: _optional(message, name) if name in _OPTIONAL_STATE_FIELDS else getattr(message, name)
        for name in _STATE_FIELDS
    }
    values["phase"] = phase_from_proto(message.phase, f"instance {message.instance_id!r}")
    return InstanceState(**values)


def info_from_state_proto(message: common_pb2.InstanceState) -> InstanceInfo | None:
    """The registration a snapshot entry carries (None when it has no endpoint)."""
    if not message.HasField("endpoint"):
        return None
    endpoint = message.endpoint
    return InstanceInfo(
        instance_id=message.instance_id,
        phase=phase_from_proto(message.phase, f"instance {message.instance_id!r}"),
        gpu_key=message.gpu_key,
        engine_url=endpoint.engine_url,
        bootstrap_host=endpoint.bootstrap_host,
        bootstrap_port=endpoint.bootstrap_port,
        agent_address=_endpoint_agent(endpoint)[0],
        gpu_index=_endpoint_agent(endpoint)[1],
        kv_tokens_capacity=message.kv_tokens_capacity,
        max_running_requests=message.max_running_requests,
        gpus=gpu_refs_from_endpoint(endpoint),
    )


def snapshot_to_proto(
    states: Mapping[str, InstanceState],
    infos: Mapping[str, InstanceInfo],
    now_s: float,
    shares: Iterable[RouterShare] = (),
    cluster_slo: SloTarget | None = None,
) -> common_pb2.ClusterSnapshot:
    return common_pb2.ClusterSnapshot(
        now_s=now_s,
        cluster_slo=slo_to_proto(cluster_slo) if cluster_slo is not None else None,
        instances=[state_to_proto(state, infos.get(i)) for i, state in states.items()],
        router_shares=[
            common_pb2.RouterShare(
                router_id=share.router_id,
                instance_id=share.instance_id,
                inflight_requests=share.inflight_requests,
                inflight_tokens=share.inflight_tokens,
                arrival_rate_rps=share.arrival_rate_rps,
                arrival_tokens_per_s=share.arrival_tokens_per_s,
            )
            for share in shares
        ],
    )


def router_shares_from_proto(message: common_pb2.ClusterSnapshot) -> list[RouterShare]:
    return [
        RouterShare(
            router_id=m.router_id,
            instance_id=m.instance_id,
            inflight_requests=m.inflight_requests,
            inflight_tokens=m.inflight_tokens,
            arrival_rate_rps=m.arrival_rate_rps,
            arrival_tokens_per_s=m.arrival_tokens_per_s,
        )
        for m in message.router_shares
    ]


def snapshot_from_proto(message: common_pb2.ClusterSnapshot) -> ClusterSnapshot:
    states = {m.instance_id: state_from_proto(m) for m in message.instances}
    snapshot = build_snapshot(states, message.now_s)
    if not message.HasField("cluster_slo"):
        return snapshot
    return dataclasses.replace(snapshot, cluster_slo=slo_from_proto(message.cluster_slo))


def infos_from_snapshot_proto(message: common_pb2.ClusterSnapshot) -> dict[str, InstanceInfo]:
    infos = (info_from_state_proto(m) for m in message.instances)
    return {info.instance_id: info for info in infos if info is not None}


# Reports.


def sample_to_proto(state: InstanceState) -> telemetry_pb2.InstanceSample:
    """What an engine reports of a state (ENGINE_REPORT_FIELDS): its load and latencies.
    Clock, power and energy come from GPU samples, arrivals from the router's placements."""
    return telemetry_pb2.InstanceSample(
        instance_id=state.instance_id,
        **{name: getattr(state, name) for name in ENGINE_REPORT_FIELDS},
    )


def state_from_sample(sample: telemetry_pb2.InstanceSample, info: InstanceInfo) -> InstanceState:
    """A load report as the store takes it (the other fields are merged in by the store)."""
    values: dict[str, Any] = {
        name: _optional(sample, name) if name in _OPTIONAL_STATE_FIELDS else getattr(sample, name)
        for name in ENGINE_REPORT_FIELDS
    }
    if not values["last_activity_s"]:  # an older reporter: every report counts as activity
        values["last_activity_s"] = sample.observed_at_s
    return InstanceState(
        instance_id=sample.instance_id,
        phase=info.phase,
        gpu_key=info.gpu_key,
        sm_clock_mhz=0,
        **values,
    )


def gpu_sample_to_proto(
    sample: GpuSample, *, instance_id: str = "", agent_address: str = ""
) -> common_pb2.GpuSample:
    return common_pb2.GpuSample(
        instance_id=instance_id,
        gpu_index=sample.gpu_index,
        sm_clock_mhz=sample.sm_clock_mhz,
        power_w=sample.power_w,
        energy_j=sample.energy_j,
        timestamp_s=sample.timestamp_s,
        agent_address=agent_address,
    )


def report_result_from_proto(message: telemetry_pb2.ReportSamplesResponse) -> ReportResult:
    return ReportResult(
        accepted=message.accepted,
        rejected=message.rejected,
        first_rejection_reason=message.first_rejection_reason,
        unknown_instance_ids=tuple(message.unknown_instance_ids),
        dropped_fields=message.dropped_fields,
    )


def completion_to_proto(completion: Completion) -> telemetry_pb2.CompletionRecord:
    message = telemetry_pb2.CompletionRecord(
        request_id=completion.request_id,
        prefill_instance_id=completion.prefill_id,
        decode_instance_id=completion.decode_id,
        input_tokens=completion.input_tokens,
        output_tokens=completion.output_tokens,
        ttft_ms=completion.ttft_ms or 0.0,
        mean_itl_ms=completion.mean_itl_ms or 0.0,
        ok=completion.ok,
        reason=completion.reason,
        arrival_s=completion.arrival_s,
        finished_at_s=completion.finished_at_s,
        status=completion.status,
        energy_j=completion.energy_j,
        idle_energy_j=completion.idle_energy_j,
        record_id=completion.record_id,
    )
    if completion.slo is not None:
        message.slo.CopyFrom(slo_to_proto(completion.slo))
    return message


def completion_from_proto(message: telemetry_pb2.CompletionRecord) -> Completion:
    """No output token means no TTFT; fewer than two mean no ITL (the proto sends 0 then)."""
    slo = slo_from_proto(message.slo) if message.HasField("slo") else None
    return Completion(
        request_id=message.request_id,
        prefill_id=message.prefill_instance_id,
        decode_id=message.decode_instance_id,
        input_tokens=message.input_tokens,
        output_tokens=message.output_tokens,
        ttft_ms=message.ttft_ms if message.output_tokens > 0 else None,
        mean_itl_ms=message.mean_itl_ms if message.output_tokens > 1 else None,
        ok=message.ok,
        reason=message.reason,
        arrival_s=message.arrival_s,
        finished_at_s=message.finished_at_s,
        slo=slo,
        status=message.status,
        energy_j=message.energy_j if message.HasField("energy_j") else None,
        idle_energy_j=message.idle_energy_j if message.HasField("idle_energy_j") else None,
        record_id=message.record_id,
    )


# Aggregates.


def aggregates_to_proto(
    aggregates: Aggregates, phase: Phase | None = None
) -> telemetry_pb2.InstanceAggregate:
    return telemetry_pb2.InstanceAggregate(
        instance_id=aggregates.instance_id or "",
        phase=phase_to_proto(phase),
        completed_requests=aggregates.completed,
        failed_requests=aggregates.failed,
        failed_by_status=dict(aggregates.failed_by_status),
        request_rate_rps=aggregates.request_rate_rps,
        output_tokens=aggregates.output_tokens,
        p50_ttft_ms=aggregates.ttft_p50_ms,
        p90_ttft_ms=aggregates.ttft_p90_ms,
        p50_itl_ms=aggregates.itl_p50_ms,
        p90_itl_ms=aggregates.itl_p90_ms,
        ttft_attainment=aggregates.ttft_attainment,
        itl_attainment=aggregates.itl_attainment,
        slo_attainment=aggregates.slo_attainment,
        energy_j=aggregates.energy_j,
        mean_power_w=aggregates.mean_power_w,
        mean_sm_clock_mhz=aggregates.mean_sm_clock_mhz or 0.0,
        request_energy_j=aggregates.request_energy_j,
        mean_request_energy_j=aggregates.mean_request_energy_j,
    )


def aggregates_from_proto(
    message: telemetry_pb2.InstanceAggregate, *, now_s: float, window_s: float
) -> Aggregates:
    return Aggregates(
        instance_id=message.instance_id or None,
        window_s=window_s,
        now_s=now_s,
        finished=message.completed_requests + message.failed_requests,
        failed=message.failed_requests,
        failed_by_status=dict(sorted(message.failed_by_status.items())),
        request_rate_rps=message.request_rate_rps,
        output_tokens=message.output_tokens,
        ttft_p50_ms=_optional(message, "p50_ttft_ms"),
        ttft_p90_ms=_optional(message, "p90_ttft_ms"),
        itl_p50_ms=_optional(message, "p50_itl_ms"),
        itl_p90_ms=_optional(message, "p90_itl_ms"),
        ttft_attainment=_optional(message, "ttft_attainment"),
        itl_attainment=_optional(message, "itl_attainment"),
        slo_attainment=_optional(message, "slo_attainment"),
        energy_j=message.energy_j,
        mean_power_w=message.mean_power_w,
        mean_sm_clock_mhz=message.mean_sm_clock_mhz or None,
        request_energy_j=message.request_energy_j,
        mean_request_energy_j=_optional(message, "mean_request_energy_j"),
    )


def window_report_to_proto(
    report: WindowReport, phases: Mapping[str, Phase]
) -> telemetry_pb2.GetAggregatesResponse:
    return telemetry_pb2.GetAggregatesResponse(
        now_s=report.now_s,
        window_s=report.window_s,
        instances=[
            aggregates_to_proto(aggregates, phases.get(instance_id))
            for instance_id, aggregates in report.instances.items()
        ],
        cluster=aggregates_to_proto(report.cluster),
    )


def window_report_from_proto(message: telemetry_pb2.GetAggregatesResponse) -> WindowReport:
    def convert(aggregate: telemetry_pb2.InstanceAggregate) -> Aggregates:
        return aggregates_from_proto(aggregate, now_s=message.now_s, window_s=message.window_s)

    return WindowReport(
        now_s=message.now_s,
        window_s=message.window_s,
        instances={a.instance_id: convert(a) for a in message.instances},
        cluster=convert(message.cluster),
    )
