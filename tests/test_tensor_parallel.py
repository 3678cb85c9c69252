"""Tensor-parallel instances live: one instance on several GPUs (of one node agent or several),
clocks set on every GPU of the group, power and energy summed in telemetry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from security_helpers import SECURITY

from voltana.contract.state import Phase
from voltana.rpc import create_channel
from voltana.sdk import GenerationSummary, VoltanaClient
from voltana.services.agent import AgentService, AgentSettings
from voltana.services.controller import ControllerService, ControllerSettings
from voltana.services.telemetry import (
    GpuRef,
    InstanceInfo,
    TelemetryClient,
    TelemetryService,
    TelemetrySettings,
)
from voltana.services.telemetry.gpu_groups import GpuGroups, MemberReading
from voltana.stack import SimStack, SimStackSettings
from voltana.v1 import agent_pb2, agent_pb2_grpc


async def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# ---- telemetry's group readings ------------------------------------------------------------


@pytest.mark.unit
def test_a_group_reading_waits_for_every_gpu_then_sums() -> None:
    info = InstanceInfo(
        "decode-0",
        Phase.DECODE,
        "h100-80g",
        agent_address="a:1",
        gpu_index=0,
        gpus=(GpuRef("a:1", 0), GpuRef("b:1", 3)),
    )
    groups = GpuGroups()
    assert groups.combine(info, GpuRef("a:1", 0), MemberReading(10.0, 1005, 300.0, 1000.0)) is None
    combined = groups.combine(info, GpuRef("b:1", 3), MemberReading(10.1, 990, 310.0, 2000.0))
    assert combined == MemberReading(10.1, 990, 610.0, 3000.0)
    # Each later sample of either GPU updates the sum; the counters stay monotonic.
    later = groups.combine(info, GpuRef("a:1", 0), MemberReading(10.5, 1005, 200.0, 1100.0))
    assert later == MemberReading(10.5, 990, 510.0, 3100.0)
    refused = groups.combine(info, GpuRef("c:1", 9), MemberReading(11.0, 1005, 1.0, 1.0))
    assert isinstance(refused, str) and "not one of 'decode-0'" in refused
    late = groups.combine(info, GpuRef("a:1", 0), MemberReading(10.2, 1005, 1.0, 1.0))
    assert isinstance(late, str) and "older than the last" in late
    # An agent calling itself by another name: its GPU index alone is unambiguous here.
    aliased = groups.combine(info, GpuRef("10.0.0.2:1", 3), MemberReading(11.0, 990, 300.0, 2100))
    assert aliased == MemberReading(11.0, 990, 500.0, 3200.0)


# ---- one instance across two node agents ---------------------------------------------------


@pytest.mark.integration
async def test_controller_sets_every_gpu_of_an_instance_across_agents() -> None:
    telemetry = TelemetryService(TelemetrySettings(listen_address="127.0.0.1:0", security=SECURITY))
    await telemetry.start()
    agents = []
    try:
        client = TelemetryClient(telemetry.address, security=SECURITY)
        await client.register_instance(InstanceInfo("decode-0", Phase.DECODE, "a100-80g"))
        for gpu_index in (0, 1):
            agent = AgentService(
                AgentSettings(
                    backend="sim",
                    gpu_indices=(gpu_index,),
                    instance_gpu_indices={"decode-0": gpu_index},
                    telemetry_address=telemetry.address,
                    sample_interval_ms=50,
                    security=SECURITY,
                )
            )
            await agent.start()
            agents.append(agent)
        gpus = (GpuRef(agents[0].address, 0), GpuRef(agents[1].address, 1))
        await client.register_instance(
            InstanceInfo(
                "decode-0",
                Phase.DECODE,
                "a100-80g",
                engine_url="http://127.0.0.1:1",
                agent_address=gpus[0].agent_address,
                gpu_index=0,
                gpus=gpus,
            )
        )
        controller = ControllerService(
            ControllerSettings(
                telemetry_address=telemetry.address,
                policy="static:1005",
                controller_id="controller@test",
                security=SECURITY,
            )
        )
        async with controller:
            sims = [agent.devices[0] for agent in agents]
            await wait_for(
                lambda: all(gpu.sm_clock_mhz() == 1005 for gpu in sims), "both GPUs at 1005 MHz"
            )
            # Long enough that the last samples' age (50 ms) is small next to the counters.
            await wait_for(lambda: min(gpu.energy_j() for gpu in sims) > 60.0, "60 J each")
            snapshot, infos = await client.snapshot_with_endpoints()
            assert infos["decode-0"].gpus == gpus
            state = snapshot.decode["decode-0"]
            # One reading for the instance: both GPUs' power and energy.
            assert state.power_w == pytest.approx(sum(gpu.power_w() for gpu in sims), rel=0.05)
            assert state.energy_j > max(gpu.energy_j() for gpu in sims) * 1.5
        # The controller's stop resets what it held: both GPUs.
        assert all(gpu.locked_range_mhz is None for gpu in sims)
        await client.close()
    finally:
        for agent in agents:
            await agent.stop()
        await telemetry.stop()


# ---- the whole stack with TP2 instances ----------------------------------------------------


@pytest.mark.e2e
async def test_stack_with_tp2_instances_serves_and_sums_energy() -> None:
    settings = SimStackSettings(
        prefill=1,
        decode=1,
        gpu_key="h100-80g",
        model_key="qwen3-32b",
        tp=2,
        policy="static:1005",
        sample_interval_ms=50,
        security=SECURITY,
    )
    async with SimStack(settings) as stack:
        assert [len(i.gpus) for i in stack.instances] == [2, 2]
        assert [[g.index for g in i.gpus] for i in stack.instances] == [[0, 1], [2, 3]]
        every_gpu = [gpu for instance in stack.instances for gpu in instance.gpus]
        await wait_for(lambda: all(g.sm_clock_mhz() == 1005 for g in every_gpu), "1005 MHz")
        async with VoltanaClient(stack.router_address, tls=None) as client:
            summary = None
            async for event in client.generate(input_ids=list(range(1000, 1512)), max_new_tokens=8):
                if isinstance(event, GenerationSummary):
                    summary = event
        assert summary is not None and summary.completion_tokens == 8
        async with TelemetryClient(stack.telemetry_address, security=SECURITY) as telemetry:
            snapshot, infos = await telemetry.snapshot_with_endpoints()
        decode = stack.instances[1]
        assert len(infos[decode.instance_id].gpu_refs) == 2
        reported = snapshot.decode[decode.instance_id].energy_j
        # Telemetry's energy is the sum of both GPUs' counters, as sampled up to 50 ms earlier
        # (at most 2 x 700 W meanwhile); one GPU's counter would be about half.
        total = sum(gpu.energy_j() for gpu in decode.gpus)
        assert total - 2 * 700.0 * 0.05 <= reported <= total
        assert reported > 1.5 * max(gpu.energy_j() for gpu in decode.gpus) - 2 * 700.0 * 0.05
        # Through the agent: an instance selector locks every GPU of the group.
        assert decode.agent is not None
        async with create_channel(decode.agent.address, security=SECURITY) as channel:
            stub = agent_pb2_grpc.NodeAgentServiceStub(channel)
            listing = await stub.ListGpus(agent_pb2.ListGpusRequest())
        assert [list(g.instance_ids) for g in listing.gpus] == [["decode-0"], ["decode-0"]]
    assert all(g.locked_range_mhz is None for g in every_gpu)


# ---- custom models live --------------------------------------------------------------------


@pytest.mark.e2e
async def test_stack_runs_a_model_from_its_hugging_face_config(tmp_path: Path) -> None:
    config = {
        "_name_or_path": "acme/tiny-7b",
        "num_hidden_layers": 28,
        "hidden_size": 3584,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "intermediate_size": 18944,
        "vocab_size": 152064,
        "torch_dtype": "bfloat16",
        "max_position_embeddings": 32768,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    settings = SimStackSettings(
        prefill=1,
        decode=1,
        model_key="no-such-model",  # the config replaces it
        model_config_path=str(path),
        policy="voltana",
        speedup=20.0,
        security=SECURITY,
    )
    async with SimStack(settings) as stack:
        assert stack.physics.model.key == "acme/tiny-7b"
        engine = stack.instances[1].engine
        assert engine.perf.model.num_kv_heads == 4
        assert engine.core.kv_capacity_tokens == stack.perf.kv_capacity_tokens()
        assert stack.router is not None and stack.controller is not None
        info = engine.server_info()
        assert info["context_length"] == 32768


# ---- a real SGLang server's reporter: GPU type and GPUs from the node agent -----------------


@pytest.mark.integration
async def test_reporter_takes_the_gpu_type_and_its_gpus_from_the_node_agent(
    tmp_path: Path,
) -> None:
    from voltana.engine import SimEngine, SimEngineSettings
    from voltana.stack.sglang_reporter import SglangInstanceReporter, SglangInstanceSettings

    telemetry = TelemetryService(TelemetrySettings(listen_address="127.0.0.1:0", security=SECURITY))
    await telemetry.start()
    agent = AgentService(
        AgentSettings(
            backend="sim", gpu_indices=(0, 1, 2, 3), sim_gpu_key="h200", security=SECURITY
        )
    )
    await agent.start()
    try:
        uuids = tmp_path / "gpus"
        # As a device plugin hands them out: NVIDIA_VISIBLE_DEVICES of the server's container.
        uuids.write_text("GPU-sim-h200-3,GPU-sim-h200-2\n")
        async with SimEngine(SimEngineSettings(mode="decode", tp=2)) as engine:
            reporters = [
                SglangInstanceReporter(
                    SglangInstanceSettings(
                        telemetry_address=telemetry.address,
                        instance_id=instance_id,
                        phase=Phase.DECODE,
                        engine_url=engine.url,
                        agent_address=agent.address,
                        interval_ms=50,
                        security=SECURITY,
                        **options,  # type: ignore[arg-type]
                    )
                )
                for instance_id, options in (
                    ("by-index", {"gpu_index": 0}),
                    ("by-uuid", {"gpu_uuids_file": str(uuids)}),
                )
            ]
            for reporter in reporters:
                await reporter.start()
            try:
                async with TelemetryClient(telemetry.address, security=SECURITY) as client:
                    _, infos = await client.snapshot_with_endpoints()
            finally:
                for reporter in reporters:
                    await reporter.stop()
        assert infos["by-index"].gpu_key == "h200"  # detected by the agent, told by nobody
        assert infos["by-index"].gpu_refs == (GpuRef(agent.address, 0),)
        assert infos["by-uuid"].gpu_refs == (GpuRef(agent.address, 3), GpuRef(agent.address, 2))
    finally:
        await agent.stop()
        await telemetry.stop()
