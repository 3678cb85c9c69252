"""Run reports shared by `voltana simulate`, `voltana bench` and the benchmarks (definitions: docs/definitions.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voltana.contract.state import SloTarget


@dataclass
class RunOutcome:
    """Raw per-request and energy figures of one run, from the simulator or a live replay."""

    policy: str
    requests: int
    ttft_ms: Sequence[float]  # per completed request
    mean_itl_ms: Sequence[float]  # per completed request (0 for single-token outputs)
    output_tokens: int  # of completed requests
    energy_j: float | None  # None: not measured (e.g. `voltana bench` without --telemetry)
    duration_s: float
    num_gpus: int
    rejected: dict[str, int] = field(default_factory=dict)
    # Prompt tokens per completed request (aligned with ttft_ms): for TTFT targets that grow
    # with the prompt; empty when every target is the same.
    input_tokens: Sequence[int] = ()
    # Token-level ITL: gap values and how many tokens saw each gap.
    token_itl_ms: Sequence[float] = ()
    token_itl_weights: Sequence[float] = ()
    # Per completed request, its attributed (active, idle) energy in joules (docs/energy.md);
    # None when not known.
    request_energy_j: Sequence[tuple[float, float]] | None = None
    # SLO classes (voltana.workloads.classes), when the workload has them: per completed
    # request its own targets (None: the cluster SLO) and its class name, and every request's
    # count per class (rejected ones included). Empty: every request is at the cluster SLO.
    slo_targets: Sequence[SloTarget | None] = ()
    slo_classes: Sequence[str] = ()
    requests_by_class: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def weighted_percentiles(
    values: Sequence[float], weights: Sequence[float] | None, quantiles: Sequence[float]
) -> list[float | None]:
    if len(values) == 0:
        return [None] * len(quantiles)
    data = np.asarray(values, dtype=float)
    if weights is None or len(weights) == 0:
        return [float(v) for v in np.quantile(data, quantiles)]
    w = np.asarray(weights, dtype=float)
    order = np.argsort(data, kind="stable")
    data, w = data[order], w[order]
    cumulative = np.cumsum(w)
    total = cumulative[-1]
    if total <= 0:
        return [None] * len(quantiles)
    indices = np.searchsorted(cumulative, np.asarray(quantiles) * total, side="left")
    return [float(data[min(i, len(data) - 1)]) for i in indices]


def _pcts(values: Sequence[float], weights: Sequence[float] | None = None) -> dict[str, Any]:
    p50, p90, p99 = weighted_percentiles(values, weights, (0.5, 0.9, 0.99))
    return {"p50": p50, "p90": p90, "p99": p99}


def summarize(outcome: RunOutcome, slo: SloTarget) -> dict[str, Any]:
    """One result row in the `--json` schema of the issue (fractions in 0..1)."""
    completed = len(outcome.ttft_ms)
    total = max(1, outcome.requests)
    ttft_ok, itl_ok = _meets_targets(outcome, slo)
    token_values = outcome.token_itl_ms if len(outcome.token_itl_ms) else outcome.mean_itl_ms
    token_weights = outcome.token_itl_weights if len(outcome.token_itl_ms) else None
    gpu_seconds = outcome.duration_s * outcome.num_gpus
    energy_j = outcome.energy_j
    energy_per_output_token_j: float | None = None
    avg_power_w: float | None = None
    if energy_j is not None:  # unknown energy leaves every figure derived from it unknown
        if outcome.output_tokens:
            energy_per_output_token_j = energy_j / outcome.output_tokens
        avg_power_w = energy_j / gpu_seconds if gpu_seconds > 0 else 0.0
    attributed: dict[str, float] | None = None
    energy_per_request_j: float | None = None
    if outcome.request_energy_j:
        active_j = sum(active for active, _ in outcome.request_energy_j)
        idle_j = sum(idle for _, idle in outcome.request_energy_j)
        attributed = {"active_j": active_j, "idle_j": idle_j}
        energy_per_request_j = (active_j + idle_j) / len(outcome.request_energy_j)
    return {
        "policy": outcome.policy,
        "requests": outcome.requests,
        "completed": completed,
        "rejected": sum(outcome.rejected.values()),
        "rejected_by_reason": dict(outcome.rejected),
        "energy_j": energy_j,
        "energy_per_output_token_j": energy_per_output_token_j,
        "avg_power_w": avg_power_w,
        # Energy attributed to the completed requests (their active and idle shares) and its
        # mean per request; None when unknown.
        "attributed_energy_j": attributed,
        "energy_per_request_j": energy_per_request_j,
        "duration_s": outcome.duration_s,
        "ttft_ms": _pcts(outcome.ttft_ms),
        "itl_ms": _pcts(token_values, token_weights),
        "ttft_attainment": float(ttft_ok.sum()) / total,
        "itl_attainment": float(itl_ok.sum()) / total,
        "slo_attainment": float((ttft_ok & itl_ok).sum()) / total,
        **({"slo_classes": _by_class(outcome, ttft_ok & itl_ok)} if outcome.slo_classes else {}),
        "energy_savings_vs_first": None,
        **outcome.extra,
    }


def _meets_targets(outcome: RunOutcome, slo: SloTarget) -> tuple[np.ndarray, np.ndarray]:
    """Per completed request: whether its TTFT and its mean ITL met its targets (its class's
    own, else ``slo``)."""
    ttft = np.asarray(outcome.ttft_ms, dtype=float)
    itl = np.asarray(outcome.mean_itl_ms, dtype=float)
    completed = len(ttft)
    own = outcome.slo_targets if len(outcome.slo_targets) == completed else ()
    per_1k = [(t or slo).ttft_ms_per_1k_tokens for t in own] if own else [slo.ttft_ms_per_1k_tokens]
    if own:
        ttft_base = np.array([(t or slo).ttft_ms for t in own], dtype=float)
        itl_target = np.array([(t or slo).itl_ms for t in own], dtype=float)
    else:
        ttft_base, itl_target = np.asarray(slo.ttft_ms), np.asarray(slo.itl_ms)
    if len(outcome.input_tokens) == completed and any(per_1k):
        ttft_target = ttft_base + np.asarray(per_1k) * np.asarray(outcome.input_tokens) / 1e3
    else:
        ttft_target = ttft_base
    return ttft <= ttft_target, itl <= itl_target


def _by_class(outcome: RunOutcome, met: np.ndarray) -> dict[str, dict[str, Any]]:
    """Requests, completions and SLO attainment of each class against its own targets."""
    met_by: dict[str, int] = {}
    done_by: dict[str, int] = {}
    for name, ok in zip(outcome.slo_classes, met, strict=True):
        done_by[name] = done_by.get(name, 0) + 1
        met_by[name] = met_by.get(name, 0) + int(ok)
    return {
        name: {
            "requests": count,
            "completed": done_by.get(name, 0),
            "slo_attainment": met_by.get(name, 0) / max(1, count),
        }
        for name, count in sorted(outcome.requests_by_class.items())
    }


def add_savings(results: list[dict[str, Any]]) -> None:
    """Fill `energy_savings_vs_first` (fraction of the first policy's energy saved).

    None where either energy is unknown (None) or the first policy used none.
    """
    if not results:
        return
    baseline = results[0]["energy_j"]
    for row in results:
        energy_j = row["energy_j"]
        known = baseline and energy_j is not None
        row["energy_savings_vs_first"] = 1.0 - energy_j / baseline if known else None


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    """``value`` formatted, or "-" (without the suffix) when it is unknown (None)."""
    return "-" if value is None else format(value, spec) + suffix


def format_table(results: list[dict[str, Any]]) -> str:
    """Policies side by side, one column each; an unknown (None) figure shows as "-"."""
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("requests", lambda r: _fmt(r["requests"], "d")),
        ("completed", lambda r: _fmt(r["completed"], "d")),
        ("rejected", lambda r: _fmt(r["rejected"], "d")),
        ("energy (kJ)", lambda r: _fmt(_scaled(r["energy_j"], 1e-3), ".1f")),
        ("savings vs first", lambda r: _fmt(_pct(r["energy_savings_vs_first"]), "+.1f", "%")),
        (
            "savings vs static-best, same router",
            lambda r: _fmt(_pct(r.get("energy_savings_vs_static_best")), "+.1f", "%"),
        ),
        ("J / output token", lambda r: _fmt(r["energy_per_output_token_j"], ".3f")),
        ("J / request (idle share)", _per_request),
        ("avg power / GPU (W)", lambda r: _fmt(r["avg_power_w"], ".0f")),
        ("duration (s)", lambda r: _fmt(r["duration_s"], ".1f")),
        ("TTFT p50/p90/p99 (ms)", lambda r: _triple(r["ttft_ms"], ".0f")),
        ("ITL p50/p90/p99 (ms)", lambda r: _triple(r["itl_ms"], ".1f")),
        ("TTFT attainment", lambda r: _fmt(_pct(r["ttft_attainment"]), ".2f", "%")),
        ("ITL attainment", lambda r: _fmt(_pct(r["itl_attainment"]), ".2f", "%")),
        ("SLO attainment", lambda r: _fmt(_pct(r["slo_attainment"]), ".2f", "%")),
        (
            "clock changes / GPU / min",
            lambda r: _fmt(r.get("clock_changes_per_gpu_per_min"), ".1f"),
        ),
        ("energy at extrapolated clocks", _extrapolated),
    ]
    for name in sorted({name for r in results for name in r.get("slo_classes") or {}}):
        rows.append((f"SLO attainment, {name} class", _class_attainment(name)))
    if any("elastic" in r for r in results):
        rows.extend(ELASTIC_ROWS)
    header = ["", *[r["policy"] + extrapolation_mark(r) for r in results]]
    table = [header] + [[label, *[fn(r) for r in results]] for label, fn in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for n, row in enumerate(table):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if any(extrapolation_mark(r) for r in results):
        lines.append(EXTRAPOLATION_NOTE)
    return "\n".join(lines)


def _elastic(key: str, scale: float = 1.0, spec: str = ".1f") -> Callable[[dict[str, Any]], str]:
    def cell(row: dict[str, Any]) -> str:
        figures = row.get("elastic")
        return _fmt(_scaled(figures[key], scale) if figures else None, spec)

    return cell


def _instances_up(row: dict[str, Any]) -> str:
    figures = (row.get("elastic") or {}).get("instances", {}).get("all")
    if not figures:
        return "-"
    return f"{figures['min']}/{figures['mean']:.2f}/{figures['max']}"


# Rows of a table with an elastic run in it (voltana.sim.elastic's figures).
ELASTIC_ROWS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("instances up min/mean/max", _instances_up),
    ("time starting (s)", _elastic("starting_s")),
    ("energy, stopped GPU idling (kJ)", _elastic("energy_j_in_server", 1e-3)),
    ("energy, stopped GPU released (kJ)", _elastic("energy_j_released", 1e-3)),
    ("released GPU-hours", _elastic("released_gpu_h", 1.0, ".3f")),
]


def _class_attainment(name: str) -> Callable[[dict[str, Any]], str]:
    def cell(row: dict[str, Any]) -> str:
        figures = (row.get("slo_classes") or {}).get(name)
        return _fmt(_pct(figures["slo_attainment"]) if figures else None, ".2f", "%")

    return cell


def headline_lines(results: list[dict[str, Any]]) -> list[str]:
    """The honest headline of a comparison: each dynamic policy's energy saved against the
    static-best searched for the same router (rows without one are left out)."""
    best = {r.get("router"): r for r in results if "static_best" in r}
    lines = []
    for row in results:
        gain = row.get("energy_savings_vs_static_best")
        if gain is None or "static_best" in row or row["policy"].startswith("static"):
            continue
        baseline = best[row.get("router")]
        lines.append(
            f"{row['policy']}: {100 * gain:+.1f}% energy vs {baseline['policy']} (same router), "
            f"SLO {100 * row['slo_attainment']:.2f}% vs {100 * baseline['slo_attainment']:.2f}%"
        )
    return lines


def _extrapolated(row: dict[str, Any]) -> str:
    """The share of the row's energy spent outside the model's calibrated clocks."""
    return _fmt(_pct(row.get("extrapolated_energy_share")), ".1f", "%")


def extrapolation_mark(row: dict[str, Any]) -> str:
    """ "*" for a row whose figures rest partly on clocks the model extrapolates to."""
    return "*" if row.get("extrapolated_energy_share") else ""


EXTRAPOLATION_NOTE = "* energy partly at clocks outside the model's calibrated range (extrapolated)"


def _per_request(row: dict[str, Any]) -> str:
    mean_j, attributed = row.get("energy_per_request_j"), row.get("attributed_energy_j")
    if mean_j is None or not attributed:
        return "-"
    total_j = attributed["active_j"] + attributed["idle_j"]
    idle = attributed["idle_j"] / total_j if total_j > 0 else 0.0
    return f"{mean_j:.1f} ({idle:.0%})"


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _pct(value: float | None) -> float | None:
    return _scaled(value, 100.0)


def _triple(values: dict[str, Any] | None, spec: str) -> str:
    if values is None:
        return "-"
    return "/".join(_fmt(values.get(k), spec) for k in ("p50", "p90", "p99"))
