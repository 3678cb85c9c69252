"""A few numbers that say what a workload is: size, span, rate and token lengths."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from voltana.workloads.request import TraceRequest


@dataclass(frozen=True, slots=True)
class WorkloadSummary:
    count: int
    span_s: float  # first to last arrival
    mean_rate_rps: float  # count / span_s; 0.0 when span_s is 0
    input_tokens_mean: float
    input_tokens_median: float
    input_tokens_p90: float
    output_tokens_mean: float
    output_tokens_median: float
    output_tokens_p90: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def describe(self) -> str:
        """One line for logs and reports."""
        return (
            f"{self.count} requests over {self.span_s:.1f} s ({self.mean_rate_rps:.2f} req/s); "
            f"input tokens mean/median/p90 {self.input_tokens_mean:.0f}/"
            f"{self.input_tokens_median:.0f}/{self.input_tokens_p90:.0f}, "
            f"output {self.output_tokens_mean:.0f}/{self.output_tokens_median:.0f}/"
            f"{self.output_tokens_p90:.0f}"
        )


def summarize_workload(requests: Sequence[TraceRequest]) -> WorkloadSummary:
    if not requests:
        return WorkloadSummary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    arrivals_s = np.fromiter((r.arrival_s for r in requests), dtype=np.float64, count=len(requests))
    inputs = np.fromiter((r.input_tokens for r in requests), dtype=np.float64, count=len(requests))
    outputs = np.fromiter(
        (r.output_tokens for r in requests), dtype=np.float64, count=len(requests)
    )
    span_s = float(arrivals_s.max() - arrivals_s.min())
    return WorkloadSummary(
        count=len(requests),
        span_s=span_s,
        mean_rate_rps=len(requests) / span_s if span_s > 0 else 0.0,
        input_tokens_mean=float(inputs.mean()),
        input_tokens_median=float(np.median(inputs)),
        input_tokens_p90=float(np.percentile(inputs, 90)),
        output_tokens_mean=float(outputs.mean()),
        output_tokens_median=float(np.median(outputs)),
        output_tokens_p90=float(np.percentile(outputs, 90)),
    )
