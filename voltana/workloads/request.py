"""The unit of work every workload source produces and every consumer replays."""

from __future__ import annotations

from dataclasses import dataclass

from voltana.contract.state import SloTarget


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a workload: when it arrives and how many tokens go in and come out, and
    the SLO class it belongs to (voltana.workloads.classes): none, the cluster's SLO; else its
    own targets (a batch job next to interactive chat)."""

    request_id: int
    arrival_s: float  # seconds since the start of the (possibly cut and scaled) workload
    input_tokens: int
    output_tokens: int
    slo_class: str = ""
    slo: SloTarget | None = None
