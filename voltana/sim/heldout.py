"""The held-out test split: evaluation rows drawn afresh from a seed, nobody tuned on.

The development split is the fixed matrix of `voltana.sim.evaluate` (tune constants there
only). A test split is drawn from a seed given at run time and run once: every row draws its
workload family and parameters, SLO pair, load, hardware and a *model mismatch* - the simulated
GPU's true latency and power deviate from the model the policies plan with by up to ±15 % per
phase and clock (`voltana.perf.mismatch`), so no row assumes a perfect model.

- family: poisson (stationary), bursty, diurnal, ramp, or a slice of a real trace (Azure
  conversation or code, from a random point of the hour);
- lengths: lognormal, input means 50-4000 tokens, output means 20-800 (log-uniform), medians
  40-95 % of the mean; real-trace slices keep the trace's lengths;
- SLO: TTFT 300-3000 ms, or a base of 300-1500 ms plus 100-500 ms per 1k prompt tokens; ITL
  20-150 ms (log-uniform);
- load: 20-95 % of static-max's SLO capacity on the row's hardware (under the true model);
- hardware: a GPU of the catalog, a catalog model at the smallest tensor-parallel degree that
  holds it (sometimes twice that), 1-2 prefill and 1-2 decode instances;
- size: 300-900 requests per run and at least 20 s of arrivals (a run at a high rate is not one
  burst drained afterwards); a real-trace slice is time-compressed, a synthetic stream keeps its
  shape over a duration set by its rate.

A row whose static-max misses 99 % even at the lightest load is infeasible and counted apart.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from voltana.contract.state import SloTarget
from voltana.hardware import GPU_CATALOG, MODEL_CATALOG, get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.perf.mismatch import MismatchedPerformanceModel, ModelMismatch
from voltana.sim.cluster import ClusterConfig
from voltana.sim.compare import build_suites, compare_policies
from voltana.sim.evaluate import BASELINE, Row, Workload, slo_capacity
from voltana.workloads import load_workload
from voltana.workloads.request import TraceRequest

FAMILIES = ("poisson", "bursty", "diurnal", "ramp", "trace")
STATIONARY_FAMILIES = frozenset({"poisson"})
TRACES = ("azure-conv", "azure-code")
# Arrival rate of a synthetic row at rate multiplier 1 (capacity search scales it).
BASE_RATE_RPS = 1.0
# Every run spans at least this much of arrivals, and at most MAX_RUN_S at the lightest load the
# capacity search tries (below that rate a row is called infeasible).
MIN_RUN_S = 20.0
MAX_RUN_S = 600.0
MISMATCH_BOUND = 0.15
# KV tokens an instance must hold for a (GPU, model, TP) to be drawn: room for a real batch.
MIN_KV_TOKENS = 100_000


@dataclass(frozen=True)
class HeldOutCase:
    """One drawn row: everything needed to rebuild it exactly."""

    index: int
    family: str
    # Synthetic rows: the spec's shape and lengths without rate and duration (set per load);
    # real-trace slices: the shipped trace's name.
    source: str
    trace_start_s: float  # real-trace slices: where in the trace the slice starts
    requests: int  # at least this many requests per run, over at least MIN_RUN_S
    diurnal_cycles: int  # diurnal rows: rate cycles over the run
    slo: SloTarget
    load_fraction: float
    gpu_key: str
    model_key: str
    tp: int
    num_prefill: int
    num_decode: int
    mismatch: ModelMismatch

    @property
    def stationary(self) -> bool:
        return self.family in STATIONARY_FAMILIES

    @property
    def hardware_label(self) -> str:
        tp = f" TP{self.tp}" if self.tp > 1 else ""
        return f"{self.gpu_key} {self.model_key}{tp} {self.num_prefill}P{self.num_decode}D"

    @property
    def name(self) -> str:
        return f"test-{self.index:03d}-{self.family}"

    def workload(self) -> Workload:
        """The row's requests at a rate multiplier (1 = BASE_RATE_RPS for a synthetic row, the
        trace's own rate for a slice): at least ``requests`` of them and at least MIN_RUN_S of
        arrivals, so a run at a high rate is not one burst the cluster drains afterwards."""
        return Workload(self.name, self.describe(), self.slo, self._build)

    def _build(self, multiplier: float) -> list[TraceRequest]:
        if self.family == "trace":
            first = load_workload(
                self.source, rate_scale=multiplier, start_s=self.trace_start_s,
                max_requests=self.requests,
            )  # fmt: skip
            if first[-1].arrival_s >= MIN_RUN_S:
                return first
            return load_workload(
                self.source, rate_scale=multiplier, start_s=self.trace_start_s,
                duration_s=MIN_RUN_S,
            )  # fmt: skip
        return load_workload(self.synthetic_spec(multiplier))

    def synthetic_spec(self, multiplier: float) -> str:
        rate_rps = BASE_RATE_RPS * multiplier
        duration_s = max(self.requests / rate_rps, MIN_RUN_S)
        spec = f"synthetic:{self.source},rate={rate_rps:.6g},duration={duration_s:.6g}"
        if self.diurnal_cycles:  # the same number of cycles over whatever duration the rate gives
            spec += f",period={duration_s / self.diurnal_cycles:.6g}"
        return spec

    def describe(self) -> str:
        if self.family == "trace":
            return f"{self.source} from {self.trace_start_s:.0f} s, >= {self.requests} requests"
        return f"{self.source}, >= {self.requests} requests"

    def believed_perf(self) -> AnalyticalPerformanceModel:
        """The model the policies plan with."""
        model = get_model(self.model_key).with_tensor_parallel(self.tp)
        return AnalyticalPerformanceModel.for_hardware(get_gpu(self.gpu_key), model)

    def true_perf(self) -> MismatchedPerformanceModel:
        """The hardware the simulation runs: the model, off by the row's mismatch."""
        return MismatchedPerformanceModel(self.believed_perf(), self.mismatch)

    def cluster(self) -> ClusterConfig:
        model = get_model(self.model_key).with_tensor_parallel(self.tp)
        return ClusterConfig(
            get_gpu(self.gpu_key),
            model,
            num_prefill=self.num_prefill,
            num_decode=self.num_decode,
            slo=self.slo,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "family": self.family,
            "stationary": self.stationary,
            "workload": self.describe(),
            "slo": {
                "ttft_ms": self.slo.ttft_ms,
                "ttft_ms_per_1k_tokens": self.slo.ttft_ms_per_1k_tokens,
                "itl_ms": self.slo.itl_ms,
            },
            "load_fraction": self.load_fraction,
            "hardware": self.hardware_label,
            "mismatch": self.mismatch.as_dict(),
        }


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _hardware_choices() -> list[tuple[str, str, int]]:
    """(GPU, model, TP) triples of the catalogs whose instances hold a real batch."""
    choices = []
    for gpu_key in sorted(GPU_CATALOG):
        for model_key in sorted(MODEL_CATALOG):
            for tp in (1, 2, 4, 8):
                model = get_model(model_key).with_tensor_parallel(tp)
                perf = AnalyticalPerformanceModel.for_hardware(get_gpu(gpu_key), model)
                if perf.kv_capacity_tokens() >= MIN_KV_TOKENS:
                    choices.append((gpu_key, model_key, tp))
                    if tp * 2 <= 8:
                        choices.append((gpu_key, model_key, tp * 2))
                    break
    return choices


def _lengths(rng: random.Random, side: str, low: float, high: float, cap: int) -> str:
    mean = _log_uniform(rng, low, high)
    median = mean * rng.uniform(0.4, 0.95)
    return f"{side}={mean:.0f},{side}_median={max(1.0, median):.0f},{side}_max={cap}"


def _slo(rng: random.Random) -> SloTarget:
    itl_ms = round(_log_uniform(rng, 20.0, 150.0), 1)
    if rng.random() < 0.5:
        return SloTarget(ttft_ms=round(_log_uniform(rng, 300.0, 3000.0)), itl_ms=itl_ms)
    return SloTarget(
        ttft_ms=round(_log_uniform(rng, 300.0, 1500.0)),
        itl_ms=itl_ms,
        ttft_ms_per_1k_tokens=round(rng.uniform(100.0, 500.0)),
    )


def draw_case(seed: int, index: int) -> HeldOutCase:
    """Row ``index`` of the split drawn from ``seed`` (each row its own stream, so a split of
    more rows extends a smaller one)."""
    rng = random.Random(f"voltana-test-split:{seed}:{index}")
    family = rng.choice(FAMILIES)
    gpu_key, model_key, tp = rng.choice(_hardware_choices())
    workload_seed = rng.randrange(1_000_000)
    source, trace_start_s = "", 0.0
    # Requests per run: cost is linear in them, and a few hundred give sub-percent SLO steps.
    requests = rng.randrange(300, 900)
    if family == "trace":
        source = rng.choice(TRACES)
        trace_start_s = round(rng.uniform(0.0, 3000.0))
    else:
        # Context limits: prompt plus answer within the smallest catalog context (40k tokens).
        lengths = ",".join(
            (
                _lengths(rng, "input", 50.0, 4000.0, 16_000),
                _lengths(rng, "output", 20.0, 800.0, 4096),
            )
        )
        shape = {
            "poisson": "",
            "bursty": f"cv={rng.uniform(2.0, 6.0):.2f},",
            "diurnal": f"depth={rng.uniform(0.5, 0.95):.2f},",
            "ramp": f"rise={rng.uniform(2.0, 8.0):.2f},",
        }[family]
        source = f"{family}:{shape}{lengths},seed={workload_seed}"
    return HeldOutCase(
        index=index,
        family=family,
        source=source,
        trace_start_s=trace_start_s,
        requests=requests,
        diurnal_cycles=rng.choice((1, 2)) if family == "diurnal" else 0,
        slo=_slo(rng),
        load_fraction=round(rng.uniform(0.2, 0.95), 3),
        gpu_key=gpu_key,
        model_key=model_key,
        tp=tp,
        num_prefill=rng.randint(1, 2),
        num_decode=rng.randint(1, 2),
        mismatch=ModelMismatch.draw(rng, MISMATCH_BOUND),
    )


@dataclass
class CaseResult:
    case: HeldOutCase
    capacity: float  # rate multiplier at static-max's SLO capacity; 0 = infeasible
    row: Row | None  # None when infeasible

    @property
    def feasible(self) -> bool:
        return self.row is not None and self.row.feasible

    def as_dict(self) -> dict[str, Any]:
        return {
            "case": self.case.as_dict(),
            "capacity": self.capacity,
            "feasible": self.feasible,
            "row": None if self.row is None else self.row.as_dict(),
        }


def run_case(
    case: HeldOutCase, policies: Sequence[str], *, seed: int = 0, router: str | None = None
) -> CaseResult:
    """Capacity under the true model, then every policy at the row's load: policies are built
    on the believed model and run on the true one."""
    if policies[0] != BASELINE:
        raise ValueError(f"the first policy must be {BASELINE} (savings are against it)")
    workload = case.workload()
    config = case.cluster()
    true_perf = case.true_perf()
    capacity = slo_capacity(
        workload, config, true_perf, min_multiplier=case.requests / MAX_RUN_S / BASE_RATE_RPS
    )
    if capacity <= 0:
        return CaseResult(case, 0.0, None)
    multiplier = capacity * case.load_fraction
    requests = workload.build(multiplier)
    suites = build_suites(
        policies, router, config.gpu, case.believed_perf(), config.slo, config.max_running_requests
    )
    _, results = compare_policies(
        policies, requests, config, true_perf, router=router, seed=seed, suites=suites
    )
    row = Row(
        case.name,
        case.hardware_label,
        f"{100 * case.load_fraction:.0f}%",
        multiplier,
        len(requests),
        results,
        config.slo,
    )
    return CaseResult(case, capacity, row)


# ---- the report --------------------------------------------------------------------------


def changes_per_gpu_minute(result: dict[str, Any], num_gpus: int) -> float | None:
    changes, duration_s = result.get("clock_changes"), result.get("duration_s")
    if changes is None or not duration_s or num_gpus <= 0:
        return None
    return float(changes) / num_gpus / (duration_s / 60.0)


def _distribution(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    array = np.asarray(values, dtype=float)
    return {
        "count": len(values),
        "min": float(array.min()),
        "p10": float(np.percentile(array, 10)),
        "median": float(np.median(array)),
        "p90": float(np.percentile(array, 90)),
        "max": float(array.max()),
    }


def split_summary(
    results: Sequence[CaseResult],
    *,
    policy: str = "voltana",
    fixed_rival: Callable[[Row], dict[str, Any] | None],
) -> dict[str, Any]:
    """What the issue asks of a test split: the share of feasible rows where ``policy`` meets
    the bar and the worst shortfall, the gain over the same-router fixed clocks
    (``fixed_rival`` picks that row's result) on stationary and non-stationary rows, the lead
    over the strongest qualified paper ablation, clock changes per GPU per minute, and the
    worst rows."""
    feasible = [r for r in results if r.feasible and r.row is not None]
    gains: list[tuple[float, CaseResult]] = []
    leads: list[float] = []
    leads_at_bar: list[bool] = []  # a lead of >= 3 points by a policy that meets the bar
    shortfalls: list[tuple[float, CaseResult]] = []
    changes: list[float] = []
    met = 0
    for result in feasible:
        row = result.row
        assert row is not None
        verdict = row.verdict(policy)
        chosen = row.result(policy)
        baseline = row.result(BASELINE)
        bar = min(0.99, baseline["slo_attainment"] - 0.005)
        if verdict["slo_ok"]:
            met += 1
        shortfalls.append((100 * (chosen["slo_attainment"] - bar), result))
        rival = fixed_rival(row)
        if rival is not None:
            gain = 100 * (chosen["energy_savings_vs_first"] - rival["energy_savings_vs_first"])
            gains.append((gain, result))
        if verdict["lead_points"] is not None:
            leads.append(verdict["lead_points"])
            leads_at_bar.append(bool(verdict["slo_ok"]) and verdict["lead_points"] >= 3.0)
        gpus = (result.case.num_prefill + result.case.num_decode) * result.case.tp
        per_minute = changes_per_gpu_minute(chosen, gpus)
        if per_minute is not None:
            changes.append(per_minute)
    stationary = [g for g, r in gains if r.case.stationary]
    moving = [g for g, r in gains if not r.case.stationary]
    worst = sorted(shortfalls, key=lambda item: item[0])[:5]
    worst_gain = sorted(gains, key=lambda item: item[0])[:5]
    return {
        "rows": len(results),
        "feasible_rows": len(feasible),
        "meets_bar": met,
        "meets_bar_share": met / len(feasible) if feasible else None,
        "worst_points_under_bar": min((s for s, _ in shortfalls), default=None),
        "gain_vs_fixed_points": {
            "all": _distribution([g for g, _ in gains]),
            "stationary": _distribution(stationary),
            "non_stationary": _distribution(moving),
        },
        "lead_vs_paper_points": _distribution(leads),
        # A row where the policy misses the bar counts as no lead, whatever it saved.
        "lead_vs_paper_at_least_3pt_share": (
            sum(leads_at_bar) / len(leads_at_bar) if leads_at_bar else None
        ),
        "clock_changes_per_gpu_minute": _distribution(changes),
        "worst_slo_rows": [
            {"points_vs_bar": s, "row": r.case.name, "hardware": r.case.hardware_label}
            for s, r in worst
        ],
        "worst_gain_rows": [
            {"gain_points": g, "row": r.case.name, "hardware": r.case.hardware_label}
            for g, r in worst_gain
        ],
    }


def format_split_summary(summary: dict[str, Any], rival: str) -> str:
    """The summary of `split_summary` as lines of text (bench output and docs)."""

    def dist(value: dict[str, float] | None, unit: str = " pt") -> str:
        if not value:
            return "-"
        sign = "+" if unit else ""  # points are signed, counts are not
        parts = [f"{name} {value[name]:{sign}.1f}" for name in ("min", "p10", "median", "p90")]
        return f"{', '.join(parts)}, max {value['max']:{sign}.1f}{unit} ({value['count']} rows)"

    share = summary["meets_bar_share"]
    lines = [
        f"feasible rows: {summary['feasible_rows']} of {summary['rows']} drawn",
        "voltana meets the bar on "
        + ("-" if share is None else f"{summary['meets_bar']} ({100 * share:.1f} %)")
        + " of them; worst row "
        + (
            "-"
            if summary["worst_points_under_bar"] is None
            else f"{summary['worst_points_under_bar']:+.2f} pt vs the bar"
        ),
        f"gain over {rival} (same router), stationary rows: "
        + dist(summary["gain_vs_fixed_points"]["stationary"]),
        f"gain over {rival} (same router), non-stationary rows: "
        + dist(summary["gain_vs_fixed_points"]["non_stationary"]),
        "lead over the strongest qualified paper ablation: "
        + dist(summary["lead_vs_paper_points"])
        + (
            ""
            if summary["lead_vs_paper_at_least_3pt_share"] is None
            else f"; >= 3 pt on {100 * summary['lead_vs_paper_at_least_3pt_share']:.0f} %"
        ),
        "voltana's clock changes per GPU per minute: "
        + dist(summary["clock_changes_per_gpu_minute"], ""),
        "worst SLO rows: "
        + ", ".join(
            f"{r['row']} ({r['hardware']}) {r['points_vs_bar']:+.2f} pt"
            for r in summary["worst_slo_rows"]
        ),
        "worst gain rows: "
        + ", ".join(
            f"{r['row']} ({r['hardware']}) {r['gain_points']:+.1f} pt"
            for r in summary["worst_gain_rows"]
        ),
    ]
    return "\n".join(lines)
