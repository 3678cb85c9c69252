"""static-best: the pruned search against brute force, per router, over every allowed clock;
and what simulated rows report about clocks (residency, extrapolated energy, changes/GPU/min)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from voltana.contract.state import SloTarget
from voltana.hardware import get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.report import format_table, headline_lines
from voltana.sim.cluster import ClusterConfig
from voltana.sim.compare import compare_policies, run_policy
from voltana.sim.static_best import exhaustive_static_best, find_static_best
from voltana.workloads.synthetic import generate_synthetic
from voltana.workloads.synthetic_spec import parse_synthetic_spec

pytestmark = pytest.mark.unit

MODEL = get_model("llama-3.1-8b")
# A coarse clock grid (7 clocks, 49 pairs) keeps the brute force affordable.
COARSE_GPU = replace(get_gpu("a100-80g"), key="a100-coarse", sm_clock_step_mhz=200)
CHAT = "input=100,input_median=70,output=215,output_median=150,seed=1"


def requests(rate_rps: float, duration_s: float = 20.0) -> list:  # type: ignore[type-arg]
    spec = f"synthetic:poisson:rate={rate_rps:g},duration={duration_s:g},{CHAT}"
    return generate_synthetic(parse_synthetic_spec(spec))


def coarse_case(slo: SloTarget) -> tuple[list, ClusterConfig, AnalyticalPerformanceModel]:  # type: ignore[type-arg]
    perf = AnalyticalPerformanceModel.for_hardware(COARSE_GPU, MODEL)
    # No latency noise: attainment is then a function of the clocks alone.
    config = ClusterConfig(COARSE_GPU, MODEL, slo=slo, latency_jitter=0.0)
    return requests(20.0, duration_s=8.0), config, perf


@pytest.mark.parametrize("router", [None, "voltana"])
def test_the_search_finds_the_brute_force_optimum_with_fewer_runs(router: str | None) -> None:
    reqs, config, perf = coarse_case(SloTarget(ttft_ms=100.0, itl_ms=25.0))
    exact = exhaustive_static_best(reqs, config, perf, router=router)
    clocks = COARSE_GPU.supported_sm_clocks_mhz
    runs = exact.evaluated
    # The tight TTFT target binds: low prefill clocks miss it, so the search is not trivial.
    assert runs[clocks[0], clocks[-1]].attainment < exact.target_attainment
    # (M) in the prefill clock at the top decode clock holds on this case (what the search's
    # bisection for the lowest usable prefill clock assumes).
    series = [runs[p, clocks[-1]].attainment for p in clocks]
    assert series == sorted(series), series
    found = find_static_best(reqs, config, perf, router=router)
    assert (found.prefill_mhz, found.decode_mhz) == (exact.prefill_mhz, exact.decode_mhz)
    assert found.result.energy_j == pytest.approx(exact.result.energy_j)
    assert found.simulations < exact.simulations / 2
    assert found.label().startswith("static-best+voltana-router(" if router else "static-best(")


def test_the_search_stays_inside_the_calibrated_range_unless_allowed() -> None:
    gpu = get_gpu("a100-80g")
    perf = AnalyticalPerformanceModel.for_hardware(gpu, MODEL)
    config = ClusterConfig(gpu, MODEL, slo=SloTarget(ttft_ms=800.0, itl_ms=50.0))
    reqs = requests(4.0, duration_s=10.0)
    best = find_static_best(reqs, config, perf)
    assert all(c >= 855 for pair in best.evaluated for c in pair)
    # A light load is met at the lowest calibrated clocks: nothing below them is tried.
    assert (best.prefill_mhz, best.decode_mhz) == (855, 855)
    wide = find_static_best(reqs, replace(config, allow_extrapolated_clocks=True), perf)
    assert min(c for pair in wide.evaluated for c in pair) < 855
    assert wide.result.energy_j < best.result.energy_j


def test_rows_report_residency_extrapolated_energy_and_changes_per_gpu_minute() -> None:
    gpu = get_gpu("a100-80g")
    perf = AnalyticalPerformanceModel.for_hardware(gpu, MODEL)
    config = ClusterConfig(gpu, MODEL, allow_extrapolated_clocks=True)
    reqs = requests(4.0, duration_s=10.0)
    result = run_policy("static:1050/240", reqs, config, perf)
    row = result.outcome().extra
    duration_s = result.end_s - result.start_s
    residency = row["clock_residency_s"]
    # Both instances of each phase, the whole run, less the clock-change delay at t0.
    assert sum(residency["prefill"].values()) == pytest.approx(2 * duration_s)
    assert residency["decode"]["240"] == pytest.approx(2 * duration_s - 2 * 0.021, abs=1e-3)
    assert set(residency["prefill"]) == {"1410", "1050"}
    decode_j = sum(
        e
        for i, e in zip(result.instance_ids, result.energy_j_by_instance, strict=True)
        if "decode" in i
    )
    # Every decode joule but the first 21 ms at 1410 MHz was spent at an extrapolated 240 MHz.
    assert row["extrapolated_energy_share"] == pytest.approx(decode_j / result.energy_j, rel=0.01)
    # Each of the 4 GPUs changed its clock once (at t0).
    assert row["clock_changes_per_gpu_per_min"] == pytest.approx(1 / (duration_s / 60))
    calibrated = run_policy(
        "static:1050/900", reqs, replace(config, allow_extrapolated_clocks=False), perf
    )
    assert calibrated.outcome().extra["extrapolated_energy_share"] == 0.0


def test_each_policy_is_compared_with_the_static_best_of_its_own_router() -> None:
    gpu = get_gpu("a100-80g")
    perf = AnalyticalPerformanceModel.for_hardware(gpu, MODEL)
    config = ClusterConfig(gpu, MODEL, slo=SloTarget(ttft_ms=800.0, itl_ms=50.0))
    names = ["static-max", "static-best", "static-best+voltana-router", "voltana", "voltana-paper"]
    _, rows = compare_policies(names, requests(4.0, duration_s=10.0), config, perf)
    by_name = {row["policy"].split("(")[0]: row for row in rows}
    voltana, best = by_name["voltana"], by_name["static-best+voltana-router"]
    assert best["router"] == voltana["router"] == "voltana"
    assert by_name["static-best"]["router"] == by_name["static-max"]["router"] == "round-robin"
    assert voltana["energy_savings_vs_static_best"] == pytest.approx(
        1 - voltana["energy_j"] / best["energy_j"]
    )
    assert by_name["voltana-paper"]["energy_savings_vs_static_best"] is None  # ecoroute: none
    assert best["static_best"]["simulations"] > 1
    table = format_table(rows)
    assert "savings vs static-best, same router" in table and "clock changes / GPU / min" in table
    assert any(
        line.startswith("voltana: ") and "static-best+voltana-router(" in line
        for line in headline_lines(rows)
    )
