"""Colocated (unified) instances live: the engine's colocated mode, the phase on the wire, the
router's one plain /generate, `voltana up --sim --unified N` with `voltana bench`, and a mixed
1P1D + 1U stack."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from voltana.batching.scheduling import unified_gauges
from voltana.cli.main import build_parser
from voltana.cli.up_cmd import settings_from_args
from voltana.contract.instances import InstanceInfo
from voltana.contract.state import (
    ClusterSnapshot,
    InstanceState,
    Phase,
    Placement,
    RequestSpec,
    SloTarget,
)
from voltana.deploy.compose import ComposeLayout, render_compose
from voltana.energy import RequestEnergy
from voltana.engine import EngineMode, SglangHttpClient, SimEngine, SimEngineSettings, engine_phase
from voltana.errors import ConfigError
from voltana.policy.routing import RoundRobinRouter
from voltana.policy.unified import ColocatedRouting, UnifiedLaw
from voltana.rpc import create_channel
from voltana.services.controller.policies import PolicyBook
from voltana.services.router.cluster import LiveCluster
from voltana.services.router.dispatch import PdTarget, StreamTotals
from voltana.services.router.errors import NoInstanceAvailableError
from voltana.services.router.servicer import placed_instances, run_policy
from voltana.services.telemetry.convert import (
    phase_from_proto,
    phase_to_proto,
    snapshot_from_proto,
    snapshot_to_proto,
    state_from_proto,
    state_to_proto,
)
from voltana.stack import SimStack, SimStackSettings
from voltana.v1 import common_pb2, controller_pb2, controller_pb2_grpc

BENCH_TIMEOUT_S = 120.0
START_TIMEOUT_S = 60.0
ANY_PORTS = ("--router-port", "0", "--telemetry-port", "0", "--controller-port", "0")
ANY_PORTS += ("--http-port", "0")


def _state(instance_id: str, phase: Phase, **fields: object) -> InstanceState:
    values: dict[str, object] = {
        "gpu_key": "a100-80g",
        "sm_clock_mhz": 1410,
        "observed_at_s": 10.0,
        **fields,
    }
    return InstanceState(instance_id, phase, **values)  # type: ignore[arg-type]


def _info(instance_id: str, phase: Phase, port: int) -> InstanceInfo:
    return InstanceInfo(
        instance_id=instance_id,
        phase=phase,
        gpu_key="a100-80g",
        engine_url=f"http://127.0.0.1:{port}",
    )


# ---- units -----------------------------------------------------------------------------------


@pytest.mark.unit
def test_the_unified_engine_mode_is_sglangs_null_mode_and_registers_as_unified() -> None:
    assert EngineMode.UNIFIED is EngineMode.NULL
    assert EngineMode.parse("unified") is EngineMode.NULL
    assert SimEngineSettings(mode="unified").engine_mode is EngineMode.NULL
    assert engine_phase(EngineMode.NULL) is Phase.UNIFIED
    assert engine_phase(EngineMode.PREFILL) is Phase.PREFILL
    assert engine_phase(EngineMode.DECODE) is Phase.DECODE
    args = build_parser().parse_args(["serve", "engine", "--mode", "unified"])
    assert SimEngineSettings(mode=args.mode).engine_mode is EngineMode.NULL


@pytest.mark.unit
def test_the_unified_phase_crosses_the_wire_and_lands_in_the_snapshots_unified_map() -> None:
    assert phase_to_proto(Phase.UNIFIED) == common_pb2.PHASE_UNIFIED
    assert phase_from_proto(common_pb2.PHASE_UNIFIED, "test") is Phase.UNIFIED
    unified = _state("unified-0", Phase.UNIFIED, queue_len=2, running_batch=3)
    assert state_from_proto(state_to_proto(unified)) == unified
    states = {
        "prefill-0": _state("prefill-0", Phase.PREFILL),
        "decode-0": _state("decode-0", Phase.DECODE),
        "unified-0": unified,
    }
    snapshot = snapshot_from_proto(snapshot_to_proto(states, {}, 12.0))
    assert list(snapshot.unified) == ["unified-0"]
    assert list(snapshot.prefill) == ["prefill-0"] and list(snapshot.decode) == ["decode-0"]
    assert [s.instance_id for s in snapshot.states()] == ["prefill-0", "decode-0", "unified-0"]
    assert snapshot.placeable
    assert ClusterSnapshot(0.0, {}, {}, unified={"u": unified}).placeable
    assert not ClusterSnapshot(0.0, dict(list(states.items())[:1]), {}).placeable


@pytest.mark.unit
def test_the_controller_decides_a_unified_instance_with_the_composed_law() -> None:
    book = PolicyBook(
        policy_name="voltana",
        slo=SloTarget(),
        gpu_key="a100-80g",
        model_key="llama-3.1-8b",
        tensor_parallel=1,
    )
    law = book.policy_for(Phase.UNIFIED, "a100-80g")
    assert isinstance(law, UnifiedLaw)
    assert book.policy_name(Phase.UNIFIED) == "voltana"
    decision = law.decide(
        _state("unified-0", Phase.UNIFIED, queue_len=4, queued_tokens=8000, running_batch=16),
        book.slo,
        1.0,
    )
    assert decision.sm_clock_mhz > 0


@pytest.mark.unit
def test_the_router_places_on_colocated_instances_and_sends_one_plain_request() -> None:
    cluster = LiveCluster()
    infos = {
        "unified-0": _info("unified-0", Phase.UNIFIED, 30001),
        "unified-1": _info("unified-1", Phase.UNIFIED, 30002),
    }
    states = {i: _state(i, Phase.UNIFIED) for i in infos}
    cluster.update(ClusterSnapshot(10.0, {}, {}, unified=states), infos)
    view = cluster.routable()  # no PD pair needed
    assert set(view.unified) == set(infos) and not view.prefill
    router = ColocatedRouting(RoundRobinRouter())
    spec = RequestSpec(input_tokens=100, max_output_tokens=10, slo=SloTarget(), arrival_s=10.0)
    placement = run_policy(router, spec, view)
    assert placement.is_unified and placement.prefill_id in infos
    assert placed_instances(placement) == (placement.prefill_id,)
    assert placed_instances(Placement("p", "d")) == ("p", "d")
    cluster.record_placement("r1", placement, spec)
    assert cluster.view_of(placement.prefill_id).inflight_requests == 1  # type: ignore[union-attr]
    target = PdTarget.colocated_on(cluster.endpoint(placement.prefill_id))
    assert target.colocated and target.prefill_url == target.decode_url
    assert (target.bootstrap_host, target.bootstrap_port, target.bootstrap_room) == ("", 0, 0)
    assert target.instance_for_url(target.decode_url + "/generate") == placement.prefill_id
    # One engine's report is the request's whole energy; without it, the router's estimate.
    totals = StreamTotals(colocated=True, decode_energy=RequestEnergy(3.0, 1.0))
    assert totals.energy == RequestEnergy(3.0, 1.0)
    assert StreamTotals(colocated=True, estimated_energy=RequestEnergy(2.0, 0.0)).energy == (
        RequestEnergy(2.0, 0.0)
    )


@pytest.mark.unit
def test_a_colocated_only_cluster_with_none_routable_says_so() -> None:
    cluster = LiveCluster()
    state = _state("unified-0", Phase.UNIFIED)
    # Listed, but without an engine endpoint: not routable.
    cluster.update(ClusterSnapshot(10.0, {}, {}, unified={"unified-0": state}), {})
    with pytest.raises(NoInstanceAvailableError, match="no colocated instance available") as raised:
        cluster.routable()
    assert "prefill" not in str(raised.value)


@pytest.mark.unit
def test_a_pd_only_view_needs_both_phases_and_says_what_is_missing() -> None:
    cluster = LiveCluster()
    cluster.update(
        ClusterSnapshot(10.0, {"p": _state("p", Phase.PREFILL)}, {}),
        {"p": _info("p", Phase.PREFILL, 30001)},
    )
    with pytest.raises(NoInstanceAvailableError, match="no decode instance"):
        cluster.routable()


@pytest.mark.unit
def test_stack_up_and_compose_take_unified_counts() -> None:
    parser = build_parser()
    args = parser.parse_args(["up", "--sim", "--unified", "2"])
    ports = {"router": 0, "telemetry": 0, "controller": 0, "router.http": 0}
    settings = settings_from_args(args, ports)
    assert (settings.prefill, settings.decode, settings.unified) == (0, 0, 2)
    assert settings.shape == "2U"
    mixed = settings_from_args(
        parser.parse_args(["up", "--sim", "--prefill", "1", "--decode", "1", "--unified", "1"]),
        ports,
    )
    assert mixed.shape == "1P1D+1U"
    default = settings_from_args(parser.parse_args(["up", "--sim"]), ports)
    assert (default.prefill, default.decode, default.unified) == (2, 2, 0)
    with pytest.raises(ConfigError, match="PD serving"):
        SimStackSettings(prefill=1, decode=0, unified=1)
    with pytest.raises(ConfigError):
        SimStackSettings(prefill=0, decode=0, unified=0)
    compose = render_compose(ComposeLayout(prefill=0, decode=0, unified=2, sim_unified=1))
    assert "sglang-unified-1:" in compose and "sglang-prefill-0" not in compose
    assert "--disaggregation-mode" not in compose and "--disaggregation" not in compose
    assert '"--mode", "unified"' in compose
    with pytest.raises(ConfigError, match="PD serving"):
        ComposeLayout(prefill=1, decode=0, unified=1)


# ---- the engine ------------------------------------------------------------------------------


@pytest.mark.integration
async def test_a_unified_engine_serves_plain_generate_and_reports_both_sides() -> None:
    settings = SimEngineSettings(mode="unified", speedup=20.0, catch_up_wall_s=5.0)
    async with SimEngine(settings) as engine, SglangHttpClient() as http:
        assert engine.core.phase is Phase.UNIFIED
        assert engine.instance_state().phase is Phase.UNIFIED
        payload = {"input_ids": list(range(10, 522)), "sampling_params": {"max_new_tokens": 8}}
        answer = await http.generate(engine.url, payload)
        assert len(answer["output_ids"]) == 8
        assert answer["meta_info"]["finish_reason"]["type"] == "length"
        chunks = [chunk async for chunk in http.generate_stream(engine.url, payload)]
        assert sum(len(chunk["output_ids"]) for chunk in chunks) == 8  # incremental stream
        assert "voltana_energy" in chunks[-1]["meta_info"]
        info = await http.server_info(engine.url)
        assert info["disaggregation_mode"] == "null"
        # While a burst waits, the report is the simulator's colocated one.
        burst = [
            asyncio.create_task(
                http.generate(
                    engine.url,
                    {"input_ids": [7] * 4000, "sampling_params": {"max_new_tokens": 4}},
                )
            )
            for _ in range(6)
        ]
        await asyncio.sleep(0.02)
        core = engine.core
        assert core.prefill is not None and core.decode is not None
        gauges = core.gauges()
        expected = unified_gauges(core.prefill, core.decode, engine.clock())
        assert (gauges.queue_len, gauges.queued_tokens) == (
            expected.queue_len,
            expected.queued_tokens,
        )
        assert gauges.kv_tokens_capacity == core.kv_capacity_tokens
        results = await asyncio.gather(*burst)
        assert all(len(result["output_ids"]) == 4 for result in results)
        state = engine.instance_state()
        assert state.recent_ttft_ms is not None and state.recent_itl_ms is not None


# ---- the stack -------------------------------------------------------------------------------


def _write_trace(path: Path, count: int, gap_ms: int = 60) -> Path:
    lines = [
        {"timestamp": gap_ms * i, "input_length": 200 + 37 * (i % 7), "output_length": 10 + i % 5}
        for i in range(count)
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


async def _bench(router: str, telemetry: str, trace: Path, out: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voltana.cli.main", "bench",
        "--target", router, "--telemetry", telemetry, "--trace", str(trace),
        "--policy-label", "voltana", "--json", str(out), "--quiet",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), BENCH_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def _status(controller: str) -> controller_pb2.GetStatusResponse:
    async with create_channel(controller) as channel:
        stub = controller_pb2_grpc.ControllerServiceStub(channel)
        return await stub.GetStatus(controller_pb2.GetStatusRequest())


async def _read_addresses(process: asyncio.subprocess.Process) -> dict[str, str]:
    assert process.stdout is not None
    addresses: dict[str, str] = {}
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_S)).decode()
        if not line:
            stderr = await process.stderr.read() if process.stderr else b""
            raise AssertionError(f"voltana up ended early: {stderr.decode()[-2000:]}")
        if line.startswith("#"):
            assert "2U" in line
            return addresses
        name, address = line.split()
        addresses[name] = address


@pytest.mark.e2e
async def test_up_sim_unified_serves_a_bench_replay_on_colocated_instances(
    tmp_path: Path,
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voltana.cli.main",
        "up", "--sim", "--unified", "2", "--policy", "voltana", "--speedup", "5",
        "--log-level", "WARNING", *ANY_PORTS,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        addresses = await _read_addresses(process)
        assert {"unified-0.engine", "unified-1.engine", "unified-0.agent"} <= set(addresses)
        assert not any(name.startswith(("prefill", "decode")) for name in addresses)
        out = tmp_path / "bench.json"
        code, stderr = await _bench(
            addresses["router"], addresses["telemetry"], _write_trace(tmp_path / "t.jsonl", 16), out
        )
        assert code == 0, stderr
        (row,) = json.loads(out.read_text())["results"]
        assert row["requests"] == 16 and row["completed"] == 16, stderr
        assert row["energy_j"] > 0
        instances = row["instances"]
        assert set(instances) == {"unified-0", "unified-1"}
        assert all(figure["phase"] == "unified" for figure in instances.values())
        assert sum(figure["requests"] for figure in instances.values()) == 16
        assert all(figure["requests"] > 0 for figure in instances.values())
        assert all(figure["energy_j"] > 0 for figure in instances.values())
        assert "unified-0 (unified)" in stderr
        status = await _status(addresses["controller"])
        assert {i.instance_id: i.phase for i in status.instances} == {
            "unified-0": common_pb2.PHASE_UNIFIED,
            "unified-1": common_pb2.PHASE_UNIFIED,
        }
        assert status.unified_policy_name == "voltana"
        assert all(i.lease_held and i.recent_decisions for i in status.instances)
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 30.0) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.e2e
async def test_a_mixed_stack_serves_pd_and_colocated_requests(tmp_path: Path) -> None:
    settings = SimStackSettings(
        prefill=1,
        decode=1,
        unified=1,
        policy="voltana",
        speedup=5.0,
        http_port=0,
        report_interval_ms=100.0,
        sample_interval_ms=100,
        snapshot_interval_ms=50,
        drain_timeout_s=0.5,
    )
    async with SimStack(settings) as stack:
        out = tmp_path / "bench.json"
        code, stderr = await _bench(
            stack.router_address,
            stack.telemetry_address,
            _write_trace(tmp_path / "t.jsonl", 12),
            out,
        )
        assert code == 0, stderr
        (row,) = json.loads(out.read_text())["results"]
        assert row["completed"] == 12, stderr
        instances = row["instances"]
        assert {i: f["phase"] for i, f in instances.items()} == {
            "prefill-0": "prefill",
            "decode-0": "decode",
            "unified-0": "unified",
        }
        # The GPU-share split: the PD pair (2 GPUs) takes about twice the colocated one's.
        assert instances["prefill-0"]["requests"] == instances["decode-0"]["requests"]
        assert instances["unified-0"]["requests"] >= 2
        assert instances["prefill-0"]["requests"] + instances["unified-0"]["requests"] == 12
        status = await _status(stack.controller_address)
        phases = {i.instance_id: i.phase for i in status.instances}
        assert phases["unified-0"] == common_pb2.PHASE_UNIFIED
        assert phases["prefill-0"] == common_pb2.PHASE_PREFILL
        # The HTTP door relays to the colocated engine like to a PD pair.
        assert stack.router is not None and stack.router.http_url is not None
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.post(
                    stack.router.http_url + "/v1/completions",
                    json={"model": "llama-3.1-8b", "prompt": "hello there", "max_tokens": 4},
                ) as response:
                    assert response.status == 200
                    body = await response.json()
                    assert body["usage"]["completion_tokens"] == 4
