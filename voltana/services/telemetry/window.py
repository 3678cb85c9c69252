"""Rolling-window aggregates, computed the same way whichever store holds the raw data."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence

from voltana.policy.state import SloTarget
from voltana.services.telemetry.records import Aggregates, Completion, SeriesPoint, WindowReport


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


def _meets_ttft(completion: Completion, default_slo: SloTarget) -> bool:
    slo = completion.slo or default_slo
    return completion.ok and completion.ttft_ms is not None and completion.ttft_ms <= slo.ttft_ms


def _meets_itl(completion: Completion, default_slo: SloTarget) -> bool:
    slo = completion.slo or default_slo
    itl_ms = completion.mean_itl_ms
    # A one-token answer has no inter-token gap, so it cannot miss the ITL target.
    return completion.ok and (itl_ms is None or itl_ms <= slo.itl_ms)


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
    """Aggregates of the given completions and GPU series over ``(now_s - window_s, now_s]``."""
    start_s = now_s - window_s
    finished = [c for c in completions if in_window(c.finished_at_s, start_s, now_s)]
    ok = [c for c in finished if c.ok]
    ttfts_ms = sorted(c.ttft_ms for c in ok if c.ttft_ms is not None)
    itls_ms = sorted(c.mean_itl_ms for c in ok if c.mean_itl_ms is not None)
    total = len(finished)
    ttft_met = sum(_meets_ttft(c, slo) for c in finished)
    itl_met = sum(_meets_itl(c, slo) for c in finished)
    both_met = sum(_meets_ttft(c, slo) and _meets_itl(c, slo) for c in finished)
    energy_j = sum(energy_used_j(points, start_s, now_s) for points in energy_series)
    clocks_mhz = [
        p.value for points in clock_series for p in points if in_window(p.ts_s, start_s, now_s)
    ]
    request_energies_j = [c.energy_j for c in finished if c.energy_j is not None]
    return Aggregates(
        instance_id=instance_id,
        window_s=window_s,
        now_s=now_s,
        finished=total,
        failed=total - len(ok),
        request_rate_rps=total / window_s,
        output_tokens=sum(c.output_tokens for c in finished),
        ttft_p50_ms=percentile(ttfts_ms, 0.5),
        ttft_p90_ms=percentile(ttfts_ms, 0.9),
        itl_p50_ms=percentile(itls_ms, 0.5),
        itl_p90_ms=percentile(itls_ms, 0.9),
        ttft_attainment=ttft_met / total if total else None,
        itl_attainment=itl_met / total if total else None,
        slo_attainment=both_met / total if total else None,
        energy_j=energy_j,
        mean_power_w=energy_j / window_s,
        mean_sm_clock_mhz=sum(clocks_mhz) / len(clocks_mhz) if clocks_mhz else None,
        failed_by_status=dict(sorted(Counter(c.status_name for c in finished if not c.ok).items())),
        request_energy_j=sum(request_energies_j),
        mean_request_energy_j=(
            sum(request_energies_j) / len(request_energies_j) if request_energies_j else None
        ),
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
