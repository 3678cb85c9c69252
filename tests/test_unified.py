"""Colocated (unified) instances offline: the simulator's instance, the composed clock law,
the colocated routing, static-best's single clock, and the CLI's --unified."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from voltana.contract.state import (
    ClockDecision,
    ClusterSnapshot,
    InstanceState,
    Phase,
    Placement,
    RequestSpec,
    SloTarget,
)
from voltana.control import PlacementBook
from voltana.errors import ConfigError
from voltana.hardware import get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.policy.base import PolicyContext
from voltana.policy.registry import build_suite
from voltana.policy.routing import RoundRobinRouter
from voltana.policy.static import StaticClockPolicy
from voltana.policy.unified import ColocatedRouting, UnifiedLaw, decode_view, prefill_view
from voltana.report import summarize
from voltana.sim.cluster import ClusterConfig
from voltana.sim.simulator import Simulation
from voltana.sim.static_best import exhaustive_static_best, find_static_best
from voltana.workloads import TraceRequest

pytestmark = pytest.mark.unit

GPU = get_gpu("a100-80g")
MODEL = get_model("llama-3.1-8b")
SLO = SloTarget(ttft_ms=800.0, itl_ms=50.0)


@pytest.fixture(scope="module")
def perf() -> AnalyticalPerformanceModel:
    return AnalyticalPerformanceModel.for_hardware(GPU, MODEL)


def _requests(count: int, gap_s: float, input_tokens: int = 1000, output: int = 50) -> list:
    return [
        TraceRequest(i, i * gap_s, input_tokens + 37 * (i % 5), output + (i % 7))
        for i in range(count)
    ]


def _run(perf, policy: str, requests, **shape):
    config = ClusterConfig(GPU, MODEL, slo=SLO, **shape)
    context = PolicyContext(GPU, perf, SLO, config.max_running_requests)
    return Simulation(config, perf, build_suite(policy, context)).run(requests)


def test_colocated_cluster_serves_every_request_on_one_instance_each(perf) -> None:
    requests = _requests(60, 0.25)
    result = _run(perf, "static-max", requests, num_prefill=0, num_decode=0, num_unified=2)
    assert result.instance_ids == ["unified-0", "unified-1"]
    assert all(record.completed for record in result.records)
    for record in result.records:
        # Prefilled and decoded where it was placed; the first token comes with the prefill.
        assert record.prefill_index == record.decode_index
        assert record.first_token_s == record.prefill_done_s
        assert record.finish_s > record.first_token_s
    # Both instances served (least loaded routing spreads them).
    assert {record.prefill_index for record in result.records} == {0, 1}
    assert result.config.num_gpus == 2
    assert set(result.outcome().extra["clock_residency_s"]) >= {"unified"}


def test_a_prefill_pass_stalls_the_decode_batch(perf) -> None:
    """SGLang's scheduler runs waiting prompts first: a decoding request's token gap grows by
    the prefill passes run meanwhile, and the reported gaps say so."""
    long_decode = TraceRequest(0, 0.0, 500, 400)
    prompts = [TraceRequest(1 + i, 0.5 + 0.05 * i, 6000, 2) for i in range(6)]
    alone = _run(perf, "static-max", [long_decode], num_prefill=0, num_decode=0, num_unified=1)
    shared = _run(
        perf, "static-max", [long_decode, *prompts], num_prefill=0, num_decode=0, num_unified=1
    )
    alone_itl = alone.outcome().mean_itl_ms[0]
    shared_itl = shared.outcome().mean_itl_ms[0]
    prefill_ms = perf.prefill_iteration(6000, GPU.default_sm_clock_mhz).latency_s * 1e3
    assert shared_itl > alone_itl * 1.05
    # The token gaps reported include a prefill pass (far above a decode step).
    assert max(shared.decode_iteration_latency_s) * 1e3 > prefill_ms
    assert max(alone.decode_iteration_latency_s) * 1e3 < prefill_ms / 4


def test_colocated_energy_is_every_gpu_all_the_time(perf) -> None:
    requests = _requests(40, 0.3)
    result = _run(perf, "static-max", requests, num_prefill=0, num_decode=0, num_unified=2)
    duration_s = result.end_s - result.start_s
    idle_w = perf.idle_power_w(GPU.default_sm_clock_mhz)
    assert result.energy_j >= 2 * idle_w * duration_s  # never below the idle floor
    assert result.energy_j <= 2 * GPU.tdp_w * duration_s
    shares = sum(e.active_j + e.idle_j for e in result.request_energy)
    assert shares == pytest.approx(result.energy_j, rel=1e-9)


def test_a_mixed_cluster_places_on_both_sides_by_gpu_share(perf) -> None:
    requests = _requests(80, 0.2)
    result = _run(perf, "static-max", requests, num_prefill=1, num_decode=1, num_unified=2)
    colocated = sum(1 for r in result.records if r.prefill_index == r.decode_index)
    assert all(record.completed for record in result.records)
    # Two of four GPUs are colocated: half of the requests.
    assert colocated == 40


def test_pd_only_runs_are_unchanged_by_the_colocated_router(perf) -> None:
    requests = _requests(40, 0.3)
    config = ClusterConfig(GPU, MODEL, slo=SLO)
    context = PolicyContext(GPU, perf, SLO)
    suite = build_suite("voltana", context)
    inner = suite.router
    result = Simulation(config, perf, suite).run(requests)
    assert suite.router is inner  # no wrapper in a PD-only cluster
    assert all(r.prefill_index != r.decode_index for r in result.records)


def test_cluster_shape_is_checked() -> None:
    with pytest.raises(ConfigError, match="prefill and one decode"):
        ClusterConfig(GPU, MODEL, num_prefill=1, num_decode=0)
    with pytest.raises(ConfigError, match="unified"):
        ClusterConfig(GPU, MODEL, num_prefill=0, num_decode=0, num_unified=0)
    assert ClusterConfig(GPU, MODEL, num_prefill=0, num_decode=0, num_unified=3).num_gpus == 3


def _state(**fields) -> InstanceState:
    base = InstanceState("unified-0", Phase.UNIFIED, GPU.key, 1410)
    return replace(base, **fields)


def test_views_split_the_instance_by_side() -> None:
    state = _state(
        queue_len=2,
        queued_tokens=3000,
        running_prefill_tokens=1000,
        running_batch=12,
        kv_tokens_used=9000,
        recent_itl_ms=20.0,
        inflight_requests=1,
        inflight_tokens=500,
    )
    prompts = prefill_view(state)
    assert (prompts.running_batch, prompts.kv_tokens_used, prompts.recent_itl_ms) == (0, 0, None)
    assert prompts.queued_tokens == 3000
    batch = decode_view(state, measured_prefill_share=0.25)
    assert (batch.queue_len, batch.queued_tokens, batch.running_prefill_tokens) == (0, 0, 0)
    assert batch.recent_itl_ms == pytest.approx(15.0)  # the prefill stalls taken out
    assert batch.inflight_requests == 3  # the waiting prompts join the batch soon
    assert batch.inflight_tokens == 500 + 3000 + 1000


class _Fixed:
    """A law answering one clock, recording the SLO it was asked for."""

    def __init__(self, clock_mhz: int) -> None:
        self.clock_mhz = clock_mhz
        self.slos: list[SloTarget] = []
        self.name = f"fixed-{clock_mhz}"
        self.is_static = False

    def decide(self, state: InstanceState, slo: SloTarget, now_s: float) -> ClockDecision:
        self.slos.append(slo)
        return ClockDecision(self.clock_mhz, "fixed")


def test_unified_law_takes_the_higher_clock_and_shrinks_the_itl_budget(perf) -> None:
    prefill, decode = _Fixed(1200), _Fixed(900)
    law = UnifiedLaw(prefill, decode, perf)
    # 2 prompts/s of 2,000 tokens: prefill takes a share of the GPU's time.
    state = _state(
        queue_len=1, queued_tokens=2000, arrival_rate_rps=2.0, arrival_tokens_per_s=4000.0
    )
    assert law.decide(state, SLO, 0.0).sm_clock_mhz == 1200
    share = law.prefill_share(state, 1200)
    assert 0.05 < share < 0.95
    assert decode.slos[-1].itl_ms == pytest.approx(SLO.itl_ms * (1 - share))
    decode.clock_mhz = 1300
    assert law.decide(state, SLO, 0.1).sm_clock_mhz == 1300


def test_between_prompts_the_decode_batch_sets_the_clock(perf) -> None:
    prefill, decode = _Fixed(1400), _Fixed(900)
    law = UnifiedLaw(prefill, decode, perf)
    decoding = _state(running_batch=8, kv_tokens_used=8000)
    decision = law.decide(decoding, SLO, 0.0)
    assert decision.sm_clock_mhz == 900
    assert decision.reason.startswith("between prompts")


def test_static_laws_compose_to_the_higher_static_clock(perf) -> None:
    law = UnifiedLaw(StaticClockPolicy(1005), StaticClockPolicy(1200), perf)
    assert law.is_static
    assert law.decide(_state(), SLO, 0.0).sm_clock_mhz == 1200


def test_colocated_routing_picks_the_least_loaded_instance() -> None:
    router = ColocatedRouting(RoundRobinRouter())
    busy = _state(running_batch=5)
    free = replace(_state(running_batch=1), instance_id="unified-1")
    snapshot = ClusterSnapshot(0.0, {}, {}, unified={"unified-0": busy, "unified-1": free})
    placement = router.place(RequestSpec(100, 10, SLO), snapshot)
    assert placement == Placement("unified-1", "unified-1", "colocated: least loaded")
    assert placement.is_unified


def test_placement_book_counts_a_colocated_request_once() -> None:
    book = PlacementBook(5.0)
    book.place("r1", "unified-0", "unified-0", 700, 0.0)
    assert book.entries() == [("unified-0", 700, None)]
    rates = book.arrival_rates("unified-0", 1.0)
    assert rates is not None and rates[1] == pytest.approx(700 / 5.0)


def test_static_best_on_colocated_instances_searches_one_clock(perf) -> None:
    requests = _requests(30, 0.4)
    config = ClusterConfig(GPU, MODEL, slo=SLO, num_prefill=0, num_decode=0, num_unified=1)
    best = find_static_best(requests, config, perf)
    assert best.colocated and best.prefill_mhz == best.decode_mhz
    assert best.label() == f"static-best({best.prefill_mhz})"
    brute = exhaustive_static_best(requests, config, perf)
    # The brute force over pairs runs each colocated instance at the pair's higher clock.
    assert best.result.energy_j <= brute.result.energy_j * (1 + 1e-9)
    assert summarize(best.result.outcome(), SLO)["slo_attainment"] >= best.target_attainment


@pytest.mark.e2e
def test_cli_simulate_unified(tmp_path) -> None:
    out = tmp_path / "run.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "voltana.cli.main",
            "simulate",
            "--unified",
            "2",
            "--max-requests",
            "80",
            "--policy",
            "static-max",
            "--policy",
            "voltana",
            "--quiet",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "cluster: 2U" in done.stderr
    document = json.loads(out.read_text())
    assert (document["config"]["prefill"], document["config"]["unified"]) == (0, 2)
    assert [row["completed"] for row in document["results"]] == [80, 80]


@pytest.mark.e2e
def test_cli_rejects_half_a_pd_pair() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "voltana.cli.main", "simulate", "--prefill", "1", "--decode", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "PD serving needs both" in done.stderr
    assert "Traceback" not in done.stderr
