"""Controller state to voltana.v1 messages."""

from __future__ import annotations

from voltana.contract.state import SloTarget
from voltana.services.controller.policies import PolicyInfo
from voltana.services.controller.records import DecisionRecord, InstanceControl
from voltana.services.telemetry.convert import phase_to_proto, slo_to_proto
from voltana.v1 import controller_pb2


def decision_to_proto(record: DecisionRecord) -> controller_pb2.ClockDecisionRecord:
    return controller_pb2.ClockDecisionRecord(
        decided_at_s=record.decided_at_s,
        sm_clock_mhz=record.sm_clock_mhz,
        previous_sm_clock_mhz=record.previous_sm_clock_mhz,
        reason=record.reason,
        applied=record.applied,
        applied_sm_clock_mhz=record.applied_sm_clock_mhz,
        error=record.error,
    )


def control_to_proto(
    control: InstanceControl, *, policy_name: str, slo: SloTarget, max_decisions: int
) -> controller_pb2.InstanceControlStatus:
    return controller_pb2.InstanceControlStatus(
        instance_id=control.instance_id,
        phase=phase_to_proto(control.phase),
        current_sm_clock_mhz=control.current_sm_clock_mhz,
        target_sm_clock_mhz=control.target_sm_clock_mhz,
        recent_decisions=[decision_to_proto(r) for r in control.recent_decisions(max_decisions)],
        policy_name=policy_name,
        slo=slo_to_proto(slo),
        lease_held=control.lease_held,
        agent_address=control.agent_address,
        gpu_index=control.gpu_index,
    )


def policy_info_to_proto(info: PolicyInfo) -> controller_pb2.PolicyInfo:
    return controller_pb2.PolicyInfo(
        name=info.name,
        description=info.description,
        phases=[phase_to_proto(phase) for phase in info.phases],
    )
