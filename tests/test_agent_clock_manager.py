"""ClockManager on simulated GPUs and a manual clock: leases, watchdog, read-back, spans."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from gpu_fakes import SlowLockingGpu
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from voltana.errors import InvalidArgumentError
from voltana.gpu import (
    GpuNotFoundError,
    GpuPermissionError,
    InvalidClockError,
    SimulatedGpu,
)
from voltana.hardware import get_gpu
from voltana.services.agent import (
    ClockManager,
    LeaseConflictError,
    LeaseNotHeldError,
    ManualClock,
)

pytestmark = pytest.mark.unit

A100 = get_gpu("a100-80g")


async def settle(condition: Callable[[], bool] = lambda: False, rounds: int = 50) -> None:
    """Let other tasks (and worker threads) run until ``condition`` holds or rounds run out."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0.001)


class ResetRefusingGpu(SimulatedGpu):
    def reset_sm_clocks(self) -> None:
        raise GpuPermissionError("reset refused (test)")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start_s=100.0)


@pytest.fixture
def gpus(clock: ManualClock) -> list[SimulatedGpu]:
    return [SimulatedGpu(A100, i, now_s=clock.now_s, clock_change_delay_ms=0) for i in (0, 1)]


def make_manager(gpus: list[SimulatedGpu], clock: ManualClock, **overrides: object) -> ClockManager:
    options: dict[str, object] = {
        "default_lease_ttl_s": 1.0,
        "max_lease_ttl_s": 5.0,
        "readback_timeout_s": 0.2,
        "readback_poll_s": 0.01,
        **overrides,
    }
    return ClockManager(gpus, clock, **options)  # type: ignore[arg-type]


@pytest.fixture
async def manager(gpus: list[SimulatedGpu], clock: ManualClock) -> AsyncIterator[ClockManager]:
    clocks = make_manager(gpus, clock)
    watchdog = asyncio.create_task(clocks.run_watchdog())
    yield clocks
    watchdog.cancel()
    await asyncio.gather(watchdog, return_exceptions=True)


async def test_a_caller_giving_up_mid_lock_leaves_the_clock_leased(clock: ManualClock) -> None:
    # A gRPC deadline or Ctrl-C cancels the handler while NVML is still locking the clock in
    # its thread; the lock lands anyway, and without its lease no watchdog would undo it.
    gpu = SlowLockingGpu(A100, 0, now_s=clock.now_s, clock_change_delay_ms=0)
    manager = make_manager([gpu], clock)  # type: ignore[list-item]
    setting = asyncio.create_task(manager.set_clock(0, 1005, holder="ctl", ttl_s=2.0))
    await settle(lambda: gpu.locked_range_mhz is not None)
    assert gpu.locked_range_mhz == (1005, 1005)
    setting.cancel()
    await settle(rounds=5)
    assert not setting.done()  # the lock and its lease finish first
    gpu.release.set()
    with pytest.raises(asyncio.CancelledError):
        await setting
    status = await manager.status(0)
    assert status.locked_sm_clock_mhz == 1005
    assert status.lease is not None and status.lease.holder == "ctl"
    clock.advance(2.5)
    assert await manager.expire_leases() == [0]
    assert gpu.locked_range_mhz is None


async def test_set_clock_rounds_up_and_leases(
    manager: ClockManager, gpus: list[SimulatedGpu], clock: ManualClock
) -> None:
    change = await manager.set_clock(1, 1000, holder="ctl", ttl_s=2.0, reason="test")
    assert change.applied_sm_clock_mhz == 1005
    assert change.clamped
    assert change.measured_sm_clock_mhz == 1005
    assert change.readback_matches
    assert change.lease.holder == "ctl"
    assert change.lease.expires_at_s == pytest.approx(102.0)
    assert gpus[1].sm_clock_mhz() == 1005
    assert gpus[0].sm_clock_mhz() == 1410
    status = await manager.status(1)
    assert status.locked_sm_clock_mhz == 1005
    assert status.lease == change.lease


async def test_exact_clock_is_not_clamped(manager: ClockManager) -> None:
    change = await manager.set_clock(0, 1005, holder="ctl")
    assert not change.clamped


@pytest.mark.parametrize("requested_mhz", [0, -100, float("nan")])
async def test_invalid_clock_changes_nothing(
    manager: ClockManager, gpus: list[SimulatedGpu], requested_mhz: float
) -> None:
    with pytest.raises(InvalidClockError):
        await manager.set_clock(0, requested_mhz, holder="ctl")
    assert gpus[0].locked_range_mhz is None
    assert (await manager.status(0)).lease is None


async def test_unknown_gpu_is_not_found(manager: ClockManager) -> None:
    with pytest.raises(GpuNotFoundError, match=r"\[0, 1\]"):
        await manager.set_clock(7, 1005, holder="ctl")


async def test_lease_ttl_default_cap_and_refusal(manager: ClockManager) -> None:
    assert manager.lease_ttl_s(None) == 1.0
    assert manager.lease_ttl_s(0) == 1.0
    assert manager.lease_ttl_s(60.0) == 5.0
    with pytest.raises(InvalidArgumentError):
        manager.lease_ttl_s(-1.0)


async def test_other_holder_is_refused_while_the_lease_lives(manager: ClockManager) -> None:
    await manager.set_clock(0, 1005, holder="a", ttl_s=1.0)
    with pytest.raises(LeaseConflictError):
        await manager.set_clock(0, 1200, holder="b")
    with pytest.raises(LeaseNotHeldError):
        await manager.renew([0], holder="b")


async def test_watchdog_resets_an_expired_lease(
    manager: ClockManager, gpus: list[SimulatedGpu], clock: ManualClock
) -> None:
    await manager.set_clock(0, 1005, holder="ctl", ttl_s=1.0)
    await settle()
    clock.advance(0.99)
    await settle()
    assert gpus[0].sm_clock_mhz() == 1005
    clock.advance(0.02)
    await settle(lambda: gpus[0].locked_range_mhz is None)
    assert gpus[0].sm_clock_mhz() == 1410
    status = await manager.status(0)
    assert status.lease is None and status.locked_sm_clock_mhz is None


async def test_renew_postpones_the_reset(
    manager: ClockManager, gpus: list[SimulatedGpu], clock: ManualClock
) -> None:
    await manager.set_clock(0, 1005, holder="ctl", ttl_s=1.0)
    await manager.set_clock(1, 1200, holder="ctl", ttl_s=1.0)
    await settle()
    clock.advance(0.8)
    renewed, expires_at_s = await manager.renew(None, holder="ctl", ttl_s=1.0)
    assert renewed == [0, 1]
    assert expires_at_s == pytest.approx(101.8)
    await settle()
    clock.advance(0.8)  # past the first expiry, before the renewed one
    await settle()
    assert gpus[0].locked_range_mhz == (1005, 1005)
    clock.advance(0.3)
    await settle(lambda: gpus[0].locked_range_mhz is None and gpus[1].locked_range_mhz is None)
    assert [gpu.sm_clock_mhz() for gpu in gpus] == [1410, 1410]


async def test_renewing_nothing_is_fine(manager: ClockManager) -> None:
    assert await manager.renew(None, holder="nobody") == ([], None)


async def test_watchdog_does_not_spin(manager: ClockManager, clock: ManualClock) -> None:
    await manager.set_clock(0, 1005, holder="ctl", ttl_s=3.0)
    await settle()
    calls_before = clock.sleep_calls
    await asyncio.sleep(0.05)  # real time passes; virtual time does not
    assert clock.sleep_calls == calls_before
    assert clock.pending_sleepers == 1


async def test_read_back_waits_for_a_delayed_change(clock: ManualClock) -> None:
    gpu = SimulatedGpu(A100, 0, now_s=clock.now_s, clock_change_delay_ms=30)
    clocks = make_manager([gpu], clock)
    task = asyncio.create_task(clocks.set_clock(0, 1005, holder="ctl"))
    for _ in range(5):
        await settle(lambda: clock.pending_sleepers > 0)
        clock.advance(0.01)
    change = await asyncio.wait_for(task, 1.0)
    assert change.measured_sm_clock_mhz == 1005
    assert change.readback_matches


async def test_read_back_gives_up_after_the_timeout(clock: ManualClock) -> None:
    gpu = SimulatedGpu(A100, 0, now_s=clock.now_s, clock_change_delay_ms=1000)
    clocks = make_manager([gpu], clock, readback_timeout_s=0.05)
    task = asyncio.create_task(clocks.set_clock(0, 1005, holder="ctl"))
    for _ in range(10):
        await settle(lambda: clock.pending_sleepers > 0 or task.done())
        clock.advance(0.01)
    change = await asyncio.wait_for(task, 1.0)
    assert change.measured_sm_clock_mhz == 1410
    assert not change.readback_matches


async def test_reset_all_carries_on_past_failures(clock: ManualClock) -> None:
    refusing = ResetRefusingGpu(A100, 0, now_s=clock.now_s, clock_change_delay_ms=0)
    fine = SimulatedGpu(A100, 1, now_s=clock.now_s, clock_change_delay_ms=0)
    clocks = make_manager([refusing, fine], clock)
    await clocks.set_clock(1, 1005, holder="ctl")
    failures = await clocks.reset_all("test")
    assert [type(error) for error in failures] == [GpuPermissionError]
    assert fine.sm_clock_mhz() == 1410


async def test_failed_reset_on_expiry_drops_the_lease(clock: ManualClock) -> None:
    refusing = ResetRefusingGpu(A100, 0, now_s=clock.now_s, clock_change_delay_ms=0)
    clocks = make_manager([refusing], clock)
    await clocks.set_clock(0, 1005, holder="ctl", ttl_s=1.0)
    clock.advance(1.0)
    assert await clocks.expire_leases() == [0]
    assert (await clocks.status(0)).lease is None
    assert await clocks.expire_leases() == []


async def test_duplicate_gpu_indices_are_refused(clock: ManualClock) -> None:
    same = [SimulatedGpu(A100, 0, now_s=clock.now_s) for _ in range(2)]
    with pytest.raises(InvalidArgumentError):
        make_manager(same, clock)


async def test_clock_changes_are_traced(gpus: list[SimulatedGpu], clock: ManualClock) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    clocks = make_manager(gpus, clock, tracer=provider.get_tracer("test"))
    await clocks.set_clock(0, 1000, holder="ctl", reason="slack")
    await clocks.reset(0, reason="done")
    spans = {span.name: span for span in exporter.get_finished_spans()}
    set_span = spans["voltana.agent.set_clocks"]
    assert set_span.attributes is not None
    assert set_span.attributes["voltana.gpu.sm_clock.requested_mhz"] == 1000.0
    assert set_span.attributes["voltana.gpu.sm_clock.applied_mhz"] == 1005
    assert set_span.attributes["voltana.gpu.sm_clock.measured_mhz"] == 1005
    assert set_span.attributes["voltana.gpu.sm_clock.clamped"] is True
    assert set_span.attributes["voltana.reason"] == "slack"
    reset_span = spans["voltana.agent.reset_clocks"]
    assert reset_span.attributes is not None
    assert reset_span.attributes["voltana.lease.holder"] == "ctl"
