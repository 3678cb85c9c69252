"""The held-out test split: rows drawn from a seed within the documented ranges, a model mismatch
that really separates the simulated hardware from the policies' model, and the split's report."""

from __future__ import annotations

import random

import numpy as np
import pytest

from voltana.contract.state import SloTarget
from voltana.errors import ConfigError
from voltana.hardware import get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.perf.mismatch import MismatchedPerformanceModel, ModelMismatch, PhaseMismatch
from voltana.perf.model import calibrated_clock_range_mhz
from voltana.sim.cluster import ClusterConfig
from voltana.sim.evaluate import Row
from voltana.sim.heldout import (
    FAMILIES,
    MIN_RUN_S,
    CaseResult,
    HeldOutCase,
    changes_per_gpu_minute,
    draw_case,
    run_case,
    split_summary,
)
from voltana.sim.run import policy_context
from voltana.workloads import load_workload
from voltana.workloads.synthetic_spec import format_synthetic_spec, parse_synthetic_spec

pytestmark = pytest.mark.unit

A100 = get_gpu("a100-80g")
BELIEVED = AnalyticalPerformanceModel.for_hardware(A100, get_model("llama-3.1-8b"))


def test_a_split_is_the_same_for_the_same_seed_and_new_for_another() -> None:
    assert [draw_case(5, i) for i in range(10)] == [draw_case(5, i) for i in range(10)]
    assert [draw_case(5, i) for i in range(10)] != [draw_case(6, i) for i in range(10)]


def test_drawn_rows_stay_within_the_documented_ranges() -> None:
    cases = [draw_case(123, i) for i in range(300)]
    assert {case.family for case in cases} == set(FAMILIES)
    for case in cases:
        assert 20.0 <= case.slo.itl_ms <= 150.0
        assert 300.0 <= case.slo.ttft_ms <= 3000.0
        assert case.slo.ttft_ms_per_1k_tokens == 0 or 100 <= case.slo.ttft_ms_per_1k_tokens <= 500
        assert 0.2 <= case.load_fraction <= 0.95
        assert 1 <= case.num_prefill <= 2 and 1 <= case.num_decode <= 2
        for phase in (case.mismatch.prefill, case.mismatch.decode):
            for factor in (
                phase.latency_at_min,
                phase.latency_at_max,
                phase.power_at_min,
                phase.power_at_max,
            ):
                assert 0.85 <= factor <= 1.15
    # No row assumes a perfect model.
    assert not any(case.mismatch.is_exact for case in cases)


@pytest.mark.parametrize("index", range(8))
def test_a_rows_workload_has_its_requests_and_its_minimum_span_at_any_rate(index: int) -> None:
    case = draw_case(99, index)
    workload = case.workload()
    for multiplier in (2.0, 50.0):
        requests = workload.build(multiplier)
        span_s = requests[-1].arrival_s
        assert len(requests) >= case.requests or span_s >= MIN_RUN_S * 0.9
        assert span_s >= MIN_RUN_S * 0.9 or len(requests) >= case.requests


def test_the_mismatch_scales_each_phase_by_its_factor_at_the_clock() -> None:
    mismatch = ModelMismatch(
        prefill=PhaseMismatch(latency_at_min=1.1, latency_at_max=0.9, power_at_min=1.0),
        decode=PhaseMismatch(power_at_min=0.85, power_at_max=1.15),
    )
    true = MismatchedPerformanceModel(BELIEVED, mismatch)
    low, high = A100.min_sm_clock_mhz, A100.max_sm_clock_mhz
    middle = (low + high) / 2
    for clock, latency_factor in ((low, 1.1), (high, 0.9), (middle, 1.0)):
        believed = BELIEVED.prefill_iteration(2048, clock)
        actual = true.prefill_iteration(2048, clock)
        assert actual.latency_s == pytest.approx(believed.latency_s * latency_factor)
        assert actual.power_w == pytest.approx(believed.power_w)
    decode_believed = BELIEVED.decode_iteration(32, 32_000, high)
    decode_true = true.decode_iteration(32, 32_000, high)
    assert decode_true.latency_s == pytest.approx(decode_believed.latency_s)
    assert decode_true.power_w == pytest.approx(decode_believed.power_w * 1.15)
    assert true.idle_power_w(low) == pytest.approx(BELIEVED.idle_power_w(low) * 0.85)
    assert true.kv_capacity_tokens() == BELIEVED.kv_capacity_tokens()
    exact = MismatchedPerformanceModel(BELIEVED, ModelMismatch())
    assert exact.decode_iteration(8, 4000, 1005) == BELIEVED.decode_iteration(8, 4000, 1005)


def test_the_true_hardware_keeps_the_believed_models_calibrated_range() -> None:
    """Every clock set is limited to where the model rests on measurements: a fixed-clock rival
    searched on the true hardware, and the extrapolated-energy share, ask the true model. (They
    took the GPU's whole range: the first test split's static-best ran A100 decode at 225 MHz
    against a voltana held to 855 MHz, and reported no extrapolated energy.)"""
    true = MismatchedPerformanceModel(BELIEVED, ModelMismatch.draw(random.Random(1)))
    assert calibrated_clock_range_mhz(true) == calibrated_clock_range_mhz(BELIEVED) == (855, 1410)
    allowed = policy_context(ClusterConfig(A100, BELIEVED.model), true).supported_clocks_mhz
    assert min(allowed) == 855 and max(allowed) == 1410
    opted_in = ClusterConfig(A100, BELIEVED.model, allow_extrapolated_clocks=True)
    assert min(policy_context(opted_in, true).supported_clocks_mhz) == A100.min_sm_clock_mhz


def _cheap_case(**changes: object) -> HeldOutCase:
    fields: dict[str, object] = {
        "index": 0,
        "family": "poisson",
        "source": "poisson:input=200,input_median=150,output=60,output_median=40,seed=4",
        "trace_start_s": 0.0,
        "requests": 300,
        "diurnal_cycles": 0,
        "slo": SloTarget(ttft_ms=1500.0, itl_ms=100.0),
        "load_fraction": 0.5,
        "gpu_key": "a100-80g",
        "model_key": "llama-3.1-8b",
        "tp": 1,
        "num_prefill": 1,
        "num_decode": 1,
        "mismatch": ModelMismatch(decode=PhaseMismatch(latency_at_min=1.15, latency_at_max=1.1)),
    }
    fields.update(changes)
    return HeldOutCase(**fields)  # type: ignore[arg-type]


@pytest.mark.integration
def test_a_case_runs_its_policies_on_the_true_hardware_at_its_load() -> None:
    case = _cheap_case()
    result = run_case(case, ["static-max", "static:1005"])
    assert result.capacity > 0 and result.feasible and result.row is not None
    assert result.row.multiplier == pytest.approx(result.capacity * case.load_fraction)
    static_max = result.row.result("static-max")
    assert static_max["slo_attainment"] >= 0.99
    # The run used the true (slower-decoding) hardware: ITL above what the model predicts for
    # a lone request at the same clock.
    believed_itl_ms = BELIEVED.decode_iteration(1, 200, A100.max_sm_clock_mhz).latency_s * 1e3
    assert static_max["itl_ms"]["p50"] > believed_itl_ms * 1.05
    with pytest.raises(ValueError, match="static-max"):
        run_case(case, ["static:1005", "static-max"])


def _row(name: str, voltana: tuple[float, float], rival: tuple[float, float]) -> Row:
    def result(policy: str, saved: float, slo: float) -> dict[str, object]:
        return {
            "policy": policy,
            "energy_j": 1000.0 * (1 - saved),
            "energy_savings_vs_first": saved,
            "slo_attainment": slo,
            "clock_changes": 120,
            "duration_s": 60.0,
        }

    return Row(
        name,
        "hw",
        "50%",
        1.0,
        100,
        [
            result("static-max", 0.0, 1.0),
            result("static-best", rival[0], rival[1]),
            result("voltana-paper", 0.10, 0.995),
            result("voltana", voltana[0], voltana[1]),
        ],
        SloTarget(),
    )


def test_the_split_summary_counts_the_bar_the_gains_and_the_changes() -> None:
    stationary = _cheap_case(index=1)
    moving = _cheap_case(index=2, family="bursty")
    results = [
        CaseResult(stationary, 3.0, _row("a", (0.30, 0.995), (0.31, 0.999))),
        CaseResult(moving, 3.0, _row("b", (0.40, 0.97), (0.30, 0.999))),
        CaseResult(_cheap_case(index=3), 0.0, None),
    ]
    summary = split_summary(results, fixed_rival=lambda row: row.result("static-best"))
    assert summary["rows"] == 3 and summary["feasible_rows"] == 2
    assert summary["meets_bar"] == 1 and summary["meets_bar_share"] == 0.5
    assert summary["worst_points_under_bar"] == pytest.approx(-2.0)
    assert summary["gain_vs_fixed_points"]["stationary"]["median"] == pytest.approx(-1.0)
    assert summary["gain_vs_fixed_points"]["non_stationary"]["median"] == pytest.approx(10.0)
    # Leads of 30 - 10 and 40 - 10 points; only row "a" meets the bar, so only its lead counts.
    assert summary["lead_vs_paper_points"]["median"] == pytest.approx(25.0)
    assert summary["lead_vs_paper_at_least_3pt_share"] == 0.5
    # 120 changes over a minute on 2 GPUs.
    assert summary["clock_changes_per_gpu_minute"]["median"] == pytest.approx(60.0)
    assert changes_per_gpu_minute({"clock_changes": 10}, 2) is None


def test_diurnal_arrivals_swing_around_their_mean_rate() -> None:
    requests = load_workload("synthetic:diurnal:rate=20,duration=600,depth=0.8,seed=2")
    assert len(requests) == pytest.approx(20 * 600, rel=0.05)
    arrivals_s = np.array([r.arrival_s for r in requests])
    counts, _ = np.histogram(arrivals_s, bins=6, range=(0, 600))
    # One cycle starting at the trough: the middle is busier than either end.
    assert counts[2] > 2 * counts[0] and counts[3] > 2 * counts[5]
    spec = parse_synthetic_spec("diurnal:rate=5,duration=100,period=50,depth=0.3")
    assert parse_synthetic_spec(format_synthetic_spec(spec)) == spec
    with pytest.raises(ConfigError, match="diurnal"):
        parse_synthetic_spec("poisson:rate=5,duration=100,depth=0.3")
    with pytest.raises(ConfigError, match="depth"):
        parse_synthetic_spec("diurnal:rate=5,duration=100,depth=1.5")
