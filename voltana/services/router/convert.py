"""Router messages built from plain values (placements, completions)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from voltana.contract.state import Phase, Placement
from voltana.v1 import common_pb2, router_pb2

_PHASES = {
    Phase.PREFILL: common_pb2.PHASE_PREFILL,
    Phase.DECODE: common_pb2.PHASE_DECODE,
    Phase.UNIFIED: common_pb2.PHASE_UNIFIED,
    "prefill": common_pb2.PHASE_PREFILL,
    "decode": common_pb2.PHASE_DECODE,
    "unified": common_pb2.PHASE_UNIFIED,
}


def _candidate_to_proto(candidate: Any) -> router_pb2.CandidateScore:
    """A policy's rating of one instance (duck-typed: the fields of CandidateScore)."""
    message = router_pb2.CandidateScore(
        instance_id=str(candidate.instance_id),
        phase=_PHASES.get(getattr(candidate, "phase", None), common_pb2.PHASE_UNSPECIFIED),
        score=float(getattr(candidate, "score", 0.0)),
        feasible=bool(getattr(candidate, "feasible", False)),
        reason=str(getattr(candidate, "reason", "")),
    )
    required_clock_mhz = getattr(candidate, "required_sm_clock_mhz", None)
    if required_clock_mhz is not None:
        message.required_sm_clock_mhz = int(required_clock_mhz)
    predicted_latency_ms = getattr(candidate, "predicted_latency_ms", None)
    if predicted_latency_ms is not None:
        message.predicted_latency_ms = float(predicted_latency_ms)
    return message


def placement_to_proto(placement: Placement, policy_name: str) -> router_pb2.Placement:
    """The Place answer. Candidate ratings travel when the policy's Placement carries a
    ``candidates`` sequence (the baseline routers do not rate candidates)."""
    candidates: Iterable[Any] = getattr(placement, "candidates", None) or ()
    return router_pb2.Placement(
        prefill_id=placement.prefill_id,
        decode_id=placement.decode_id,
        reason=placement.reason,
        predicted_ttft_ms=placement.predicted_ttft_ms,
        predicted_itl_ms=placement.predicted_itl_ms,
        prefill_clock_mhz=placement.prefill_clock_mhz,
        decode_clock_mhz=placement.decode_clock_mhz,
        candidates=[_candidate_to_proto(candidate) for candidate in candidates],
        policy_name=policy_name,
    )
