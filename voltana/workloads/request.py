"""The unit of work every workload source produces and every consumer replays."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a workload: when it arrives and how many tokens go in and come out."""

    request_id: int
    arrival_s: float  # seconds since the start of the (possibly cut and scaled) workload
    input_tokens: int
    output_tokens: int
