"""Measured profiles: the file, `voltana profile` against the simulated engine + agent (and the
round trip back to the simulated GPU's model), and --profile in every policy user."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from gpu_fakes import SlowLockingGpu
from security_helpers import SECURITY, TEST_TOKEN

from voltana.cli.main import main
from voltana.engine import SimEngineSettings
from voltana.errors import ConfigError
from voltana.hardware import get_gpu, get_model
from voltana.perf.measured import MeasuredProfile, ProfiledGpu, ProfileMetadata
from voltana.perf.profile import ProfiledPerformanceModel, ProfilePoint, ProfileTable
from voltana.profiler import Profiler, ProfileSettings
from voltana.profiler.agent_clocks import AgentClockControl
from voltana.profiler.roundtrip import roundtrip_errors
from voltana.profiler.runner import choose_clocks
from voltana.rpc import create_channel
from voltana.services.agent import AgentService, AgentSettings
from voltana.services.controller.policies import PolicyBook
from voltana.services.router import RouterSettings
from voltana.stack import EngineNode, EngineNodeSettings
from voltana.v1 import agent_pb2, agent_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
A100 = get_gpu("a100-80g")
LLAMA = get_model("llama-3.1-8b")
# Sped up, yet slow enough that a loaded 2-core machine keeps the simulated timeline exact.
SPEEDUP = 4.0
SWEEP = ProfileSettings(
    engine_url="",
    agent_address="",
    model=LLAMA,
    clocks_mhz=(1410, 1005),
    prompt_tokens=(256, 1024),
    batch_sizes=(1, 16),
    context_tokens=(512,),
    idle_window_s=0.3,
    prefill_window_s=0.3,
    decode_window_s=0.5,
    settle_s=0.05,
)


def small_profile() -> MeasuredProfile:
    points = []
    for clock, scale in ((1410, 1.0), (1005, 1.3)):
        points += [
            ProfilePoint("idle", clock, 0, 0, 0.0, 80.0 * scale),
            ProfilePoint("prefill", clock, 1, 256, 20.0 * scale, 380.0 / scale),
            ProfilePoint("prefill", clock, 1, 1024, 60.0 * scale, 390.0 / scale),
            ProfilePoint("decode", clock, 1, 600, 9.0 * scale, 250.0 / scale),
            ProfilePoint("decode", clock, 16, 9000, 11.0 * scale, 280.0 / scale),
        ]
    metadata = ProfileMetadata(
        gpu=ProfiledGpu(
            name="NVIDIA A100-SXM4-80GB",
            key="a100-80g",
            supported_sm_clocks_mhz=A100.supported_sm_clocks_mhz,
            default_sm_clock_mhz=1410,
            power_limit_w=400.0,
            driver_version="550.54.15",
        ),
        model=LLAMA,
        kv_capacity_tokens=400_000,
        max_running_requests=256,
        model_path="meta-llama/Llama-3.1-8B-Instruct",
        sglang_version="0.5.2",
    )
    return MeasuredProfile(ProfileTable(tuple(points)), metadata)


# ---- the file ------------------------------------------------------------------------------


@pytest.mark.unit
def test_profile_file_round_trips_with_its_metadata(tmp_path: Path) -> None:
    path = tmp_path / "profile.csv"
    small_profile().write(path)
    lines = path.read_text().splitlines()
    assert lines[0] == "# voltana-profile 1" and lines[1].startswith("# metadata {")
    assert lines[2] == "phase,sm_clock_mhz,batch_size,tokens,latency_ms,power_w"
    profile = MeasuredProfile.read(path)
    assert profile == small_profile()
    perf = profile.performance_model()
    assert isinstance(perf, ProfiledPerformanceModel)
    # Measured points come back exactly; idle power and KV capacity come from the file.
    assert perf.prefill_iteration(1024, 1005).latency_s == pytest.approx(0.078)
    assert perf.decode_iteration(16, 9000, 1410).power_w == pytest.approx(280.0)
    assert perf.idle_power_w(1410) == 80.0 and perf.idle_power_w(1005) == pytest.approx(104.0)
    assert perf.kv_capacity_tokens() == 400_000
    # No policy may go below the lowest profiled clock: there the profile knows nothing.
    assert perf.gpu.key == "a100-80g" and min(perf.gpu.supported_sm_clocks_mhz) == 1005


@pytest.mark.unit
def test_a_gpu_outside_the_catalog_comes_from_the_profile(tmp_path: Path) -> None:
    profile = small_profile()
    l40s_clocks = tuple(range(210, 2521, 15))
    gpu = ProfiledGpu("NVIDIA L40S", "", l40s_clocks, 2520, power_limit_w=350.0)
    path = tmp_path / "l40s.csv"
    replace(profile, metadata=replace(profile.metadata, gpu=gpu)).write(path)
    spec = MeasuredProfile.read(path).gpu_spec()
    assert spec.key == "l40s" and spec.display_name == "NVIDIA L40S"
    assert (spec.min_sm_clock_mhz, spec.max_sm_clock_mhz) == (1005, 2520)
    assert spec.sm_clock_step_mhz == 15 and spec.tdp_w == 350.0 and spec.idle_w == 80.0


@pytest.mark.unit
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("phase,sm_clock_mhz\n", "not a measured profile"),
        ("# voltana-profile 1\n# metadata {nope\n", "not JSON"),
        ("# voltana-profile 1\n# metadata {}\n", "bad profile metadata"),
    ],
)
def test_bad_profile_files_are_refused_with_the_reason(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        MeasuredProfile.read(path)
    with pytest.raises(ConfigError, match=r"[Nn]o such file"):
        MeasuredProfile.read(tmp_path / "missing.csv")


@pytest.mark.unit
def test_a_profile_without_decode_rows_is_refused(tmp_path: Path) -> None:
    profile = small_profile()
    table = ProfileTable(tuple(p for p in profile.table.points if p.phase != "decode"))
    path = tmp_path / "no-decode.csv"
    replace(profile, table=table).write(path)
    with pytest.raises(ConfigError, match="no decode rows"):
        MeasuredProfile.read(path)


@pytest.mark.unit
def test_default_clocks_spread_over_the_upper_half() -> None:
    assert choose_clocks(A100.supported_sm_clocks_mhz, 1410, 5) == (705, 885, 1065, 1230, 1410)
    assert choose_clocks(A100.supported_sm_clocks_mhz, 1410, 1) == (1410,)


# ---- every policy user takes --profile -----------------------------------------------------


@pytest.mark.unit
def test_controller_and_router_policies_use_the_profile(tmp_path: Path) -> None:
    path = tmp_path / "profile.csv"
    small_profile().write(path)
    context = RouterSettings(profile_path=str(path), gpu_key="h100-80g").policy_context()
    assert isinstance(context.perf, ProfiledPerformanceModel)
    assert context.gpu.key == "a100-80g" and context.gpu.min_sm_clock_mhz == 1005

    async def policy_clock() -> int:
        book = PolicyBook(
            policy_name="voltana",
            slo=context.slo,
            gpu_key="h100-80g",
            model_key="ministral-3b",
            tensor_parallel=1,
            profile_path=str(path),
        )
        # Instances on the profiled GPU run under a policy built on the profile.
        assert book.gpu_for("a100-80g").min_sm_clock_mhz == 1005
        return book.gpu_for("").max_sm_clock_mhz

    assert asyncio.run(policy_clock()) == 1410


@pytest.mark.e2e
def test_simulate_runs_on_a_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "profile.csv"
    small_profile().write(path)
    out = tmp_path / "out.json"
    code = main(
        [
            "simulate", "--profile", str(path), "--gpu", "h100-80g", "--quiet",
            "--trace", "synthetic:poisson:rate=4,duration=10,input=512,output=64,seed=1",
            "--policy", "static-max", "--policy", "voltana", "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    document = json.loads(out.read_text())
    assert document["config"]["gpu"] == "a100-80g" and document["config"]["model"] == LLAMA.key
    assert [row["policy"] for row in document["results"]] == ["static-max", "voltana"]
    assert "A100" in capsys.readouterr().err


# ---- the round trip against the simulated GPU ----------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(240)
async def test_profiling_the_simulated_gpu_reproduces_its_model() -> None:
    node = EngineNode(
        EngineNodeSettings(
            engine=SimEngineSettings(mode="null", speedup=SPEEDUP, catch_up_wall_s=2.0),
            agent_listen_address="127.0.0.1:0",
            security=SECURITY,
        )
    )
    async with node:
        assert node.agent is not None and node.engine is not None
        settings = replace(
            SWEEP,
            engine_url=node.engine.url,
            agent_address=node.agent.address,
            security=SECURITY,
        )
        kv_capacity = node.engine.core.kv_capacity_tokens
        lines: list[str] = []
        profile = await Profiler(settings, lines.append).run()
        # The clocks went back to default through the agent (ResetClocks), not at its stop.
        assert node.gpu.locked_range_mhz is None
    metadata = profile.metadata
    assert metadata.gpu.key == "a100-80g" and metadata.gpu.driver_version == "simulated"
    assert metadata.kv_capacity_tokens == kv_capacity
    assert metadata.notes == {"engine_speedup": SPEEDUP}
    assert lines[-1] == "clocks back at their defaults"
    errors = roundtrip_errors(profile, node.perf)
    assert {e.phase for e in errors} == {"idle", "prefill", "decode"} and len(errors) == 2 * 5
    worst = max(errors, key=lambda e: max(e.latency_error, e.power_error))
    assert max(worst.latency_error, worst.power_error) <= 0.03, worst


@pytest.mark.integration
async def test_a_clock_set_cut_short_is_still_put_back() -> None:
    # Ctrl-C while SetClocks is in flight: the agent may have locked the GPU already, so the
    # profiler must reset it although it never saw the reply.
    gpu = SlowLockingGpu(get_gpu("a100-80g"), 0, clock_change_delay_ms=0)
    async with AgentService(AgentSettings(security=SECURITY), devices=[gpu]) as agent:
        async with AgentClockControl(
            agent.address, [0], security=SECURITY, holder="profile-test"
        ) as control:
            setting = asyncio.create_task(control.set_clock(1005, "test"))
            deadline = time.monotonic() + 10.0
            while gpu.locked_range_mhz is None:
                assert time.monotonic() < deadline, "the agent never locked the clock"
                await asyncio.sleep(0.005)
            setting.cancel()
            await asyncio.gather(setting, return_exceptions=True)
            gpu.release.set()
        assert gpu.locked_range_mhz is None


# ---- the command ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_engine(engine_port: int, agent_port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "VOLTANA_CONTROL_TOKEN": TEST_TOKEN, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [
            sys.executable, "-m", "voltana.cli.main", "serve", "engine", "--mode", "null",
            "--listen", f"127.0.0.1:{engine_port}", "--agent-listen", f"127.0.0.1:{agent_port}",
            "--speedup", str(SPEEDUP), "--no-metrics",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def _clocks(agent_address: str) -> list[agent_pb2.GpuClockState]:
    async with create_channel(agent_address, security=SECURITY) as channel:
        stub = agent_pb2_grpc.NodeAgentServiceStub(channel)
        for _ in range(200):
            try:
                response = await stub.GetClocks(agent_pb2.GetClocksRequest(), timeout=1.0)
                return list(response.clocks)
            except Exception:
                await asyncio.sleep(0.05)
    raise AssertionError(f"no agent at {agent_address}")


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_profile_command_writes_a_profile_and_restores_clocks_on_ctrl_c(tmp_path: Path) -> None:
    engine_port, agent_port = _free_port(), _free_port()
    engine = _start_engine(engine_port, agent_port)
    agent = f"127.0.0.1:{agent_port}"
    try:
        assert all(not c.locked for c in asyncio.run(_clocks(agent)))
        common = [
            "profile", "--engine-url", f"http://127.0.0.1:{engine_port}", "--agent", agent,
            "--model", "llama-3.1-8b", "--prompt-tokens", "256", "--batch-sizes", "1",
            "--context-tokens", "512", "--idle-window-s", "0.2", "--prefill-window-s", "0.2",
            "--decode-window-s", "0.3", "--settle-s", "0",
        ]  # fmt: skip
        env = {**os.environ, "VOLTANA_CONTROL_TOKEN": TEST_TOKEN, "PYTHONPATH": str(ROOT)}
        out = tmp_path / "profile.csv"
        done = subprocess.run(
            [sys.executable, "-m", "voltana.cli.main", *common, "--clocks", "1410,1005",
             "--out", str(out)],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "[2/2 1005 MHz] decode batch 1" in done.stderr
        profile = MeasuredProfile.read(out)
        assert profile.table.clocks_mhz("decode") == [1005, 1410]
        assert all(not c.locked for c in asyncio.run(_clocks(agent)))

        # Interrupted mid-sweep: the clock it had locked goes back to the default.
        interrupted = subprocess.Popen(
            [sys.executable, "-m", "voltana.cli.main", *common, "--clocks", "810",
             "--decode-window-s", "30", "--out", str(tmp_path / "never.csv")],
            env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not any(c.locked for c in asyncio.run(_clocks(agent))):
            assert time.monotonic() < deadline and interrupted.poll() is None
            time.sleep(0.1)
        interrupted.send_signal(signal.SIGINT)
        _, stderr = interrupted.communicate(timeout=30)
        assert interrupted.returncode == 130, stderr
        assert "interrupted; clocks are back at their defaults" in stderr
        assert all(not c.locked for c in asyncio.run(_clocks(agent)))
        assert not (tmp_path / "never.csv").exists()
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(timeout=30)


@pytest.mark.e2e
def test_profile_command_refuses_bad_input_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = ["profile", "--engine-url", "http://127.0.0.1:1", "--agent", "127.0.0.1:1"]
    assert main([*base, "--out", str(tmp_path / "p.csv")]) == 2
    assert "--model or --model-config" in capsys.readouterr().err
    assert main([*base, "--model", "llama-3.1-8b", "--out", "/nonexistent/p.csv"]) == 2
    assert "no such directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--model", "llama-3.1-8b", "--clocks", "fast", "--out", "p.csv"])
    assert exit_info.value.code == 2
