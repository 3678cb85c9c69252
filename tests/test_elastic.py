"""Energy-aware elasticity offline: the planner's decisions, the simulator's service states and
accountings, and the flags (voltana.policy.planner, voltana.sim.elastic)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from voltana.cli.main import main
from voltana.contract.state import ClusterSnapshot, Phase, Placement, RequestSpec, SloTarget
from voltana.errors import ConfigError
from voltana.hardware import get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.perf.engine_costs import default_engine_start_s, engine_costs
from voltana.policy.base import PlanInput, RoutingPolicy
from voltana.policy.elastic import build_elastic_suite
from voltana.policy.forecast import ForecastConfig
from voltana.policy.planner import ElasticPlanner, PlannerConfig
from voltana.sim.cluster import ClusterConfig
from voltana.sim.compare import run_policy
from voltana.sim.instance import SERVICE_STATES, SERVING, STOPPED
from voltana.sim.run import policy_context
from voltana.sim.simulator import Simulation, SimulationResult
from voltana.workloads import load_workload

pytestmark = pytest.mark.unit

GPU = get_gpu("a100-80g")
MODEL = get_model("llama-3.1-8b")
PERF = AnalyticalPerformanceModel.for_hardware(GPU, MODEL)
SLO = SloTarget(ttft_ms=1000.0, itl_ms=50.0)
POOLS = {Phase.PREFILL: 4, Phase.DECODE: 4}
BURSTY = "synthetic:bursty:cv=4,duration=300,seed=2,rate=1"


def planner(**overrides: object) -> ElasticPlanner:
    settings: dict[str, object] = {"warm_spare": 0.0, "scale_down_hold_s": 30.0, "horizon_s": 0.0}
    settings.update(overrides)
    settings.setdefault("forecast", ForecastConfig(bucket_s=1.0, ewma_tau_s=5.0, peak_window_s=0.0))
    return ElasticPlanner(PERF, SLO, PlannerConfig(**settings))  # type: ignore[arg-type]


def feed(
    plan: ElasticPlanner, start_s: float, end_s: float, rate_rps: float, tokens: int = 1000
) -> None:
    """Arrivals at ``rate_rps`` over [start_s, end_s), each ``tokens`` in and out."""
    if rate_rps <= 0:
        return
    count = int((end_s - start_s) * rate_rps)
    for n in range(count):
        plan.observe_arrival(RequestSpec(tokens, tokens, SLO, start_s + n / rate_rps))


def tick(plan: ElasticPlanner, now_s: float, start_s: float = 10.0) -> dict[Phase, int]:
    return plan.plan(PlanInput(now_s, start_s, POOLS)).targets


def settle_low(plan: ElasticPlanner, until_s: float = 100.0) -> None:
    for second in range(int(until_s)):
        feed(plan, second, second + 1, 1.0)
        tick(plan, second + 1)


# ---- the planner ------------------------------------------------------------------------------
def test_starts_with_every_instance_and_scales_down_only_after_the_hold() -> None:
    plan = planner(scale_down_hold_s=30.0)
    targets = []
    for second in range(60):
        feed(plan, second, second + 1, 1.0)
        targets.append(tick(plan, second + 1)[Phase.DECODE])
    assert targets[0] == 4  # a run begins with every engine up
    assert all(count == 4 for count in targets[:29])  # below for less than the hold: kept
    assert targets[-1] == 1


def test_scales_up_at_once_on_a_burst() -> None:
    plan = planner()
    settle_low(plan)
    assert tick(plan, 100.0)[Phase.PREFILL] == 1
    feed(plan, 100.0, 101.0, 40.0)  # 40k prompt tokens/s: several prefill instances' worth
    targets = tick(plan, 101.0)
    assert targets[Phase.PREFILL] > 1 and targets[Phase.DECODE] > 1


def test_holds_the_burst_capacity_for_the_hold_then_steps_down() -> None:
    plan = planner(scale_down_hold_s=20.0)
    settle_low(plan)
    feed(plan, 100.0, 101.0, 40.0)
    high = tick(plan, 101.0)[Phase.PREFILL]
    after = []
    for second in range(101, 200):
        feed(plan, second, second + 1, 1.0)
        after.append(tick(plan, second + 1)[Phase.PREFILL])
    assert all(count == high for count in after[:18])
    # Then down, a hold at a time, to the highest target of each hold, never up again.
    assert all(later <= earlier for earlier, later in itertools.pairwise(after))
    assert after[-1] == 1


def test_warm_spare_adds_capacity_over_the_band() -> None:
    lean, spare = planner(warm_spare=0.0), planner(warm_spare=1.0)
    settle_low(lean)
    settle_low(spare)
    assert tick(lean, 100.0)[Phase.DECODE] == 1
    assert tick(spare, 100.0)[Phase.DECODE] == 2


def test_never_below_the_forecast_band_nor_one_instance() -> None:
    plan = planner(scale_down_hold_s=10.0)
    for second in range(200):
        rate = 30.0 if (second // 25) % 2 else 0.0  # bursts, then silence
        feed(plan, second, second + 1, rate)
        decision = plan.plan(PlanInput(second + 1.0, 10.0, POOLS))
        for phase, target in decision.targets.items():
            assert target >= 1
            assert target >= min(POOLS[phase], math.ceil(decision.needs[phase] - 1e-9))


def _changes(plan: ElasticPlanner, period_s: int, seconds: int = 400) -> int:
    changes, last = 0, None
    for second in range(seconds):
        rate = 20.0 if (second // (period_s // 2)) % 2 == 0 else 1.0  # a square wave
        feed(plan, second, second + 1, rate)
        target = tick(plan, second + 1)[Phase.PREFILL]
        changes += last is not None and target != last
        last = target
    return changes


def test_hysteresis_prevents_flapping_on_a_square_wave() -> None:
    # A 60 s period, shorter than the 120 s hold: after the first edge the count stays.
    assert _changes(planner(scale_down_hold_s=120.0), period_s=60) == 0
    # Without a hold the same wave moves the count on (nearly) every edge.
    assert _changes(planner(scale_down_hold_s=0.0), period_s=60) >= 10


def test_colocated_pool_sums_both_phases() -> None:
    plan = planner()
    for second in range(100):
        feed(plan, second, second + 1, 1.0)
        decision = plan.plan(PlanInput(second + 1.0, 10.0, {Phase.UNIFIED: 3}))
    assert set(decision.targets) == {Phase.UNIFIED}
    needs = decision.needs
    assert needs[Phase.UNIFIED] == pytest.approx(needs[Phase.PREFILL] + needs[Phase.DECODE])


def test_planner_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="must be >= 0"):
        PlannerConfig(warm_spare=-1.0)


# ---- the costs --------------------------------------------------------------------------------
def test_engine_costs() -> None:
    assert default_engine_start_s(PERF) == pytest.approx(30.0, abs=0.5)
    big = AnalyticalPerformanceModel.for_hardware(
        GPU, get_model("qwen3-32b").with_tensor_parallel(2)
    )
    assert default_engine_start_s(big) >= 120.0
    costs = engine_costs(PERF, start_s=12.0)
    assert costs.start_s == 12.0
    assert costs.no_engine_w == GPU.idle_w < costs.parked_w < costs.starting_w


# ---- the simulator ----------------------------------------------------------------------------
class _Checked:
    """A router that asserts every placement lands on a serving instance."""

    def __init__(self, inner: RoutingPolicy, sim: list[Simulation]) -> None:
        self.inner, self.sim = inner, sim
        self.name = inner.name

    def place(self, request: RequestSpec, snapshot: ClusterSnapshot) -> Placement:
        placement = self.inner.place(request, snapshot)
        by_id = self.sim[0]._by_id
        for instance_id in (placement.prefill_id, placement.decode_id):
            assert by_id[instance_id].state is SERVING, instance_id
        return placement


def run_elastic(
    trace: str = BURSTY, *, released_gpu_w: float | None = None, **shape: int
) -> SimulationResult:
    config = ClusterConfig(
        GPU, MODEL, slo=SLO, engine_start_s=5.0, released_gpu_w=released_gpu_w, **shape
    )
    suite = build_elastic_suite(
        policy_context(config, PERF),
        None,
        planner=PlannerConfig(scale_down_hold_s=10.0, horizon_s=5.0, warm_spare=0.2),
    )
    holder: list[Simulation] = []
    suite.router = _Checked(suite.router, holder)
    sim = Simulation(config, PERF, suite)
    holder.append(sim)
    return sim.run(load_workload(trace))


@pytest.fixture(scope="module")
def elastic_run() -> SimulationResult:
    return run_elastic()


def test_every_request_completes_and_instances_come_and_go(elastic_run: SimulationResult) -> None:
    assert all(record.completed for record in elastic_run.records)
    record = elastic_run.elastic
    assert record is not None
    assert record.stopped_gpu_s > 0  # something was stopped...
    counts = [sum(row[1:4]) for row in record.count_series]
    assert min(counts) < 4 and max(counts) == 4
    starting = record.state_total(record.time_s_by_state, "starting")
    assert starting > 0  # ...and started again
    # The sampled series carries every instance's state.
    assert any(STOPPED in series.state for series in elastic_run.series)


def test_energy_by_state_sums_to_the_total(elastic_run: SimulationResult) -> None:
    record = elastic_run.elastic
    assert record is not None
    for energy_j, by_state in zip(
        elastic_run.energy_j_by_instance, record.energy_j_by_state, strict=True
    ):
        assert sum(by_state.values()) == pytest.approx(energy_j, rel=1e-9)
        assert set(by_state) <= set(SERVICE_STATES)
    duration_s = elastic_run.end_s - elastic_run.start_s
    for by_state in record.time_s_by_state:
        assert sum(by_state.values()) == pytest.approx(duration_s, rel=1e-9)


def test_both_accountings_are_reported(elastic_run: SimulationResult) -> None:
    figures = elastic_run.outcome().extra["elastic"]
    stopped_gpu_s = figures["gpu_s_by_state"]["stopped"]
    assert figures["energy_j_in_server"] == pytest.approx(elastic_run.energy_j)
    assert figures["energy_j_in_server"] - figures["energy_j_released"] == pytest.approx(
        stopped_gpu_s * GPU.idle_w
    )
    assert figures["released_gpu_h"] == pytest.approx(stopped_gpu_s / 3600)
    released = run_elastic(released_gpu_w=0.0)
    other = released.outcome().extra["elastic"]
    assert released.energy_j == pytest.approx(other["energy_j_released"])
    assert other["energy_j_in_server"] - released.energy_j == pytest.approx(
        other["gpu_s_by_state"]["stopped"] * GPU.idle_w
    )


def test_colocated_instances_scale_too() -> None:
    result = run_elastic(num_prefill=0, num_decode=0, num_unified=3)
    assert all(record.completed for record in result.records)
    assert result.elastic is not None and result.elastic.stopped_gpu_s > 0


def test_without_a_planner_nothing_changes() -> None:
    config = ClusterConfig(GPU, MODEL, slo=SLO)
    result = run_policy("voltana", load_workload(BURSTY, max_requests=40), config, PERF)
    assert result.elastic is None
    assert "elastic" not in result.outcome().extra
    assert all(set(series.state) == {SERVING} for series in result.series)


# ---- the flags --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flag", "value"), [("--engine-start-s", "-1"), ("--released-gpu-w", "lots")]
)
def test_bad_flag_values_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["simulate", "--policy", "voltana-elastic", flag, value])
    assert stopped.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and flag in lines[0]


def test_simulate_reports_elastic_figures(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "out.json"
    code = main(
        [
            "simulate",
            "--quiet",
            "--trace",
            "synthetic:bursty:cv=4,duration=30,seed=2,rate=2",
            "--policy",
            "voltana",
            "--policy",
            "voltana-elastic",
            "--engine-start-s",
            "5",
            "--released-gpu-w",
            "0",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    assert "released GPU-hours" in capsys.readouterr().out
    document = json.loads(out.read_text())
    assert document["config"]["released_gpu_w"] == 0.0
    rows = {row["policy"]: row for row in document["results"]}
    assert "elastic" not in rows["voltana"]
    figures = rows["voltana-elastic"]["elastic"]
    assert figures["engine_start_s"] == 5.0 and figures["released_gpu_w"] == 0.0
    assert figures["energy_j_released"] == pytest.approx(rows["voltana-elastic"]["energy_j"])
