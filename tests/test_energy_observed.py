"""Energy per request from a router's observations (engines that report none, e.g. SGLang)."""

from __future__ import annotations

import pytest

from voltana.contract.state import ClusterSnapshot, InstanceState, Phase
from voltana.energy_observed import ObservedEnergy
from voltana.services.router.energy_estimates import EnergyEstimates

pytestmark = pytest.mark.unit


def test_decode_energy_splits_by_the_tokens_each_request_received() -> None:
    decode: ObservedEnergy[str] = ObservedEnergy()
    decode.reading(0.0, 1000.0)
    decode.tokens("a", 3)
    decode.tokens("b", 1)
    decode.reading(0.5, 1040.0)
    assert decode.finish("a", 0.5).total_j == pytest.approx(30.0)
    assert decode.finish("b", 0.5).total_j == pytest.approx(10.0)


def test_prefill_energy_splits_by_prompt_tokens_over_the_time_each_ran() -> None:
    prefill: ObservedEnergy[str] = ObservedEnergy()
    prefill.reading(0.0, 0.0)
    prefill.prefill_started("long", 0.0, 3000)  # runs 0..1 s: 1500 tokens in each half
    prefill.prefill_started("short", 0.5, 500)  # runs 0.5..1 s: all in the second half
    prefill.reading(0.5, 100.0)
    prefill.prefill_ended("long", 1.0)
    prefill.prefill_ended("short", 1.0)
    prefill.reading(1.0, 200.0)
    long_j = prefill.finish("long", 1.0)
    short_j = prefill.finish("short", 1.0)
    assert long_j.total_j == pytest.approx(100.0 + 100.0 * 1500 / 2000)
    assert short_j.total_j == pytest.approx(100.0 * 500 / 2000)


def test_idle_energy_goes_to_the_next_work_as_idle() -> None:
    decode: ObservedEnergy[str] = ObservedEnergy()
    decode.reading(0.0, 0.0)
    decode.reading(1.0, 60.0)  # nobody: idle
    decode.tokens("a", 5)
    decode.reading(1.5, 160.0)
    energy = decode.finish("a", 1.5)
    assert energy.active_j == pytest.approx(100.0)
    assert energy.idle_j == pytest.approx(60.0)


def test_a_request_ending_between_readings_gets_its_tail_and_the_books_balance() -> None:
    decode: ObservedEnergy[str] = ObservedEnergy()
    decode.reading(0.0, 0.0)
    decode.tokens("a", 2)
    decode.tokens("b", 2)
    decode.reading(1.0, 200.0)  # 200 W
    decode.tokens("a", 1)
    decode.tokens("b", 3)
    # "a" ends at 0.5 s past the reading: 200 W x 0.5 s x its 1 of 4 tokens so far.
    a = decode.finish("a", 1.5)
    assert a.total_j == pytest.approx(100.0 + 25.0)
    decode.tokens("b", 2)
    decode.reading(2.0, 380.0)  # 180 J measured; 25 J of it was handed out already
    b = decode.finish("b", 2.0)
    assert b.total_j == pytest.approx(100.0 + 155.0)
    assert a.total_j + b.total_j == pytest.approx(380.0)


def test_work_before_the_first_reading_or_across_a_counter_restart_is_not_charged() -> None:
    decode: ObservedEnergy[str] = ObservedEnergy()
    decode.tokens("a", 10)
    decode.reading(0.0, 500.0)
    decode.tokens("a", 1)
    decode.tokens("b", 1)
    decode.reading(1.0, 20.0)  # the counter went back: restarted
    decode.tokens("b", 1)
    decode.reading(2.0, 70.0)
    assert decode.finish("a", 2.0).total_j == 0.0
    assert decode.finish("b", 2.0).total_j == pytest.approx(50.0)


def test_a_reading_out_of_order_is_ignored() -> None:
    decode: ObservedEnergy[str] = ObservedEnergy()
    decode.reading(1.0, 100.0)
    decode.reading(0.5, 50.0)
    decode.tokens("a", 1)
    decode.reading(2.0, 130.0)
    assert decode.finish("a", 2.0).total_j == pytest.approx(30.0)


class _Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def _snapshot(energy_j: dict[str, float]) -> ClusterSnapshot:
    def state(instance_id: str, phase: Phase) -> InstanceState:
        return InstanceState(
            instance_id, phase, "a100-80g", 1410, energy_j=energy_j.get(instance_id, 0.0)
        )

    return ClusterSnapshot(
        now_s=0.0,
        prefill={"p": state("p", Phase.PREFILL)},
        decode={"d": state("d", Phase.DECODE)},
    )


def test_the_router_reads_each_counter_once_and_sums_prefill_and_decode() -> None:
    clock = _Clock()
    estimates = EnergyEstimates(clock)
    estimates.update(_snapshot({"p": 100.0, "d": 500.0}))
    estimates.dispatched("r", "p", prompt_tokens=1000)
    clock.now_s = 0.5
    estimates.update(_snapshot({"p": 150.0, "d": 500.0}))  # decode: the same sample again
    estimates.first_token("r", "p")
    estimates.tokens("r", "d", 4)
    clock.now_s = 1.0
    estimates.update(_snapshot({"p": 160.0, "d": 560.0}))
    energy = estimates.finished("r", ("p", "d", "p", "d"))
    assert energy is not None
    # Prefill: 50 J while it ran, 10 J of idle after (kept pending, not its own).
    # Decode: the 60 J since its first reading, all with this request's tokens.
    assert energy.total_j == pytest.approx(50.0 + 60.0)


def test_no_estimate_without_counter_readings() -> None:
    clock = _Clock()
    estimates = EnergyEstimates(clock)
    estimates.update(_snapshot({}))  # no agent samples these instances: energy 0
    estimates.dispatched("r", "p", prompt_tokens=10)
    clock.now_s = 1.0
    estimates.update(_snapshot({}))
    assert estimates.finished("r", ("p", "d")) is None
