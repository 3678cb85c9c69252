"""Rolling-window aggregates, computed the same way whichever store holds the raw data."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence

from voltana.contract.state import SloTarget
from voltana.services.telemetry.records import Aggregates, Completion, SeriesPoint, WindowReport
from voltana.services.telemetry.request_totals import RequestTotals


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not sorted_values:
        return None
    position = fraction * (len(sorted_values) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    weight = position - lower
    return sorted_values[lower] * (1.0 - weight) + sorted_values[upper] * weight


def in_window(ts_s: float, start_s: float, end_s: float) -> bool:
    """Windows are ``(start_s, end_s]`` so back-to-back windows never count a point twice."""
    return start_s < ts_s <= end_s


def energy_used_j(points: Iterable[SeriesPoint], start_s: float, end_s: float) -> float:
    """Increase of an energy counter over ``(start_s, end_s]``.

    The baseline is the last reading at or before ``start_s`` (or the first one inside the
    window when there is none). Decreases (a counter that restarted) add nothing rather than
    subtracting energy that was really drawn.
    """
    ordered = sorted((p for p in points if p.ts_s <= end_s), key=lambda p: p.ts_s)
    baseline: float | None = None
    used_j = 0.0
    for point in ordered:
        if point.ts_s <= start_s or baseline is None:
            baseline = point.value
            continue
        used_j += max(0.0, point.value - baseline)
        baseline = point.value
    return used_j


def aggregates_of(
    totals: RequestTotals,
    *,
    instance_id: str | None,
    window_s: float,
    now_s: float,
    energy_series: Iterable[Iterable[SeriesPoint]],
    clock_series: Iterable[Iterable[SeriesPoint]] = (),
) -> Aggregates:
    """The aggregates of requests summed in ``totals`` and of GPU series, over
    ``(now_s - window_s, now_s]``."""
    start_s = now_s - window_s
    total = totals.finished
    energy_j = sum(energy_used_j(points, start_s, now_s) for points in energy_series)
    clocks_mhz = [
        p.value for points in clock_series for p in points if in_window(p.ts_s, start_s, now_s)
    ]
    return Aggregates(
        instance_id=instance_id,
        window_s=window_s,
        now_s=now_s,
        finished=total,
        failed=totals.failed,
        request_rate_rps=total / window_s,
        output_tokens=totals.output_tokens,
        ttft_p50_ms=percentile(totals.ttfts_ms, 0.5),
        ttft_p90_ms=percentile(totals.ttfts_ms, 0.9),
        itl_p50_ms=percentile(totals.itls_ms, 0.5),
        itl_p90_ms=percentile(totals.itls_ms, 0.9),
        ttft_attainment=totals.ttft_met / total if total else None,
        itl_attainment=totals.itl_met / total if total else None,
        slo_attainment=totals.both_met / total if total else None,
        energy_j=energy_j,
        mean_power_w=energy_j / window_s,
        mean_sm_clock_mhz=sum(clocks_mhz) / len(clocks_mhz) if clocks_mhz else None,
        failed_by_status=dict(sorted(totals.failed_by_status.items())),
        request_energy_j=totals.request_energy_j,
        mean_request_energy_j=(
            totals.request_energy_j / totals.requests_with_energy
            if totals.requests_with_energy
            else None
        ),
    )


def compute_aggregates(
    *,
    instance_id: str | None,
    window_s: float,
    now_s: float,
    completions: Iterable[Completion],
    energy_series: Iterable[Iterable[SeriesPoint]],
    clock_series: Iterable[Iterable[SeriesPoint]] = (),
    slo: SloTarget,
) -> Aggregates:
    """Aggregates of the given completions and GPU series over ``(now_s - window_s, now_s]``,
    recomputed from every completion (the reference the incremental windows must equal)."""
    start_s = now_s - window_s
    finished = [c for c in completions if in_window(c.finished_at_s, start_s, now_s)]
    return aggregates_of(
        RequestTotals.of(finished, slo),
        instance_id=instance_id,
        window_s=window_s,
        now_s=now_s,
        energy_series=energy_series,
        clock_series=clock_series,
    )


def compute_window_report(
    *,
    instance_ids: Collection[str],
    whole_cluster: bool,
    window_s: float,
    now_s: float,
    completions: Sequence[Completion],
    energy_series: Mapping[str, Sequence[SeriesPoint]],
    clock_series: Mapping[str, Sequence[SeriesPoint]],
    slo: SloTarget,
) -> WindowReport:
    """Per-instance aggregates plus one for the selection (every request when whole_cluster)."""
    selected = set(instance_ids)

    def aggregate(ids: set[str], label: str | None, every_request: bool) -> Aggregates:
        return compute_aggregates(
            instance_id=label,
            window_s=window_s,
            now_s=now_s,
            completions=[
                c for c in completions if every_request or not ids.isdisjoint(c.instance_ids)
            ],
            energy_series=[energy_series.get(i, ()) for i in ids],
            clock_series=[clock_series.get(i, ()) for i in ids],
            slo=slo,
        )

    return WindowReport(
        now_s=now_s,
        window_s=window_s,
        instances={i: aggregate({i}, i, False) for i in sorted(selected)},
        cluster=aggregate(selected, None, whole_cluster),
    )
