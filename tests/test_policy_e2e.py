"""Every dynamic policy end to end through the simulator (the live control loop's delays
included) on a decode-heavy workload: batches far past the CUDA-graph range, where a predictor
that extrapolated flat would let ITL collapse."""

from __future__ import annotations

import pytest

from voltana.contract.state import SloTarget
from voltana.hardware import get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.policy.paper import MARGIN
from voltana.report import summarize
from voltana.sim.cluster import ClusterConfig
from voltana.sim.compare import compare_policies
from voltana.workloads import load_workload

pytestmark = pytest.mark.e2e

# LMSYS-like chat (short prompts, long answers) at 100 req/s on 2P2D A100 Llama-3.1-8B:
# ~600 requests decoding at once, ~300 per decode instance if shared, more if consolidated.
DECODE_HEAVY = (
    "synthetic:poisson:rate=100,duration=40,input=100,input_median=70,output=215,"
    "output_median=150,seed=3"
)
POLICIES = (
    "static-max",
    "voltana-paper",
    "voltana-paper+full-range+voltana-router",
    "voltana",
    "voltana+ecoroute-router",
)


@pytest.fixture(scope="module")
def results() -> dict[str, tuple[dict[str, object], object]]:
    gpu, model = get_gpu("a100-80g"), get_model("llama-3.1-8b")
    perf = AnalyticalPerformanceModel.for_hardware(gpu, model)
    config = ClusterConfig(gpu, model)
    runs, rows = compare_policies(POLICIES, load_workload(DECODE_HEAVY), config, perf)
    return {str(row["policy"]): (row, run) for row, run in zip(rows, runs, strict=True)}


@pytest.fixture(scope="module")
def rows(
    results: dict[str, tuple[dict[str, object], object]],
) -> dict[str, dict[str, object]]:
    return {name: row for name, (row, _) in results.items()}


def test_the_workload_is_decode_heavy_and_static_max_meets_it(
    rows: dict[str, dict[str, object]],
) -> None:
    assert rows["static-max"]["itl_attainment"] >= 0.99  # type: ignore[operator]


@pytest.mark.parametrize("policy", ["voltana", "voltana+ecoroute-router"])
def test_voltana_keeps_itl_at_a_decode_heavy_load(
    rows: dict[str, dict[str, object]], policy: str
) -> None:
    row = rows[policy]
    assert row["rejected"] == 0
    assert row["itl_attainment"] >= 0.99, row["itl_attainment"]
    assert row["slo_attainment"] >= 0.99, row["slo_attainment"]
    # ... and still saves energy there.
    assert row["energy_savings_vs_first"] > 0.05  # type: ignore[operator]


@pytest.mark.parametrize("policy", ["voltana-paper", "voltana-paper+full-range+voltana-router"])
def test_the_published_method_stays_within_its_own_loosened_target(
    results: dict[str, tuple[dict[str, object], object]], policy: str
) -> None:
    """The paper loosens the ITL target by its margin (50 ms x 1.35), so it runs over 50 ms by
    design (with Voltana's consolidating router, far over) - but within what it aims for:
    never past the loosened target blind, as a flat extrapolation beyond the profiled batch
    range would."""
    _, run = results[policy]
    loosened = SloTarget(ttft_ms=800.0, itl_ms=50.0 * (1 + MARGIN))
    row = summarize(run.outcome(), loosened)  # type: ignore[attr-defined]
    assert row["itl_attainment"] >= 0.99, row["itl_attainment"]
