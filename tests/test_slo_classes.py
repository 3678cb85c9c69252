"""SLO classes: requests with their own targets, the targets each instance serves, the router's
class lanes, the simulator's clock laws against them, and attainment per class."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from voltana.cli.main import main
from voltana.contract.state import (
    ClusterSnapshot,
    InstanceState,
    Phase,
    RequestSpec,
    SloTarget,
    tightest_slo,
)
from voltana.control import ServedTargets
from voltana.errors import ConfigError
from voltana.hardware import get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.policy.base import PolicyContext
from voltana.policy.voltana import VoltanaRouter, build_voltana_suite
from voltana.report import RunOutcome, summarize
from voltana.sim.cluster import ClusterConfig
from voltana.sim.run import run_policy
from voltana.workloads.classes import SloClass, parse_slo_class, with_slo_class
from voltana.workloads.request import TraceRequest
from voltana.workloads.synthetic import generate_synthetic
from voltana.workloads.synthetic_spec import parse_synthetic_spec
from voltana.workloads.transforms import cut_window, renumbered, scale_rate

CLUSTER = SloTarget(ttft_ms=800.0, itl_ms=50.0)
LOOSE = SloTarget(ttft_ms=800.0, itl_ms=200.0)
TIGHT = SloTarget(ttft_ms=400.0, itl_ms=30.0, ttft_ms_per_1k_tokens=10.0)
GPU = get_gpu("a100-80g")
MODEL = get_model("llama-3.1-8b")
PERF = AnalyticalPerformanceModel.for_hardware(GPU, MODEL)


# ---- the targets each instance serves -----------------------------------------------------


@pytest.mark.unit
def test_tightest_slo_takes_each_target_at_its_tightest() -> None:
    assert tightest_slo(CLUSTER) is CLUSTER
    assert tightest_slo(LOOSE, TIGHT, CLUSTER) == SloTarget(400.0, 30.0, 0.0)


@pytest.mark.unit
def test_served_targets_follow_requests_from_placement_to_their_end() -> None:
    served = ServedTargets()
    assert served.tightest("d0", CLUSTER) is None
    assert served.law_target("d0", CLUSTER) == CLUSTER  # idle: the cluster SLO
    served.open("loose", ("p0", "d0"), LOOSE)
    assert served.law_target("d0", CLUSTER) == LOOSE  # only loose requests: loose
    assert served.law_target("p0", CLUSTER) == LOOSE
    served.open("default", ("p1", "d0"), None)  # a cluster-SLO request joins
    assert served.law_target("d0", CLUSTER) == tightest_slo(LOOSE, CLUSTER)
    # The cluster SLO is read when asked: a new one applies to requests already placed.
    assert served.law_target("d0", TIGHT) == tightest_slo(LOOSE, TIGHT)
    served.leave("loose", "p0")  # its prefill is done
    assert served.tightest("p0", CLUSTER) is None
    assert served.law_target("d0", CLUSTER) == CLUSTER
    served.close("default")
    assert served.serving(CLUSTER) == {"d0": LOOSE}
    served.close("loose")
    served.close("loose")  # twice, and unknown keys: nothing happens
    served.leave("nobody", "d0")
    assert served.serving(CLUSTER) == {} and len(served) == 0


@pytest.mark.unit
def test_opening_a_request_again_moves_it() -> None:
    served = ServedTargets()
    served.open(1, ("p0", "d0"), LOOSE)
    served.open(1, ("p0", "d1"), LOOSE)
    assert served.serving(CLUSTER) == {"p0": LOOSE, "d1": LOOSE}
    assert len(served) == 1


# ---- classes in a workload ----------------------------------------------------------------


def requests(count: int = 400) -> list[TraceRequest]:
    return [TraceRequest(n, 0.1 * n, 100 + n % 50, 20 + n % 30) for n in range(count)]


@pytest.mark.unit
def test_a_class_takes_a_deterministic_share_and_keeps_it_through_transforms() -> None:
    slo_class = SloClass("batch", 0.3, itl_factor=4.0)
    mixed = with_slo_class(requests(), slo_class, CLUSTER, seed=1)
    assert mixed == with_slo_class(requests(), slo_class, CLUSTER, seed=1)
    batch = [r for r in mixed if r.slo_class]
    assert 0.22 < len(batch) / len(mixed) < 0.38
    assert {r.slo for r in batch} == {SloTarget(800.0, 200.0)}
    assert all(r.slo is None for r in mixed if not r.slo_class)
    kept = renumbered(cut_window(scale_rate(mixed, 2.0), 5.0, 15.0))
    assert [r.slo_class for r in kept] == [r.slo_class for r in mixed if 10.0 <= r.arrival_s < 30.0]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("batch", "expected NAME:FRACTION"),
        ("batch:x:4", "must be numbers"),
        ("batch:1.5:4", "fraction must be in [0, 1]"),
        ("batch:0.3:0", "itl factor must be > 0"),
        ("default:0.3:4", "a name other than"),
    ],
)
def test_bad_class_specs_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_slo_class(text)


@pytest.mark.unit
def test_a_class_past_the_target_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match="class 'batch'"):
        with_slo_class(requests(), SloClass("batch", 0.5, itl_factor=1e9), CLUSTER)


@pytest.mark.unit
def test_attainment_counts_each_request_against_its_own_targets() -> None:
    outcome = RunOutcome(
        policy="p",
        requests=4,
        ttft_ms=[100.0, 100.0, 100.0],
        mean_itl_ms=[40.0, 120.0, 120.0],
        output_tokens=30,
        energy_j=1.0,
        duration_s=1.0,
        num_gpus=1,
        rejected={"prompt_too_long": 1},
        slo_targets=[None, None, LOOSE],
        slo_classes=["default", "default", "batch"],
        requests_by_class={"default": 3, "batch": 1},
    )
    row = summarize(outcome, CLUSTER)
    # 120 ms meets the loose 200 ms ITL but not the cluster's 50 ms.
    assert row["slo_attainment"] == pytest.approx(2 / 4)
    assert row["slo_classes"] == {
        "batch": {"requests": 1, "completed": 1, "slo_attainment": 1.0},
        "default": {"requests": 3, "completed": 2, "slo_attainment": pytest.approx(1 / 3)},
    }
    plain = summarize(dataclasses.replace(outcome, slo_targets=(), slo_classes=()), CLUSTER)
    assert plain["slo_attainment"] == pytest.approx(1 / 4) and "slo_classes" not in plain


# ---- the router's lanes -------------------------------------------------------------------


def decode_state(instance_id: str, batch: int) -> InstanceState:
    return InstanceState(
        instance_id,
        Phase.DECODE,
        GPU.key,
        1410,
        running_batch=batch,
        kv_tokens_used=batch * 600,
        kv_tokens_capacity=PERF.kv_capacity_tokens(),
        max_running_requests=256,
    )


def cluster(serving: dict[str, SloTarget], *batches: int) -> ClusterSnapshot:
    prefill = InstanceState("p0", Phase.PREFILL, GPU.key, 1410)
    decode = {f"d{n}": decode_state(f"d{n}", batch) for n, batch in enumerate(batches)}
    return ClusterSnapshot(0.0, {"p0": prefill}, decode, serving=serving)


def lane_router(cluster_slo: SloTarget, loose_share: float) -> VoltanaRouter:
    router = build_voltana_suite(PolicyContext(GPU, PERF, cluster_slo), None).router
    assert isinstance(router, VoltanaRouter)
    router._loose_share = loose_share  # as if that share of the recent requests were loose
    return router


@pytest.mark.unit
def test_loose_requests_get_decode_instances_of_their_own_where_that_draws_less() -> None:
    """A tight ITL target (15.5 ms) that a shared batch meets only at a high clock: the loose
    requests keep to the last instance, which runs at its loosest clock, and the tight ones
    keep off it."""
    tight, loose = SloTarget(800.0, 15.5), SloTarget(800.0, 62.0)
    router = lane_router(tight, 0.3)
    heavy = cluster({"d0": tight, "d1": tight, "d2": tight, "d3": loose}, 60, 60, 60, 30)
    assert router.place(RequestSpec(600, 200, loose), heavy).decode_id == "d3"
    assert router.place(RequestSpec(600, 200, tight), heavy).decode_id != "d3"


@pytest.mark.unit
@pytest.mark.parametrize("batches", [(4, 0), (20, 20, 20, 10), (60, 60, 60, 30)])
def test_classes_share_where_their_own_instances_would_draw_more(batches: tuple[int, ...]) -> None:
    """At a 50 ms ITL the lowest clock meets every batch here (A100 8B decode is memory
    bound), so a loose class saves nothing on an instance of its own: it shares."""
    router = lane_router(CLUSTER, 0.3)
    serving = {f"d{n}": CLUSTER for n in range(len(batches) - 1)} | {f"d{len(batches) - 1}": LOOSE}
    snapshot = cluster(serving, *batches)
    plain = cluster({}, *batches)
    for slo in (LOOSE, CLUSTER):
        expected = router.place(RequestSpec(600, 200, CLUSTER), plain).decode_id
        assert router.place(RequestSpec(600, 200, slo), snapshot).decode_id == expected


# ---- the simulator ------------------------------------------------------------------------


def poisson(rate_rps: float, duration_s: float = 120.0) -> list[TraceRequest]:
    spec = parse_synthetic_spec(
        f"synthetic:poisson:duration={duration_s:g},rate={rate_rps:g},"
        "input=300,input_median=200,output=200,output_median=150,seed=5"
    )
    return generate_synthetic(spec)


@pytest.mark.integration
def test_loose_requests_let_the_clock_laws_run_lower() -> None:
    """Every request loose: each instance serves only loose targets, so its laws run against
    them (lower clocks, less energy) and every request meets its own targets. (The cluster's
    ITL target binds here: at 50 ms this load already runs at the calibrated clock floor.)"""
    binding = SloTarget(ttft_ms=800.0, itl_ms=16.0)
    config = ClusterConfig(GPU, MODEL, slo=binding)
    tight = poisson(30.0, 60.0)
    loose = with_slo_class(tight, SloClass("batch", 1.0, itl_factor=3.0), binding)
    tight_row = summarize(run_policy("voltana", tight, config, PERF).outcome(), binding)
    loose_row = summarize(run_policy("voltana", loose, config, PERF).outcome(), binding)
    assert loose_row["energy_j"] < 0.95 * tight_row["energy_j"]
    assert loose_row["slo_classes"]["batch"]["slo_attainment"] >= 0.99
    assert loose_row["itl_ms"]["p50"] > tight_row["itl_ms"]["p50"]


@pytest.mark.integration
def test_a_workload_without_classes_runs_as_before() -> None:
    config = ClusterConfig(GPU, MODEL, slo=CLUSTER)
    plain = poisson(6.0, 60.0)
    nobody = with_slo_class(plain, SloClass("batch", 0.0, itl_factor=3.0), CLUSTER)
    first = summarize(run_policy("voltana", plain, config, PERF).outcome(), CLUSTER)
    second = summarize(run_policy("voltana", nobody, config, PERF).outcome(), CLUSTER)
    assert first == second and "slo_classes" not in first


@pytest.mark.e2e
def test_simulate_reports_attainment_per_class(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.json"
    args = ["simulate", "--max-requests", "150", "--quiet", "--policy", "voltana"]
    code = main([*args, "--slo-class", "batch:0.3:4", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "SLO attainment, batch class" in printed
    (row,) = json.loads(out.read_text())["results"]
    assert set(row["slo_classes"]) == {"batch", "default"}
    assert sum(c["requests"] for c in row["slo_classes"].values()) == 150
    assert main([*args, "--slo-class", "batch:lots:4"]) == 2
    assert "FRACTION and factors must be numbers" in capsys.readouterr().err
