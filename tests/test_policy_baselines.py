"""Baseline policies and the policy/router registry: parsing, errors, routing, legal clocks."""

from __future__ import annotations

import itertools

import pytest

from voltana.contract.state import (
    ClusterSnapshot,
    InstanceState,
    Phase,
    RequestSpec,
    SloTarget,
)
from voltana.errors import ConfigError, UnknownNameError
from voltana.hardware import GPU_CATALOG, get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.policy.base import PolicyContext
from voltana.policy.registry import (
    build_router,
    build_suite,
    parse_clock_mhz,
    policy_names,
    router_names,
)
from voltana.policy.routing import LeastLoadedRouter, NoInstanceError, RoundRobinRouter
from voltana.policy.static import StaticClockPolicy

pytestmark = pytest.mark.unit

GPU_KEYS = sorted(GPU_CATALOG)


def context_for(gpu_key: str = "a100-80g", *, extrapolate: bool = False) -> PolicyContext:
    gpu = get_gpu(gpu_key)
    perf = AnalyticalPerformanceModel.for_hardware(gpu, get_model("llama-3.1-8b"))
    return PolicyContext(gpu, perf, SloTarget(), allow_extrapolated_clocks=extrapolate)


def prefill_state(instance_id: str, **fields: object) -> InstanceState:
    return InstanceState(instance_id, Phase.PREFILL, "a100-80g", 1410, **fields)  # type: ignore[arg-type]


def decode_state(instance_id: str, **fields: object) -> InstanceState:
    return InstanceState(instance_id, Phase.DECODE, "a100-80g", 1410, **fields)  # type: ignore[arg-type]


def snapshot(prefill: list[InstanceState], decode: list[InstanceState]) -> ClusterSnapshot:
    return ClusterSnapshot(
        0.0, {s.instance_id: s for s in prefill}, {s.instance_id: s for s in decode}
    )


# ---- static policies ----------------------------------------------------------------------


@pytest.mark.parametrize("gpu_key", GPU_KEYS)
def test_static_max_runs_both_phases_at_the_default_clock(gpu_key: str) -> None:
    suite = build_suite("static-max", context_for(gpu_key))
    default = get_gpu(gpu_key).default_sm_clock_mhz
    state = prefill_state("p")
    assert suite.prefill.decide(state, SloTarget(), 0.0).sm_clock_mhz == default
    assert suite.decode.decide(state, SloTarget(), 0.0).sm_clock_mhz == default
    assert suite.is_static
    assert suite.name == "static-max"
    assert isinstance(suite.router, RoundRobinRouter)


def test_static_one_clock_applies_to_both_phases() -> None:
    suite = build_suite("static:1005", context_for())
    assert suite.prefill == StaticClockPolicy(1005)
    assert suite.decode == StaticClockPolicy(1005)
    assert suite.name == "static:1005"


def test_static_two_clocks_are_prefill_then_decode() -> None:
    suite = build_suite("static:1005/1410", context_for())
    state = decode_state("d", running_batch=10)
    assert suite.prefill.decide(state, SloTarget(), 0.0).sm_clock_mhz == 1005
    assert suite.decode.decide(state, SloTarget(), 0.0).sm_clock_mhz == 1410


def test_static_decision_ignores_state_and_time() -> None:
    policy = StaticClockPolicy(1200)
    busy = decode_state("d", running_batch=500, queue_len=40, kv_tokens_used=400_000)
    assert policy.decide(busy, SloTarget(ttft_ms=1, itl_ms=1), 1e6).sm_clock_mhz == 1200
    assert policy.decide(decode_state("d"), SloTarget(), 0.0).sm_clock_mhz == 1200
    assert policy.name == "static:1200"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "static:1000",
            "1000 MHz is not a supported SM clock of a100-80g",
        ),  # not on the 15 MHz grid
        ("static:1500", "not a supported SM clock"),  # above max
        ("static:195", "not a supported SM clock"),  # below min
        ("static:1005/1420", "1420 MHz is not a supported"),
        ("static:fast", "'fast' is not an integer"),
        ("static:", "is not an integer"),
        ("static:1005/1410/1200", "is not an integer"),
        ("static:10.5", "is not an integer"),
    ],
)
def test_static_rejects_bad_clocks(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_suite(name, context_for())


def test_static_with_an_empty_decode_clock_is_rejected() -> None:
    with pytest.raises(ConfigError):
        build_suite("static:1005/", context_for())


def test_unsupported_clock_error_names_the_valid_range() -> None:
    with pytest.raises(ConfigError) as error:
        parse_clock_mhz("1000", get_gpu("a100-80g"))
    assert "210-1410 MHz in steps of 15" in str(error.value)
    assert parse_clock_mhz("1410", get_gpu("a100-80g")) == 1410


@pytest.mark.parametrize("gpu_key", GPU_KEYS)
def test_every_supported_clock_parses(gpu_key: str) -> None:
    gpu = get_gpu(gpu_key)
    for clock in gpu.supported_sm_clocks_mhz:
        assert parse_clock_mhz(str(clock), gpu) == clock


@pytest.mark.parametrize("name", ["bogus", "static", "STATIC-MAX", "static-min", ""])
def test_unknown_policy_is_an_unknown_name_error_listing_valid_names(name: str) -> None:
    with pytest.raises(UnknownNameError) as error:
        build_suite(name, context_for())
    assert error.value.kind == "policy"
    assert error.value.name == name
    assert "static-max" in error.value.valid
    assert "static:<MHz>" in error.value.valid
    assert "static-max" in str(error.value)
    assert isinstance(error.value, ConfigError)


def test_policy_names_lead_with_static_max_and_list_static_forms() -> None:
    names = policy_names()
    assert names[0] == "static-max"
    assert "static:<MHz>" in names
    assert "static:<prefill MHz>/<decode MHz>" in names
    assert len(names) == len(set(names))


def test_router_override_replaces_the_policy_router() -> None:
    context = context_for()
    suite = build_suite("static-max", context, build_router("least-loaded", context))
    assert isinstance(suite.router, LeastLoadedRouter)


# ---- routers ---------------------------------------------------------------------------------


def test_router_names_and_unknown_router() -> None:
    assert {"round-robin", "least-loaded"} <= set(router_names())
    with pytest.raises(UnknownNameError) as error:
        build_router("random", context_for())
    assert error.value.kind == "router"
    assert "least-loaded" in str(error.value) and "round-robin" in str(error.value)


def test_round_robin_alternates_over_each_side() -> None:
    router = RoundRobinRouter()
    view = snapshot(
        [prefill_state("p0"), prefill_state("p1")],
        [decode_state("d0"), decode_state("d1"), decode_state("d2")],
    )
    placements = [router.place(RequestSpec(100, 10), view) for _ in range(6)]
    assert [p.prefill_id for p in placements] == ["p0", "p1", "p0", "p1", "p0", "p1"]
    assert [p.decode_id for p in placements] == ["d0", "d1", "d2", "d0", "d1", "d2"]


def test_round_robin_ignores_load() -> None:
    router = RoundRobinRouter()
    view = snapshot(
        [prefill_state("p0", queued_tokens=10**6), prefill_state("p1")],
        [decode_state("d0", running_batch=500), decode_state("d1")],
    )
    first = router.place(RequestSpec(100, 10), view)
    assert (first.prefill_id, first.decode_id) == ("p0", "d0")


def test_least_loaded_picks_the_fewest_pending_prefill_tokens() -> None:
    router = LeastLoadedRouter()
    view = snapshot(
        [
            prefill_state("p0", queued_tokens=3000),
            prefill_state("p1", queued_tokens=500, running_prefill_tokens=2000),
            prefill_state("p2", queued_tokens=1000, running_prefill_tokens=1000),
        ],
        [decode_state("d0")],
    )
    assert router.place(RequestSpec(100, 10), view).prefill_id == "p2"


def test_least_loaded_picks_the_fewest_decode_requests_then_least_kv() -> None:
    router = LeastLoadedRouter()
    view = snapshot(
        [prefill_state("p0")],
        [
            decode_state("d0", running_batch=10, queue_len=0, kv_tokens_used=1000),
            decode_state("d1", running_batch=4, queue_len=5, kv_tokens_used=100),  # 9 requests
            decode_state("d2", running_batch=9, queue_len=0, kv_tokens_used=50),  # 9, less KV
        ],
    )
    assert router.place(RequestSpec(100, 10), view).decode_id == "d2"


def test_least_loaded_ties_go_to_the_first_instance() -> None:
    view = snapshot(
        [prefill_state("p0"), prefill_state("p1")], [decode_state("d0"), decode_state("d1")]
    )
    placement = LeastLoadedRouter().place(RequestSpec(100, 10), view)
    assert (placement.prefill_id, placement.decode_id) == ("p0", "d0")


@pytest.mark.parametrize("router", [RoundRobinRouter(), LeastLoadedRouter()])
def test_routers_fail_clearly_without_instances(
    router: RoundRobinRouter | LeastLoadedRouter,
) -> None:
    with pytest.raises(NoInstanceError, match="no prefill instance"):
        router.place(RequestSpec(1, 1), snapshot([], [decode_state("d0")]))
    with pytest.raises(NoInstanceError, match="no decode instance"):
        router.place(RequestSpec(1, 1), snapshot([prefill_state("p0")], []))


# ---- every policy emits only supported clocks --------------------------------------------------


def buildable_policy_names(gpu_key: str, extrapolate: bool) -> list[str]:
    gpu = get_gpu(gpu_key)
    clocks = context_for(gpu_key, extrapolate=extrapolate).supported_clocks_mhz
    low, mid = clocks[0], clocks[len(clocks) // 2]
    # Placeholders ("static:<MHz>") become real clocks; static-best is a hindsight sweep that
    # the simulator resolves, not a suite.
    dynamic = [n for n in policy_names() if "<" not in n and n not in ("static-max", "static-best")]
    return ["static-max", f"static:{low}", f"static:{mid}/{gpu.max_sm_clock_mhz}", *dynamic]


def varied_states(gpu_key: str, phase: Phase) -> list[InstanceState]:
    capacity = context_for(gpu_key).perf.kv_capacity_tokens()
    states = []
    for queue, batch, tokens, rate, last_activity in itertools.product(
        (0, 3), (0, 1, 9, 128, 600), (0, 512, 16_000), (0.0, 50.0), (0.0, 99.0)
    ):
        states.append(
            InstanceState(
                f"{phase.value}-0",
                phase,
                gpu_key,
                get_gpu(gpu_key).default_sm_clock_mhz,
                queue_len=queue,
                queued_tokens=tokens if queue else 0,
                oldest_wait_ms=300.0 * queue,
                running_prefill_tokens=tokens if phase is Phase.PREFILL else 0,
                running_batch=batch if phase is Phase.DECODE else 0,
                kv_tokens_used=min(capacity, batch * 1100) if phase is Phase.DECODE else 0,
                kv_tokens_capacity=capacity,
                max_running_requests=1024,
                arrival_rate_rps=rate,
                observed_at_s=100.0,
                last_activity_s=last_activity,
                recent_ttft_ms=900.0 if queue else None,
                recent_itl_ms=60.0 if batch > 100 else None,
            )
        )
    return states


@pytest.mark.parametrize(
    ("gpu_key", "extrapolate", "name"),
    [
        (gpu_key, extrapolate, name)
        for gpu_key in GPU_KEYS
        for extrapolate in (False, True)
        for name in buildable_policy_names(gpu_key, extrapolate)
    ],
)
def test_no_policy_emits_a_clock_outside_the_allowed_set(
    gpu_key: str, extrapolate: bool, name: str
) -> None:
    """Every clock is a supported one inside the allowed range: the model's calibrated range
    unless extrapolation is allowed."""
    context = context_for(gpu_key, extrapolate=extrapolate)
    supported = set(context.supported_clocks_mhz)
    suite = build_suite(name, context)
    for policy, phase in ((suite.prefill, Phase.PREFILL), (suite.decode, Phase.DECODE)):
        for state in varied_states(gpu_key, phase):
            decision = policy.decide(state, SloTarget(), 100.0)
            assert decision.sm_clock_mhz in supported, f"{name}: {decision} for {state}"
    view = snapshot(
        varied_states(gpu_key, Phase.PREFILL)[:1], varied_states(gpu_key, Phase.DECODE)[:2]
    )
    placement = suite.router.place(RequestSpec(500, 200, SloTarget(), 100.0), view)
    for clock in (placement.prefill_clock_mhz, placement.decode_clock_mhz):
        assert clock is None or clock in supported


# ---- the calibrated clock range ------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpu_key", "calibrated"),
    [("a100-80g", (855, 1410)), ("h100-80g", (780, 1980)), ("h200", (780, 1980))],
)
def test_policies_choose_clocks_where_the_model_is_calibrated_unless_allowed(
    gpu_key: str, calibrated: tuple[int, int]
) -> None:
    gpu = get_gpu(gpu_key)
    assert context_for(gpu_key).clock_range_mhz == calibrated  # docs/power-model.md
    assert context_for(gpu_key, extrapolate=True).clock_range_mhz == (
        gpu.min_sm_clock_mhz,
        gpu.max_sm_clock_mhz,
    )
    for name in ("voltana", "voltana-paper+full-range", "voltana-paper-m0+full-range"):
        clocks = build_suite(name, context_for(gpu_key)).decode.predictor.clocks_mhz  # type: ignore[attr-defined]
        assert (int(clocks[0]), int(clocks[-1])) == calibrated
        wide = build_suite(name, context_for(gpu_key, extrapolate=True))
        assert int(wide.decode.predictor.clocks_mhz[0]) == gpu.min_sm_clock_mhz  # type: ignore[attr-defined]


def test_offline_a_static_clock_outside_the_calibrated_range_needs_the_opt_in() -> None:
    from voltana.sim.compare import build_suites

    context = context_for()
    args = (context.gpu, context.perf, SloTarget())
    with pytest.raises(ConfigError, match=r"855-1410 MHz.*--allow-extrapolated-clocks"):
        build_suites(["static-max", "static:1050/240"], None, *args)
    (suite,) = build_suites(["static:1050/240"], None, *args, allow_extrapolated_clocks=True)
    assert suite is not None
    assert suite.decode.decide(decode_state("d0"), SloTarget(), 0.0).sm_clock_mhz == 240
    # A live GPU takes any supported clock an operator names (no model figure rests on it).
    assert (
        build_suite("static:240", context)
        .decode.decide(decode_state("d0"), SloTarget(), 0.0)
        .sm_clock_mhz
        == 240
    )


def test_voltana_paper_m0_aims_at_the_itl_target_itself() -> None:
    published = build_suite("voltana-paper", context_for())
    m0 = build_suite("voltana-paper-m0", context_for())
    assert published.decode.margin == 0.35 and m0.decode.margin == 0.0  # type: ignore[attr-defined]
    assert m0.router.margin == 0.0  # type: ignore[attr-defined]
    # The TTFT margin is the published one in both.
    assert m0.prefill.margin == published.prefill.margin == 0.35  # type: ignore[attr-defined]
    assert build_suite("voltana-paper-m0+voltana-router", context_for()).router.name == "voltana"


def test_static_best_takes_a_router_and_nothing_else() -> None:
    from voltana.policy.registry import SimulatorOnlyPolicyError, static_best_router

    assert static_best_router("static-best") == (True, None)
    assert static_best_router("static-best+voltana-router") == (True, "voltana")
    assert static_best_router("voltana+voltana-router") == (False, None)
    with pytest.raises(ConfigError, match="only a router modifier"):
        static_best_router("static-best+full-range")
    with pytest.raises(UnknownNameError, match="router"):
        static_best_router("static-best+nope-router")
    with pytest.raises(SimulatorOnlyPolicyError, match="voltana simulate"):
        build_suite("static-best+voltana-router", context_for())


def test_static_best_knows_the_builtin_routers_in_a_fresh_process() -> None:
    import subprocess
    import sys

    code = (
        "from voltana.policy.registry import static_best_router; "
        "print(static_best_router('static-best+voltana-router'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(True, 'voltana')"
