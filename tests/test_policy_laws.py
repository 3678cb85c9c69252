"""Each frequency law and router on constructed states; predictor accuracy on held-out points."""

from __future__ import annotations

import numpy as np
import pytest

from voltana.hardware import get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.perf.profile import ProfiledPerformanceModel, sweep_profile
from voltana.policy.base import PolicyContext, PolicySuite
from voltana.policy.common import fit_predictor, full_range_clocks_mhz, paper_candidate_clocks_mhz
from voltana.policy.paper import build_paper_suite
from voltana.policy.state import ClusterSnapshot, InstanceState, Phase, RequestSpec, SloTarget
from voltana.policy.voltana import build_voltana_suite

pytestmark = pytest.mark.unit

GPU = get_gpu("a100-80g")
PERF = AnalyticalPerformanceModel.for_hardware(GPU, get_model("llama-3.1-8b"))
SLO = SloTarget(ttft_ms=800.0, itl_ms=50.0)
CONTEXT = PolicyContext(GPU, PERF, SLO)


@pytest.fixture(params=["voltana-paper", "voltana"])
def suite(request: pytest.FixtureRequest) -> PolicySuite:
    build = build_paper_suite if request.param == "voltana-paper" else build_voltana_suite
    return build(CONTEXT, None)


def prefill_state(**fields: object) -> InstanceState:
    base: dict[str, object] = {
        "instance_id": "prefill-0",
        "phase": Phase.PREFILL,
        "gpu_key": GPU.key,
        "sm_clock_mhz": GPU.max_sm_clock_mhz,
        "last_activity_s": 100.0,
    }
    return InstanceState(**{**base, **fields})  # type: ignore[arg-type]


def decode_state(instance_id: str = "decode-0", **fields: object) -> InstanceState:
    base: dict[str, object] = {
        "instance_id": instance_id,
        "phase": Phase.DECODE,
        "gpu_key": GPU.key,
        "sm_clock_mhz": GPU.max_sm_clock_mhz,
        "kv_tokens_capacity": PERF.kv_capacity_tokens(),
        "max_running_requests": 1024,
        "last_activity_s": 100.0,
    }
    return InstanceState(**{**base, **fields})  # type: ignore[arg-type]


def decide_repeatedly(policy: object, state: InstanceState, times: int = 5) -> int:
    """Hysteresis needs a few ticks before it lowers a clock."""
    clock = 0
    for tick in range(times):
        clock = policy.decide(state, SLO, 100.0 + tick * 0.05).sm_clock_mhz  # type: ignore[attr-defined]
    return clock


def test_paper_prefill_queue_means_max_clock() -> None:
    suite = build_paper_suite(CONTEXT, None)
    state = prefill_state(queue_len=3, queued_tokens=3000, running_prefill_tokens=2000)
    assert suite.prefill.decide(state, SLO, 100.0).sm_clock_mhz == GPU.max_sm_clock_mhz


def test_voltana_prefill_deep_backlog_means_max_clock() -> None:
    suite = build_voltana_suite(CONTEXT, None)
    # 40k tokens waiting with the oldest already 300 ms old: only the max clock drains it in time.
    state = prefill_state(queue_len=20, queued_tokens=40_000, oldest_wait_ms=300.0)
    assert suite.prefill.decide(state, SLO, 100.0).sm_clock_mhz == GPU.max_sm_clock_mhz


def test_voltana_prefill_short_queue_does_not_force_max_clock() -> None:
    suite = build_voltana_suite(CONTEXT, None)
    state = prefill_state(queue_len=1, queued_tokens=300, running_prefill_tokens=500)
    assert decide_repeatedly(suite.prefill, state) < GPU.max_sm_clock_mhz


def test_idle_prefill_goes_to_its_lowest_or_parking_clock(suite: PolicySuite) -> None:
    clock = decide_repeatedly(suite.prefill, prefill_state())
    lowest_candidate = min(paper_candidate_clocks_mhz(GPU))
    if suite.name == "voltana-paper":
        assert clock == lowest_candidate
    else:  # parks where a 2k-token prompt still fits half the TTFT target, below the paper's floor
        assert clock < lowest_candidate
        assert PERF.prefill_iteration(2048, clock).latency_s * 1e3 <= 0.5 * SLO.ttft_ms


def test_idle_decode_parks_at_the_lowest_clock(suite: PolicySuite) -> None:
    clock = decide_repeatedly(suite.decode, decode_state())
    expected = (
        min(paper_candidate_clocks_mhz(GPU))
        if suite.name == "voltana-paper"
        else GPU.min_sm_clock_mhz
    )
    assert clock == expected


def test_decode_admission_queue_means_max_clock(suite: PolicySuite) -> None:
    state = decode_state(running_batch=200, kv_tokens_used=200_000, queue_len=5)
    assert suite.decode.decide(state, SLO, 100.0).sm_clock_mhz == GPU.max_sm_clock_mhz


def test_decode_clock_rises_with_batch(suite: PolicySuite) -> None:
    small = decide_repeatedly(suite.decode, decode_state(running_batch=8, kv_tokens_used=8_000))
    large = decide_repeatedly(
        suite.decode, decode_state("decode-1", running_batch=400, kv_tokens_used=400_000)
    )
    assert small < large


def test_voltana_decode_picks_the_energy_optimal_clock_not_the_lowest_feasible() -> None:
    suite = build_voltana_suite(CONTEXT, None)
    state = decode_state(running_batch=64, kv_tokens_used=64 * 1024)
    clock = decide_repeatedly(suite.decode, state)
    energy = {
        c: PERF.decode_iteration(64, 64 * 1024, c).energy_j for c in GPU.supported_sm_clocks_mhz
    }
    feasible = [c for c in energy if PERF.decode_iteration(64, 64 * 1024, c).latency_s * 1e3 <= 45]
    assert clock in feasible
    # Within 3% of the true optimum among feasible clocks (the predictor is a fit).
    assert energy[clock] <= 1.03 * min(energy[c] for c in feasible)


def test_ecoroute_keeps_an_instance_below_its_batch_boundary() -> None:
    suite = build_paper_suite(CONTEXT, None)
    predictor = suite.router.predictor  # type: ignore[attr-defined]
    clocks = predictor.clocks_mhz
    # Find a batch where adding one request raises the required clock (a boundary).
    boundary = next(
        b
        for b in range(16, 600)
        if required(predictor, b + 1, (b + 1) * 1100) > required(predictor, b, b * 1100)
    )
    at_boundary = decode_state("decode-0", running_batch=boundary, kv_tokens_used=boundary * 1100)
    roomy = decode_state(
        "decode-1", running_batch=boundary - 40, kv_tokens_used=(boundary - 40) * 1100
    )
    snapshot = ClusterSnapshot(
        100.0,
        {"prefill-0": prefill_state()},
        {"decode-0": at_boundary, "decode-1": roomy},
    )
    placement = suite.router.place(RequestSpec(1000, 100, SLO), snapshot)
    assert placement.decode_id == "decode-1"
    assert placement.decode_clock_mhz in clocks


def required(predictor: object, batch: int, kv: int) -> int:
    from voltana.policy.paper import required_clock_index

    return required_clock_index(predictor, batch, kv, SLO.itl_ms, 0.35)  # type: ignore[arg-type]


def test_voltana_router_consolidates_light_decode_load() -> None:
    suite = build_voltana_suite(CONTEXT, None)
    busy = decode_state("decode-0", running_batch=6, kv_tokens_used=6_000)
    idle = decode_state("decode-1")
    snapshot = ClusterSnapshot(
        100.0, {"prefill-0": prefill_state()}, {"decode-0": busy, "decode-1": idle}
    )
    assert suite.router.place(RequestSpec(1000, 100, SLO), snapshot).decode_id == "decode-0"


def test_voltana_router_spills_over_when_the_busy_instance_is_full() -> None:
    suite = build_voltana_suite(CONTEXT, None)
    capacity = PERF.kv_capacity_tokens()
    full = decode_state("decode-0", running_batch=300, kv_tokens_used=int(0.95 * capacity))
    idle = decode_state("decode-1")
    snapshot = ClusterSnapshot(
        100.0, {"prefill-0": prefill_state()}, {"decode-0": full, "decode-1": idle}
    )
    assert suite.router.place(RequestSpec(1000, 100, SLO), snapshot).decode_id == "decode-1"


def test_voltana_router_counts_requests_still_in_prefill() -> None:
    """Placed requests not yet visible at decode still count (the predicted trajectory)."""
    suite = build_voltana_suite(CONTEXT, None)
    capacity = PERF.kv_capacity_tokens()
    nearly_full = decode_state("decode-0", running_batch=10, kv_tokens_used=int(0.85 * capacity))
    idle = decode_state("decode-1")
    snapshot = ClusterSnapshot(
        100.0, {"prefill-0": prefill_state()}, {"decode-0": nearly_full, "decode-1": idle}
    )
    big = RequestSpec(8000, 2000, SLO)
    first = suite.router.place(big, snapshot).decode_id
    second = suite.router.place(big, snapshot).decode_id
    third = suite.router.place(big, snapshot).decode_id
    assert "decode-1" in {first, second, third}


@pytest.mark.parametrize("gpu_key", ["a100-80g", "h100-80g"])
def test_predictor_fits_held_out_points_of_the_performance_model(gpu_key: str) -> None:
    gpu = get_gpu(gpu_key)
    perf = AnalyticalPerformanceModel.for_hardware(gpu, get_model("llama-3.1-8b"))
    clocks = full_range_clocks_mhz(gpu)
    predictor = fit_predictor(perf, clocks, token_breakpoints=(512, 2048, 8192))
    rng = np.random.default_rng(7)
    decode_errors, prefill_errors = [], []
    for _ in range(300):
        clock = int(rng.choice(clocks))  # fitted clocks; contexts and batches are held out
        batch = int(rng.integers(1, 400))
        kv = int(batch * rng.uniform(300, 3000))
        if kv > perf.kv_capacity_tokens():
            continue
        truth = perf.decode_iteration(batch, kv, clock).latency_s * 1e3
        guess = predictor.at_clock(predictor.decode_latency_ms(batch, kv), clock)
        decode_errors.append(abs(guess / truth - 1))
        tokens = int(rng.integers(100, 8000))
        truth = perf.prefill_iteration(tokens, clock).latency_s * 1e3
        guess = predictor.at_clock(predictor.prefill_latency_ms(tokens), clock)
        prefill_errors.append(abs(guess / truth - 1))
    assert np.percentile(decode_errors, 95) < 0.05
    assert np.percentile(prefill_errors, 95) < 0.10
    # Between fitted clocks (interpolated): still close.
    between = (clocks[10] + clocks[11]) // 2
    truth = perf.decode_iteration(64, 64_000, between).latency_s * 1e3
    guess = predictor.at_clock(predictor.decode_latency_ms(64, 64_000), between)
    assert guess == pytest.approx(truth, rel=0.05)


def test_profiled_model_reproduces_the_profile_it_was_built_from() -> None:
    clocks = paper_candidate_clocks_mhz(GPU)
    table = sweep_profile(PERF, clocks)
    profiled = ProfiledPerformanceModel(
        GPU,
        PERF.model,
        table,
        kv_capacity_tokens=PERF.kv_capacity_tokens(),
        idle_power_w_by_clock={c: PERF.idle_power_w(c) for c in clocks},
    )
    for point in table.phase("decode")[:50]:
        estimate = profiled.decode_iteration(point.batch_size, point.tokens, point.sm_clock_mhz)
        assert estimate.latency_s * 1e3 == pytest.approx(point.latency_ms, rel=1e-6)
    assert profiled.prefill_iteration(2048, 1410).latency_s == pytest.approx(
        PERF.prefill_iteration(2048, 1410).latency_s, rel=1e-6
    )
