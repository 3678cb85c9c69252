from __future__ import annotations

from collections.abc import Callable

import pytest

from voltana.errors import ConfigError
from voltana.gpu import GpuDevice, InvalidClockError, SimulatedGpu
from voltana.hardware import get_gpu

pytestmark = pytest.mark.unit

A100 = get_gpu("a100-80g")


class FakeClock:
    def __init__(self, start_s: float = 100.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def _linear_power_w(sm_clock_mhz: int) -> float:
    return sm_clock_mhz / 10.0


def test_defaults_come_from_the_spec() -> None:
    gpu = SimulatedGpu(A100, index=3, now_s=FakeClock())
    assert isinstance(gpu, GpuDevice)
    assert gpu.index == 3
    assert gpu.name == A100.display_name
    assert gpu.uuid == "GPU-sim-a100-80g-3"
    assert gpu.power_limit_w() == A100.tdp_w
    assert gpu.supported_sm_clocks_mhz() == A100.supported_sm_clocks_mhz
    assert gpu.default_sm_clock_mhz == 1410
    assert gpu.sm_clock_mhz() == 1410
    assert gpu.clock_change_delay_ms == A100.clock_change_delay_ms
    assert gpu.power_w() == A100.idle_w
    assert gpu.locked_range_mhz is None


def test_clock_change_takes_effect_after_the_delay() -> None:
    clock = FakeClock()
    gpu = SimulatedGpu(A100, now_s=clock, clock_change_delay_ms=30)
    gpu.set_locked_sm_clock_mhz(1005, 1005)
    assert gpu.locked_range_mhz == (1005, 1005)
    assert gpu.sm_clock_mhz() == 1410
    clock.advance(0.029)
    assert gpu.sm_clock_mhz() == 1410
    clock.advance(0.001)
    assert gpu.sm_clock_mhz() == 1005
    gpu.reset_sm_clocks()
    assert gpu.locked_range_mhz is None
    clock.advance(0.030)
    assert gpu.sm_clock_mhz() == 1410


def test_lock_range_runs_at_its_top() -> None:
    gpu = SimulatedGpu(A100, now_s=FakeClock(), clock_change_delay_ms=0)
    gpu.set_locked_sm_clock_mhz(210, 1200)
    assert gpu.sm_clock_mhz() == 1200


def test_queued_changes_apply_in_order() -> None:
    clock = FakeClock()
    gpu = SimulatedGpu(A100, now_s=clock, clock_change_delay_ms=20)
    gpu.set_locked_sm_clock_mhz(1005, 1005)
    clock.advance(0.010)
    gpu.set_locked_sm_clock_mhz(1200, 1200)
    clock.advance(0.015)  # first change done (t=20 ms), second pending (t=30 ms)
    assert gpu.sm_clock_mhz() == 1005
    clock.advance(0.005)
    assert gpu.sm_clock_mhz() == 1200


def test_energy_is_integrated_exactly_across_clock_changes() -> None:
    clock = FakeClock()
    gpu = SimulatedGpu(A100, now_s=clock, power_source=_linear_power_w, clock_change_delay_ms=50)
    clock.advance(1.0)  # 1 s at 1410 MHz → 141 W
    gpu.set_locked_sm_clock_mhz(1005, 1005)
    # Nobody asks for 2 s: the change at +50 ms must still split the integral.
    clock.advance(2.0)
    expected_j = 141.0 * 1.0 + 141.0 * 0.05 + 100.5 * 1.95
    assert gpu.energy_j() == pytest.approx(expected_j, rel=1e-12)
    assert gpu.power_w() == pytest.approx(100.5)


def test_idle_energy_uses_the_spec_idle_draw() -> None:
    clock = FakeClock()
    gpu = SimulatedGpu(A100, now_s=clock)
    assert gpu.energy_j() == 0.0
    clock.advance(2.5)
    assert gpu.energy_j() == pytest.approx(A100.idle_w * 2.5)


def test_swapping_the_power_source_keeps_energy_so_far() -> None:
    clock = FakeClock()
    gpu = SimulatedGpu(A100, now_s=clock)
    clock.advance(1.0)
    gpu.set_power_source(lambda sm_clock_mhz: 300.0)
    clock.advance(0.5)
    assert gpu.power_w() == 300.0
    assert gpu.energy_j() == pytest.approx(A100.idle_w + 150.0)


def test_energy_never_decreases_when_time_steps_back() -> None:
    clock = FakeClock()
    gpu = SimulatedGpu(A100, now_s=clock)
    clock.advance(1.0)
    before_j = gpu.energy_j()
    clock.advance(-0.5)
    assert gpu.energy_j() == before_j


def test_invalid_clocks_are_refused_and_change_nothing() -> None:
    clock = FakeClock()
    gpu = SimulatedGpu(A100, now_s=clock, clock_change_delay_ms=0)
    with pytest.raises(InvalidClockError):
        gpu.set_locked_sm_clock_mhz(1006, 1006)
    with pytest.raises(InvalidClockError):
        gpu.set_locked_sm_clock_mhz(1410, 1005)
    with pytest.raises(InvalidClockError):
        gpu.set_locked_sm_clock_mhz(0, 0)
    assert gpu.sm_clock_mhz() == 1410
    assert gpu.locked_range_mhz is None


def test_negative_delay_is_refused() -> None:
    with pytest.raises(ConfigError):
        SimulatedGpu(A100, clock_change_delay_ms=-1)


def _watts(power_w: float) -> Callable[[int], float]:
    return lambda sm_clock_mhz: power_w


def test_a_reading_while_the_engine_loop_is_late_counts_the_batch_that_goes_on() -> None:
    """A loaded host wakes the engine's loop after an iteration's end: the next iteration
    starts back-dated, and a reading in between must not count that gap at the idle draw (a
    profile's power window would then fall short by however late the loop was)."""
    clock = FakeClock(0.0)
    idle, busy = _watts(60.0), _watts(300.0)
    gpu = SimulatedGpu(A100, 0, now_s=clock, power_source=idle, clock_change_delay_ms=0)
    gpu.draw_during(busy, 0.0, 1.0, then=idle, likely_after=busy)
    clock.advance(1.5)  # the loop is 0.5 s late for the next iteration
    assert gpu.energy_j() == pytest.approx(300.0 * 1.5)
    gpu.draw_during(busy, 1.0, 2.0, then=idle, likely_after=busy)  # it starts back-dated
    assert gpu.energy_j() == pytest.approx(300.0 * 1.5)
    clock.advance(1.0)  # 2.5: late again; then the batch's last request is cancelled
    gpu.settle_likely(goes_on=False)
    assert gpu.energy_j() == pytest.approx(300.0 * 2.5)
    clock.advance(0.5)  # the loop has not noticed yet: idle since the cancel, nothing likely
    assert gpu.energy_j() == pytest.approx(300.0 * 2.5 + 60.0 * 0.5)
    gpu.set_power_source(idle)
    clock.advance(1.0)
    assert gpu.energy_j() == pytest.approx(300.0 * 2.5 + 60.0 * 1.5)


def test_without_work_that_goes_on_the_gap_counts_idle_until_revised() -> None:
    clock = FakeClock(0.0)
    idle, busy = _watts(60.0), _watts(300.0)
    gpu = SimulatedGpu(A100, 0, now_s=clock, power_source=idle, clock_change_delay_ms=0)
    gpu.draw_during(busy, 0.0, 1.0, then=idle)  # the batch ends with this iteration
    clock.advance(1.5)
    assert gpu.energy_j() == pytest.approx(300.0 + 60.0 * 0.5)
