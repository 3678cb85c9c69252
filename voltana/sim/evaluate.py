"""One evaluation matrix: every policy over workloads x loads x hardware, against the best fixed
clock in hindsight, with a row whose baseline itself misses its SLO called infeasible.

A load level is a fraction of the static-max cluster's *SLO capacity* for that workload and
hardware: the largest rate multiplier at which `static-max` still attains 99% of the joint SLO
(found by bisection). So "heavy" means the same thing for a chat trace and a code trace.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from voltana.contract.state import SloTarget
from voltana.errors import UnknownNameError
from voltana.hardware import get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.perf.model import PerformanceModel
from voltana.report import EXTRAPOLATION_NOTE, extrapolation_mark, summarize
from voltana.sim.cluster import ClusterConfig
from voltana.sim.compare import compare_policies, run_policy
from voltana.workloads import load_workload
from voltana.workloads.request import TraceRequest
from voltana.workloads.synthetic import generate_synthetic
from voltana.workloads.synthetic_spec import is_synthetic_spec, parse_synthetic_spec

# The attainment a baseline must reach for a row to be feasible, and that defines capacity.
FEASIBLE_ATTAINMENT = 0.99
LOADS: dict[str, float] = {"light": 0.3, "moderate": 0.6, "heavy": 0.9}
BASELINE = "static-max"
# Every policy of a row, in order: the baseline first (savings are against it).
POLICIES = (
    BASELINE,
    "static-best",  # round-robin, the static policies' own router
    "static-best+voltana-router",  # voltana's router: the baseline voltana is judged against
    "voltana-paper",
    "voltana-paper-m0",  # ITL margin 0: binds only where a clock below the candidates' is used
    "voltana-paper+full-range",
    "voltana-paper-m0+full-range",
    "voltana-paper+voltana-router",
    "voltana-paper+full-range+voltana-router",
    "voltana-paper-m0+full-range+voltana-router",
    "voltana",
    "voltana+ecoroute-router",
)
PAPER_ABLATIONS = tuple(p for p in POLICIES if p.startswith("voltana-paper"))


@dataclass(frozen=True)
class Workload:
    """A workload at rate multiplier 1, and the SLO it is judged by."""

    name: str
    description: str
    slo: SloTarget
    # Requests at a given rate multiplier (a trace is time-compressed, a synthetic stream has
    # its rate scaled).
    build: Callable[[float], list[TraceRequest]]


def _synthetic(spec: str, base_rate_rps: float) -> Callable[[float], list[TraceRequest]]:
    return scaled_workload(f"synthetic:{spec},rate={base_rate_rps:g}")


def scaled_workload(
    source: str, max_requests: int | None = None
) -> Callable[[float], list[TraceRequest]]:
    """Requests of ``source`` at a rate multiplier: a trace is time-compressed; a synthetic
    stream keeps its duration and draws arrivals at the scaled rate (compressing it would cut
    it short of its steady state)."""
    if is_synthetic_spec(source):
        spec = parse_synthetic_spec(source)

        def build(multiplier: float) -> list[TraceRequest]:
            requests = generate_synthetic(replace(spec, rate_rps=spec.rate_rps * multiplier))
            return requests[:max_requests] if max_requests else requests

        return build

    def build_trace(multiplier: float) -> list[TraceRequest]:
        return load_workload(source, rate_scale=multiplier, max_requests=max_requests)

    return build_trace


def _trace(kind: str, max_requests: int) -> Callable[[float], list[TraceRequest]]:
    return scaled_workload(f"azure-{kind}", max_requests)  # shipped with the package


def workloads(duration_s: float = 120.0, max_requests: int = 2500) -> dict[str, Workload]:
    """The matrix' workloads; synthetic ones last ``duration_s`` at multiplier 1."""
    chat_slo = SloTarget(ttft_ms=800.0, itl_ms=50.0)
    lmsys = "input=100,input_median=70,output=215,output_median=150,seed=1"
    # ShareGPT-like: longer prompts (the authors' scripts note a 250-token mean input).
    sharegpt = "input=250,input_median=150,output=250,output_median=180,seed=1"
    return {
        w.name: w
        for w in (
            Workload(
                "azure-conv",
                "Azure LLM 2023 conversation trace (first requests)",
                chat_slo,
                _trace("conv", max_requests),
            ),
            Workload(
                "azure-code",
                "Azure LLM 2023 code trace (first 1000 requests; long prompts, short answers)",
                # Prompts reach 7.4k tokens (~0.8 s of prefill at max clock on an A100), and the
                # trace stamps 400k prompt tokens within 10 s (~19 s of prefill for two A100s):
                # with a 500 ms base even a near-idle static-max misses 1-3 % of requests, so
                # the base is 1 s. 1000 requests keep the light-load replay (long, once
                # time-stretched below the bursts' capacity) affordable.
                SloTarget(ttft_ms=1000.0, itl_ms=50.0, ttft_ms_per_1k_tokens=250.0),
                _trace("code", min(max_requests, 1000)),
            ),
            Workload(
                "lmsys-like",
                "LMSYS-Chat-like Poisson (input 100/70, output 215/150 mean/median)",
                chat_slo,
                _synthetic(f"poisson:duration={duration_s:g},{lmsys}", 10.0),
            ),
            Workload(
                "sharegpt-like",
                "ShareGPT-like Poisson (input 250/150, output 250/180 mean/median)",
                chat_slo,
                _synthetic(f"poisson:duration={duration_s:g},{sharegpt}", 10.0),
            ),
            Workload(
                "bursty",
                "bursty arrivals (gamma gaps, cv 4), Azure-conversation lengths",
                SloTarget(ttft_ms=1000.0, itl_ms=50.0),
                _synthetic(f"bursty:cv=4,duration={duration_s:g},seed=2", 2.0),
            ),
            Workload(
                "ramp",
                "Poisson whose rate rises 4x over the run, Azure-conversation lengths",
                chat_slo,
                _synthetic(f"ramp:rise=4,duration={duration_s:g},seed=3", 2.0),
            ),
        )
    }


@dataclass(frozen=True)
class Hardware:
    gpu_key: str
    model_key: str
    tp: int = 1

    @property
    def label(self) -> str:
        return f"{self.gpu_key} {self.model_key}" + (f" TP{self.tp}" if self.tp > 1 else "")

    def perf(self) -> AnalyticalPerformanceModel:
        model = get_model(self.model_key).with_tensor_parallel(self.tp)
        return AnalyticalPerformanceModel.for_hardware(get_gpu(self.gpu_key), model)

    def cluster(self, slo: SloTarget, **overrides: Any) -> ClusterConfig:
        model = get_model(self.model_key).with_tensor_parallel(self.tp)
        return replace(ClusterConfig(get_gpu(self.gpu_key), model, slo=self.slo(slo)), **overrides)

    def slo(self, slo: SloTarget) -> SloTarget:
        """A workload's SLO on this hardware: its TTFT targets stretched by how much slower
        this hardware prefills than the reference (A100, Llama-3.1-8B), never tightened - a
        32B model on two A100s cannot meet an 8B model's TTFT on long prompts."""
        stretch = max(1.0, self.prefill_ms(2048) / REFERENCE.prefill_ms(2048))
        return replace(
            slo,
            ttft_ms=slo.ttft_ms * stretch,
            ttft_ms_per_1k_tokens=slo.ttft_ms_per_1k_tokens * stretch,
        )

    def prefill_ms(self, tokens: int) -> float:
        perf = self.perf()
        return perf.prefill_iteration(tokens, perf.gpu.max_sm_clock_mhz).latency_s * 1e3


REFERENCE = Hardware("a100-80g", "llama-3.1-8b")
HARDWARE = (
    REFERENCE,
    Hardware("h100-80g", "llama-3.1-8b"),
    Hardware("a100-80g", "qwen3-32b", tp=2),
)


def baseline_attainment(
    requests: Sequence[TraceRequest],
    config: ClusterConfig,
    perf: PerformanceModel,
    policy: str = BASELINE,
) -> float:
    result = run_policy(policy, requests, config, perf)
    return float(summarize(result.outcome(), config.slo)["slo_attainment"])


def slo_capacity(
    workload: Workload,
    config: ClusterConfig,
    perf: PerformanceModel,
    *,
    steps: int = 7,
    min_multiplier: float = 1 / 64,
    max_multiplier: float = 1024.0,
    on_probe: Callable[[float, float], None] | None = None,
) -> float:
    """The largest rate multiplier (within ~5%) at which static-max attains 99% of the SLO;
    0 when even the lightest tried load (about ``min_multiplier``) misses it (the workload is
    infeasible there). ``on_probe(multiplier, attainment)`` hears of each replay (about a
    dozen)."""

    def attainment(multiplier: float) -> float:
        attained = baseline_attainment(workload.build(multiplier), config, perf)
        if on_probe is not None:
            on_probe(multiplier, attained)
        return attained

    low, high = 0.0, 1.0
    # Grow until a miss brackets the capacity (or shrink until a hit).
    while attainment(high) >= FEASIBLE_ATTAINMENT:
        low, high = high, high * 2.0
        if high > max_multiplier:
            return low
    if low == 0.0:
        probe = high
        while probe > min_multiplier:
            probe /= 2.0
            if attainment(probe) >= FEASIBLE_ATTAINMENT:
                low, high = probe, probe * 2.0
                break
        else:
            return 0.0
    for _ in range(steps):
        middle = math.sqrt(low * high)
        if attainment(middle) >= FEASIBLE_ATTAINMENT:
            low = middle
        else:
            high = middle
    return low


@dataclass
class Row:
    workload: str
    hardware: str
    load: str
    multiplier: float
    requests: int
    results: list[dict[str, Any]] = field(default_factory=list)
    slo: SloTarget | None = None

    def result(self, policy: str) -> dict[str, Any]:
        for row in self.results:
            if row["policy"] == policy or row["policy"].startswith(f"{policy}("):
                return row
        raise UnknownNameError("policy in row", policy, [r["policy"] for r in self.results])

    @property
    def feasible(self) -> bool:
        return bool(self.result(BASELINE)["slo_attainment"] >= FEASIBLE_ATTAINMENT)

    def verdict(self, policy: str = "voltana") -> dict[str, Any]:
        """Does ``policy`` meet the targets on this row? (SLO at least min(99%, static-max -
        0.5 pt); energy no worse than the static-best searched for the same router; margin
        over the strongest paper ablation - the best of all paper variants - that meets the
        same SLO bar.)"""
        baseline = self.result(BASELINE)
        bar = min(FEASIBLE_ATTAINMENT, baseline["slo_attainment"] - 0.005)
        chosen = self.result(policy)
        gain = chosen.get("energy_savings_vs_static_best")
        present = {r["policy"]: r for r in self.results}
        qualified = [
            present[name]
            for name in PAPER_ABLATIONS
            if name in present and present[name]["slo_attainment"] >= bar
        ]
        strongest = max(qualified, key=lambda r: r["energy_savings_vs_first"], default=None)
        return {
            "feasible": self.feasible,
            "slo_ok": chosen["slo_attainment"] >= bar,
            "beats_static_best": gain is None or gain >= -0.0005,
            # The headline: energy saved against static-best with the same router.
            "savings_vs_static_best": gain,
            "clock_changes_per_gpu_per_min": chosen.get("clock_changes_per_gpu_per_min"),
            "strongest_ablation": strongest["policy"] if strongest else None,
            "lead_points": (
                100 * (chosen["energy_savings_vs_first"] - strongest["energy_savings_vs_first"])
                if strongest
                else None
            ),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "hardware": self.hardware,
            "load": self.load,
            "multiplier": self.multiplier,
            "requests": self.requests,
            "slo": None
            if self.slo is None
            else {
                "ttft_ms": self.slo.ttft_ms,
                "itl_ms": self.slo.itl_ms,
                "ttft_ms_per_1k_tokens": self.slo.ttft_ms_per_1k_tokens,
            },
            "feasible": self.feasible,
            "verdict": self.verdict()
            if any(r["policy"] == "voltana" for r in self.results)
            else None,
            "results": self.results,
        }


def run_row(
    workload: Workload,
    hardware: Hardware,
    load: str,
    multiplier: float,
    policies: Sequence[str] = POLICIES,
    *,
    seed: int = 0,
    config_overrides: dict[str, Any] | None = None,
) -> Row:
    perf = hardware.perf()
    config = hardware.cluster(workload.slo, **(config_overrides or {}))
    requests = workload.build(multiplier)
    _, results = compare_policies(policies, requests, config, perf, seed=seed)
    return Row(workload.name, hardware.label, load, multiplier, len(requests), results, config.slo)


def format_matrix(rows: Sequence[Row]) -> str:
    """One line per row and policy: energy saved vs static-max and joint SLO attainment."""
    header = (
        f"{'workload':<14} {'hardware':<24} {'load':<9} {'x rate':>7}  {'policy':<40} "
        f"{'kJ':>7} {'saved':>7} {'vs best':>7} {'SLO':>7} {'TTFT':>7} {'ITL':>7} "
        f"{'chg/min':>7}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        note = "" if row.feasible else "  (infeasible: static-max misses 99%)"
        for n, result in enumerate(row.results):
            name = row.workload if len(row.workload) <= 14 else row.workload[:13] + "~"
            prefix = (
                f"{name:<14} {row.hardware:<24} {row.load:<9} {row.multiplier:>7.2f}"
                if n == 0
                else " " * 57
            )
            saved = result["energy_savings_vs_first"]
            gain = result.get("energy_savings_vs_static_best")
            changes = result.get("clock_changes_per_gpu_per_min")
            policy = result["policy"] + extrapolation_mark(result)
            lines.append(
                f"{prefix}  {policy:<40} {result['energy_j'] / 1e3:>7.1f} "
                f"{'' if saved is None else f'{100 * saved:+6.1f}%':>7} "
                f"{'' if gain is None else f'{100 * gain:+6.1f}%':>7} "
                f"{100 * result['slo_attainment']:>6.2f}% {100 * result['ttft_attainment']:>6.2f}% "
                f"{100 * result['itl_attainment']:>6.2f}% "
                f"{'-' if changes is None else f'{changes:.1f}':>7}" + (note if n == 0 else "")
            )
    lines.append(
        "saved: vs static-max; vs best: vs the static-best searched for the same router; "
        "chg/min: clock changes per GPU per minute"
    )
    if any(extrapolation_mark(r) for row in rows for r in row.results):
        lines.append(EXTRAPOLATION_NOTE)
    return "\n".join(lines)
