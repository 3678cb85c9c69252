"""The node agent's fail-safe: GPUs go back to default clocks when the agent process dies
(SIGKILL, nothing restarts it) or hangs past its lease, through a watchdog process that
outlives it; and the shared simulated GPU that makes this testable without a GPU (its state
lives in a file, so the agent, its watchdog and this test hold the same GPU)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port
from security_helpers import SECURITY, TEST_TOKEN

from voltana.errors import UnavailableError
from voltana.gpu import SharedSimulatedGpu
from voltana.hardware import get_gpu
from voltana.rpc import create_channel, wait_until_ready
from voltana.rpc.auth import TOKEN_ENV
from voltana.services.agent import AgentService, AgentSettings
from voltana.services.agent.clock import SystemClock
from voltana.services.agent.failsafe import FailsafeWatchdog
from voltana.v1 import agent_pb2, agent_pb2_grpc

A100 = get_gpu("a100-80g")
LOW_MHZ = 210
START_TIMEOUT_S = 30.0


def shared_gpu(state_dir: Path, **kw: object) -> SharedSimulatedGpu:
    return SharedSimulatedGpu(A100, 0, state_dir=state_dir, clock_change_delay_ms=0, **kw)  # type: ignore[arg-type]


# ---- the shared simulated GPU ----------------------------------------------------------------


@pytest.mark.unit
def test_a_clock_locked_through_one_handle_is_the_clock_of_every_handle(tmp_path: Path) -> None:
    agent_view, engine_view = shared_gpu(tmp_path), shared_gpu(tmp_path)
    assert engine_view.sm_clock_mhz() == A100.default_sm_clock_mhz

    agent_view.set_locked_sm_clock_mhz(LOW_MHZ, LOW_MHZ)
    assert engine_view.sm_clock_mhz() == LOW_MHZ
    assert engine_view.locked_range_mhz == (LOW_MHZ, LOW_MHZ)

    shared_gpu(tmp_path).reset_sm_clocks()  # a third party (the watchdog)
    assert agent_view.sm_clock_mhz() == engine_view.sm_clock_mhz() == A100.default_sm_clock_mhz
    assert agent_view.locked_range_mhz is None


@pytest.mark.unit
def test_a_clock_change_takes_effect_after_the_delay(tmp_path: Path) -> None:
    wall = [100.0]
    gpu = SharedSimulatedGpu(
        A100, 0, state_dir=tmp_path, clock_change_delay_ms=50, wall_s=lambda: wall[0]
    )
    gpu.set_locked_sm_clock_mhz(LOW_MHZ, LOW_MHZ)
    assert gpu.sm_clock_mhz() == A100.default_sm_clock_mhz
    wall[0] += 0.05
    assert gpu.sm_clock_mhz() == LOW_MHZ


@pytest.mark.unit
def test_readers_see_the_power_and_energy_the_engine_publishes(tmp_path: Path) -> None:
    now = [0.0]
    engine_view = SharedSimulatedGpu(
        A100, 0, state_dir=tmp_path, now_s=lambda: now[0], publishes_power=True,
        publish_interval_s=0.0,
    )  # fmt: skip
    agent_view = shared_gpu(tmp_path)
    engine_view.set_power_source(lambda _mhz: 300.0)
    now[0] = 2.0
    assert engine_view.energy_j() == pytest.approx(600.0)
    assert agent_view.energy_j() == pytest.approx(600.0)
    assert agent_view.power_w() == 300.0


# ---- the watchdog process --------------------------------------------------------------------


@dataclass
class AgentProcess:
    process: asyncio.subprocess.Process
    address: str
    state_dir: Path

    def gpu(self) -> SharedSimulatedGpu:
        return shared_gpu(self.state_dir)


def children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


async def until(condition: object, what: str, timeout_s: float) -> float:
    """Seconds it took until ``condition()`` held."""
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what} did not happen within {timeout_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
async def agent_process(tmp_path: Path) -> AsyncIterator[AgentProcess]:
    """`voltana serve agent --backend sim-shared` as its own process."""
    port = free_port()
    env = {**os.environ, TOKEN_ENV: TEST_TOKEN}
    # fmt: off
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voltana.cli.main", "serve", "agent",
        "--listen", f"127.0.0.1:{port}", "--backend", "sim-shared",
        "--sim-state-dir", str(tmp_path), "--gpu-index", "0",
        "--max-lease-ttl-ms", "30000",
        env=env,
    )
    # fmt: on
    address = f"127.0.0.1:{port}"
    try:
        async with create_channel(address, security=SECURITY) as channel:
            await wait_until_ready(channel, START_TIMEOUT_S)
        yield AgentProcess(process, address, tmp_path)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for child in children_of(process.pid):
            os.kill(child, signal.SIGKILL)


async def lock_gpu(address: str, ttl_ms: int) -> None:
    async with create_channel(address, security=SECURITY) as channel:
        response = await agent_pb2_grpc.NodeAgentServiceStub(channel).SetClocks(
            agent_pb2.SetClocksRequest(
                gpu=agent_pb2.GpuSelector(gpu_index=0),
                sm_clock_mhz=LOW_MHZ,
                lease_ttl_ms=ttl_ms,
                requested_by="test-controller",
                reason="fail-safe test",
            )
        )
    assert response.applied_sm_clock_mhz == LOW_MHZ


@pytest.mark.e2e
async def test_sigkilled_agent_leaves_no_gpu_pinned(agent_process: AgentProcess) -> None:
    ttl_s = 30.0  # the longest lease there is: the watchdog must not wait for it
    await lock_gpu(agent_process.address, int(ttl_s * 1000))
    gpu = agent_process.gpu()
    assert gpu.sm_clock_mhz() == LOW_MHZ
    [watchdog_pid] = children_of(agent_process.process.pid)

    agent_process.process.kill()  # SIGKILL: no cleanup in the agent, nothing restarts it
    await agent_process.process.wait()

    took_s = await until(
        lambda: gpu.sm_clock_mhz() == A100.default_sm_clock_mhz, "the reset", timeout_s=ttl_s
    )
    assert took_s < 5.0
    assert gpu.locked_range_mhz is None
    await until(lambda: not alive(watchdog_pid), "the watchdog's exit", timeout_s=5.0)


@pytest.mark.e2e
async def test_a_hung_agent_gets_its_lapsed_lease_reset_by_the_watchdog(
    agent_process: AgentProcess,
) -> None:
    await lock_gpu(agent_process.address, 1000)
    gpu = agent_process.gpu()
    agent_process.process.send_signal(signal.SIGSTOP)  # alive, but does nothing
    try:
        took_s = await until(
            lambda: gpu.sm_clock_mhz() == A100.default_sm_clock_mhz,
            "the reset",
            timeout_s=10.0,
        )
    finally:
        agent_process.process.send_signal(signal.SIGCONT)
    # The 1 s lease plus the watchdog's 1 s grace (the agent's own reset would come first).
    assert 0.5 < took_s < 8.0


@pytest.mark.e2e
async def test_a_stopped_agent_resets_the_gpu_and_takes_its_watchdog_along(
    agent_process: AgentProcess,
) -> None:
    await lock_gpu(agent_process.address, 30_000)
    [watchdog_pid] = children_of(agent_process.process.pid)

    agent_process.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(agent_process.process.wait(), 20.0) == 0

    assert agent_process.gpu().sm_clock_mhz() == A100.default_sm_clock_mhz
    await until(lambda: not alive(watchdog_pid), "the watchdog's exit", timeout_s=5.0)


@pytest.mark.integration
async def test_an_agent_resets_at_start_what_a_dead_one_left_locked(tmp_path: Path) -> None:
    shared_gpu(tmp_path).set_locked_sm_clock_mhz(LOW_MHZ, LOW_MHZ)  # a crash left it pinned
    settings = AgentSettings(backend="sim-shared", sim_state_dir=str(tmp_path), security=SECURITY)
    async with AgentService(settings) as agent:
        assert agent.failsafe_pid is not None
        assert shared_gpu(tmp_path).sm_clock_mhz() == A100.default_sm_clock_mhz


@pytest.mark.integration
async def test_a_watchdog_that_cannot_start_is_an_error_not_a_silent_gap() -> None:
    broken = FailsafeWatchdog([sys.executable, "-c", "raise SystemExit(1)"], SystemClock())
    with pytest.raises(UnavailableError, match="fail-safe watchdog did not start"):
        await broken.start()
