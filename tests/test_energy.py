"""Energy per request: the attribution core, and its check in the simulator (the requests'
shares add up to the cluster's measured energy)."""

from __future__ import annotations

import asyncio

import pytest
from security_helpers import SECURITY

from voltana.contract.state import SloTarget
from voltana.energy import EnergyLedger, RequestEnergy, WorkShares, spread_unclaimed
from voltana.hardware import get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.policy.base import PolicyContext
from voltana.policy.registry import build_suite
from voltana.sdk import GenerationSummary, VoltanaClient
from voltana.services.telemetry import TelemetryClient
from voltana.sim.cluster import ClusterConfig
from voltana.sim.simulator import Simulation
from voltana.stack import SimStack, SimStackSettings
from voltana.workloads import TraceRequest, load_workload


@pytest.mark.unit
def test_prefill_splits_by_tokens_decode_by_batch_slot() -> None:
    ledger: EnergyLedger[str] = EnergyLedger()
    ledger.charge(30.0, {"a": 1000.0, "b": 2000.0})  # prefill iteration: 1k and 2k tokens
    ledger.charge(8.0, {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0})  # decode batch of 4
    assert ledger.energy_of("a") == RequestEnergy(10.0 + 2.0, 0.0)
    assert ledger.energy_of("b") == RequestEnergy(20.0 + 2.0, 0.0)
    assert ledger.energy_of("c").total_j == pytest.approx(2.0)
    assert ledger.measured_j == pytest.approx(ledger.attributed_j) == pytest.approx(38.0)


@pytest.mark.unit
def test_idle_energy_goes_to_the_next_work_and_settles_to_the_last() -> None:
    ledger: EnergyLedger[str] = EnergyLedger()
    ledger.charge(60.0, None)  # idle before anything arrived
    ledger.charge(10.0, {"a": 1.0, "b": 3.0})
    assert ledger.energy_of("a") == RequestEnergy(2.5, 15.0)
    assert ledger.energy_of("b") == RequestEnergy(7.5, 45.0)
    ledger.charge(20.0, {})  # idle again: pending until more work or the end
    assert ledger.pending_idle_j == 20.0
    assert ledger.attributed_j + ledger.pending_idle_j == pytest.approx(ledger.measured_j)
    ledger.settle()
    assert ledger.pending_idle_j == 0.0
    assert ledger.energy_of("a").idle_j == pytest.approx(20.0)
    assert ledger.attributed_j == pytest.approx(ledger.measured_j) == pytest.approx(90.0)


@pytest.mark.unit
def test_released_requests_keep_the_books_balanced() -> None:
    ledger: EnergyLedger[int] = EnergyLedger()
    ledger.charge(5.0, None)
    ledger.charge(12.0, {1: 1.0, 2: 1.0})
    taken = ledger.release(1)
    assert taken == RequestEnergy(6.0, 2.5)
    assert ledger.release(1) == RequestEnergy()  # released once
    ledger.charge(-3.0, {2: 1.0})  # a counter that went back attributes nothing
    total = ledger.attributed_j + ledger.released_j + ledger.pending_idle_j
    assert total == pytest.approx(ledger.measured_j) == pytest.approx(17.0)


@pytest.mark.unit
def test_work_shares_charge_exactly_what_the_mapping_charges() -> None:
    """A caller may build the work once per iteration (WorkShares) instead of passing the
    mapping at every charge: the books come out bit for bit the same, release included."""
    by_mapping: EnergyLedger[int] = EnergyLedger()
    by_shares: EnergyLedger[int] = EnergyLedger()
    prefill = {1: 700.0, 2: 0.0, 3: 1300.0}  # a zero weight takes nothing
    decode = dict.fromkeys((1, 3, 4, 5, 6, 7, 8), 1.0)
    prefill_shares, decode_shares = WorkShares(prefill), WorkShares.uniform(decode)
    for energy_j, mapping, shares in (
        (3.3, None, None),
        (0.7, prefill, prefill_shares),
        (1.1, prefill, prefill_shares),
        (2.9, None, None),
        (0.37, decode, decode_shares),
        (0.41, decode, decode_shares),
        (0.0, decode, decode_shares),
        (1.3, {}, WorkShares({})),
    ):
        by_mapping.charge(energy_j, mapping)
        by_shares.charge(energy_j, shares)
    by_mapping.release(4)
    by_shares.release(4)
    # The same work again after a release: the ledger's resolved entries must not be stale.
    by_mapping.charge(0.53, decode)
    by_shares.charge(0.53, decode_shares)
    by_mapping.settle()
    by_shares.settle()
    assert by_shares.shares() == by_mapping.shares()
    assert (by_shares.pending_idle_j, by_shares.released_j, by_shares.measured_j) == (
        by_mapping.pending_idle_j,
        by_mapping.released_j,
        by_mapping.measured_j,
    )
    assert 2 not in by_shares.shares()


@pytest.mark.unit
def test_unclaimed_idle_energy_spreads_by_active_energy() -> None:
    spread = spread_unclaimed([RequestEnergy(1.0, 0.0), RequestEnergy(3.0, 1.0)], 8.0)
    assert spread == [RequestEnergy(1.0, 2.0), RequestEnergy(3.0, 7.0)]
    assert spread_unclaimed([RequestEnergy()], 5.0) == [RequestEnergy()]


def _simulate(policy: str, requests: list[TraceRequest], decode: int = 2):
    gpu, model = get_gpu("a100-80g"), get_model("llama-3.1-8b")
    perf = AnalyticalPerformanceModel.for_hardware(gpu, model)
    slo = SloTarget()
    config = ClusterConfig(gpu, model, num_prefill=2, num_decode=decode, slo=slo)
    suite = build_suite(policy, PolicyContext(gpu, perf, slo))
    return Simulation(config, perf, suite).run(requests)


@pytest.mark.e2e
@pytest.mark.parametrize("policy", ["static-max", "voltana", "voltana-paper"])
def test_per_request_energy_sums_to_the_clusters_measured_energy(policy: str) -> None:
    # Clock changes mid-iteration, chunked prefill, idle GPUs (voltana parks a decode GPU
    # that serves nobody): every joule the GPUs drew still lands on some request.
    requests = load_workload("azure-conv", rate_scale=2.0, max_requests=600)
    result = _simulate(policy, requests)
    attributed_j = sum(energy.total_j for energy in result.request_energy)
    assert attributed_j == pytest.approx(result.energy_j, rel=0.01)
    assert attributed_j == pytest.approx(result.energy_j, rel=1e-9)  # in fact to rounding
    completed = [
        e for r, e in zip(result.records, result.request_energy, strict=True) if r.completed
    ]
    assert len(completed) == len(requests) and all(e.active_j > 0 for e in completed)
    row_energy = result.outcome().request_energy_j
    assert row_energy is not None and len(row_energy) == len(requests)


@pytest.mark.e2e
def test_longer_requests_cost_more() -> None:
    # Two requests arriving together: one with 8x the prompt and output of the other.
    requests = [TraceRequest(0, 0.0, 256, 32), TraceRequest(1, 0.0, 2048, 256)]
    result = _simulate("static-max", requests, decode=1)
    short, long = result.request_energy
    assert long.active_j > 4 * short.active_j
    assert short.total_j + long.total_j == pytest.approx(result.energy_j, rel=1e-9)


@pytest.mark.e2e
async def test_live_requests_carry_their_energy_and_the_books_balance() -> None:
    settings = SimStackSettings(
        prefill=1,
        decode=1,
        speedup=10.0,
        report_interval_ms=100.0,
        sample_interval_ms=100,
        snapshot_interval_ms=50,
        drain_timeout_s=0.5,
        security=SECURITY,
    )
    async with SimStack(settings) as stack:
        engines = [instance.engine for instance in stack.instances]
        for engine in engines:
            engine.core._meter_energy()  # read the counters now: the books start here
        counters_before_j = sum(engine.gpu.energy_j() for engine in engines)
        ledgers_before_j = sum(engine.core.ledger.measured_j for engine in engines)
        pending_before_j = sum(engine.core.ledger.pending_idle_j for engine in engines)
        async with VoltanaClient(stack.router_address, timeout_s=30.0) as client:

            async def one(n: int) -> GenerationSummary:
                await asyncio.sleep(0.05 * n)
                prompt = list(range(100, 100 + 200 * (n + 1)))
                result = await client.generate(
                    input_ids=prompt, max_new_tokens=8 * (n + 1), stream=False
                )
                return result.summary

            summaries = await asyncio.gather(*(one(n) for n in range(6)))
        for engine in engines:
            engine.core._meter_energy()  # the idle tail since the last iteration
        measured_j = sum(engine.gpu.energy_j() for engine in engines) - counters_before_j
        ledgers_j = sum(engine.core.ledger.measured_j for engine in engines) - ledgers_before_j
        pending_j = sum(engine.core.ledger.pending_idle_j for engine in engines)
        await asyncio.sleep(0.3)  # completions reach telemetry off the request path
        async with TelemetryClient(stack.telemetry_address, security=SECURITY) as telemetry:
            report = await telemetry.window_report(600.0)
    energies = [s.energy_j for s in summaries]
    assert all(e is not None and e > 0 for e in energies), energies
    assert all(
        s.idle_energy_j is not None and 0 <= s.idle_energy_j <= s.energy_j for s in summaries
    )
    # Bigger requests (longer prompts, more tokens) cost more active energy. (Idle shares go to
    # whoever ran next after a pause, so on a busy machine, where the client took long to
    # connect, the first request may carry more idle than the last carries work.)
    active = [s.energy_j - s.idle_energy_j for s in summaries]  # type: ignore[operator]
    assert active[-1] > active[0]
    # The engines metered what the GPUs' counters say, and every joule of it (plus the idle
    # energy waiting before the first request) is some request's or still pending idle.
    assert ledgers_j == pytest.approx(measured_j, rel=1e-3)  # read a moment apart
    attributed_j = sum(energies) + pending_j  # type: ignore[arg-type]
    assert attributed_j == pytest.approx(measured_j + pending_before_j, rel=0.01)
    # Telemetry aggregates what the router reported.
    assert report.cluster.request_energy_j == pytest.approx(sum(energies), rel=1e-6)  # type: ignore[arg-type]
    assert report.cluster.mean_request_energy_j == pytest.approx(sum(energies) / 6, rel=1e-6)  # type: ignore[arg-type,operator]


@pytest.mark.e2e
async def test_the_router_estimates_energy_where_engines_report_none() -> None:
    # Real SGLang reports no energy per request: the router estimates it from the GPUs'
    # counters and what it saw of each request. Here the simulated engines leave it out too.
    settings = SimStackSettings(
        prefill=1,
        decode=1,
        speedup=5.0,
        report_interval_ms=50.0,
        sample_interval_ms=20,
        snapshot_interval_ms=20,
        drain_timeout_s=0.5,
        engines_report_energy=False,
        security=SECURITY,
    )
    async with (
        SimStack(settings) as stack,
        VoltanaClient(stack.router_address, timeout_s=30.0) as client,
    ):
        gpus = [instance.engine.gpu for instance in stack.instances]
        started_j = sum(gpu.energy_j() for gpu in gpus)
        await asyncio.sleep(0.2)  # a few counter readings before the first request
        first_request_j = sum(gpu.energy_j() for gpu in gpus)
        summaries = []
        for n in range(7):  # the first takes the idle energy since the stack started
            prompt = list(range(100, 100 + 400 * max(n, 1)))
            result = await client.generate(
                input_ids=prompt, max_new_tokens=20 * max(n, 1), stream=False
            )
            summaries.append(result.summary)
        done_j = sum(gpu.energy_j() for gpu in gpus)
    energies = [s.energy_j for s in summaries]
    assert all(e is not None and e > 0 for e in energies), energies
    assert all(
        s.idle_energy_j is not None and 0 <= s.idle_energy_j <= s.energy_j for s in summaries
    )
    # Requests 1..6 grow 1x..6x; a reading that spans a request and idle around it makes any
    # one request's figure rough, so the bigger half against the smaller half.
    active = [s.energy_j - s.idle_energy_j for s in summaries[1:]]  # type: ignore[operator]
    assert sum(active[3:]) > 1.3 * sum(active[:3]), active
    # The books: what the requests got is what the counters measured while they ran (plus
    # some idle from before the first one; the last stretch is an estimate). Accuracy against
    # the engines' exact attribution is what bench/energy_estimate.py measures.
    attributed_j = sum(energies)  # type: ignore[arg-type]
    assert 0.8 * (done_j - first_request_j) < attributed_j < 1.05 * (done_j - started_j), (
        attributed_j,
        done_j - first_request_j,
        done_j - started_j,
    )
