"""The node agent as a real grpc.aio server on loopback, over simulated and NVML GPUs."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from unittest import mock

import grpc
import grpc.aio
import pynvml
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from security_helpers import SECURITY

from voltana.gpu import NvmlUnavailableError, SimulatedGpu
from voltana.hardware import get_gpu
from voltana.rpc import create_channel, start_grpc_server, stop_grpc_server
from voltana.rpc.names import NODE_AGENT_SERVICE
from voltana.services.agent import (
    AgentService,
    AgentSettings,
    ClockManager,
    ManualClock,
    NodeAgentServicer,
)
from voltana.v1 import agent_pb2, agent_pb2_grpc

pytestmark = pytest.mark.integration

A100 = get_gpu("a100-80g")


async def eventually(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def gpu(index: int) -> agent_pb2.GpuSelector:
    return agent_pb2.GpuSelector(gpu_index=index)


class Agent:
    """A started agent, its stub, its simulated GPUs and its manual clock."""

    def __init__(
        self,
        service: AgentService,
        stub: Any,
        gpus: list[SimulatedGpu],
        clock: ManualClock,
        channel: grpc.aio.Channel,
    ) -> None:
        self.service = service
        self.stub = stub
        self.gpus = gpus
        self.clock = clock
        self.channel = channel


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    clock = ManualClock(start_s=50.0)
    gpus = [SimulatedGpu(A100, i, now_s=clock.now_s, clock_change_delay_ms=0) for i in (0, 1)]
    settings = AgentSettings(
        instance_gpu_indices={"decode-0": 1},
        default_lease_ttl_ms=1_000,
        node_name="test",
        security=SECURITY,
    )
    service = AgentService(settings, devices=gpus, clock=clock)
    await service.start()
    channel = create_channel(service.address, security=SECURITY)
    try:
        yield Agent(service, agent_pb2_grpc.NodeAgentServiceStub(channel), gpus, clock, channel)
    finally:
        await channel.close()
        await service.stop()


async def test_health_and_list_gpus(agent: Agent) -> None:
    health = health_pb2_grpc.HealthStub(agent.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=NODE_AGENT_SERVICE))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    listing = await agent.stub.ListGpus(agent_pb2.ListGpusRequest())
    assert listing.agent_address == agent.service.address
    assert [info.gpu_index for info in listing.gpus] == [0, 1]
    info = listing.gpus[1]
    assert info.gpu_key == "a100-80g"
    assert info.name == A100.display_name
    assert info.simulated
    assert list(info.instance_ids) == ["decode-0"]
    assert info.min_sm_clock_mhz == 210 and info.max_sm_clock_mhz == 1410
    assert tuple(info.supported_sm_clocks_mhz) == A100.supported_sm_clocks_mhz
    assert info.power_limit_w == A100.tdp_w


async def test_set_clocks_clamps_and_reads_back(agent: Agent) -> None:
    reply = await agent.stub.SetClocks(
        agent_pb2.SetClocksRequest(
            gpu=gpu(0), sm_clock_mhz=1000, lease_ttl_ms=2_000, requested_by="ctl", reason="test"
        )
    )
    assert reply.gpu_index == 0
    assert reply.requested_sm_clock_mhz == 1000
    assert reply.applied_sm_clock_mhz == 1005
    assert reply.clamped
    assert reply.measured_sm_clock_mhz == 1005
    assert reply.lease_expires_at_s == pytest.approx(agent.clock.unix_s(52.0))
    assert agent.gpus[0].sm_clock_mhz() == 1005

    clocks = await agent.stub.GetClocks(agent_pb2.GetClocksRequest(gpu=gpu(0)))
    (state,) = clocks.clocks
    assert state.locked and state.locked_sm_clock_mhz == 1005
    assert state.current_sm_clock_mhz == 1005
    assert state.lease_holder == "ctl"


async def test_set_clocks_by_instance_and_above_max(agent: Agent) -> None:
    reply = await agent.stub.SetClocks(
        agent_pb2.SetClocksRequest(
            gpu=agent_pb2.GpuSelector(instance_id="decode-0"), sm_clock_mhz=5000
        )
    )
    assert reply.gpu_index == 1
    assert reply.applied_sm_clock_mhz == 1410


@pytest.mark.parametrize("requested_mhz", [0, -15])
async def test_invalid_clock_is_invalid_argument_and_server_keeps_serving(
    agent: Agent, requested_mhz: int
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await agent.stub.SetClocks(
            agent_pb2.SetClocksRequest(gpu=gpu(0), sm_clock_mhz=requested_mhz)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "positive" in (caught.value.details() or "")
    listing = await agent.stub.ListGpus(agent_pb2.ListGpusRequest())
    assert len(listing.gpus) == 2
    assert agent.gpus[0].locked_range_mhz is None


async def test_request_errors_map_to_status_codes(agent: Agent) -> None:
    cases = [
        (agent_pb2.SetClocksRequest(gpu=gpu(7), sm_clock_mhz=1005), grpc.StatusCode.NOT_FOUND),
        (
            agent_pb2.SetClocksRequest(
                gpu=agent_pb2.GpuSelector(instance_id="nope"), sm_clock_mhz=1005
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (agent_pb2.SetClocksRequest(sm_clock_mhz=1005), grpc.StatusCode.INVALID_ARGUMENT),
        (
            agent_pb2.SetClocksRequest(gpu=gpu(0), sm_clock_mhz=1005, lease_ttl_ms=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for request, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agent.stub.SetClocks(request)
        assert caught.value.code() == code, request
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await agent.stub.GetClocks(agent_pb2.GetClocksRequest(gpu=gpu(9)))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_lease_conflict_is_failed_precondition(agent: Agent) -> None:
    await agent.stub.SetClocks(
        agent_pb2.SetClocksRequest(gpu=gpu(0), sm_clock_mhz=1005, requested_by="a")
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await agent.stub.SetClocks(
            agent_pb2.SetClocksRequest(gpu=gpu(0), sm_clock_mhz=1200, requested_by="b")
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await agent.stub.RenewLease(agent_pb2.RenewLeaseRequest(gpu=gpu(0), requested_by="b"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_lease_expiry_resets_clocks(agent: Agent) -> None:
    await agent.stub.SetClocks(
        agent_pb2.SetClocksRequest(gpu=gpu(0), sm_clock_mhz=1005, requested_by="ctl")
    )
    agent.clock.advance(0.5)
    await asyncio.sleep(0.02)
    assert agent.gpus[0].sm_clock_mhz() == 1005  # default lease is 1 s
    agent.clock.advance(0.6)
    await eventually(lambda: agent.gpus[0].locked_range_mhz is None)
    assert agent.gpus[0].sm_clock_mhz() == 1410
    (state,) = (await agent.stub.GetClocks(agent_pb2.GetClocksRequest(gpu=gpu(0)))).clocks
    assert not state.locked and state.lease_holder == ""


async def test_renew_lease_keeps_clocks(agent: Agent) -> None:
    await agent.stub.SetClocks(
        agent_pb2.SetClocksRequest(gpu=gpu(1), sm_clock_mhz=1005, requested_by="ctl")
    )
    agent.clock.advance(0.8)
    renewed = await agent.stub.RenewLease(
        agent_pb2.RenewLeaseRequest(requested_by="ctl", ttl_ms=1_000)
    )
    assert list(renewed.gpu_indices) == [1]
    assert renewed.lease_expires_at_s == pytest.approx(agent.clock.unix_s(51.8))
    agent.clock.advance(0.8)
    await asyncio.sleep(0.02)
    assert agent.gpus[1].sm_clock_mhz() == 1005
    agent.clock.advance(0.3)
    await eventually(lambda: agent.gpus[1].sm_clock_mhz() == 1410)


async def test_reset_clocks_resets_all(agent: Agent) -> None:
    for index in (0, 1):
        await agent.stub.SetClocks(
            agent_pb2.SetClocksRequest(gpu=gpu(index), sm_clock_mhz=1005, requested_by="ops")
        )
    reply = await agent.stub.ResetClocks(agent_pb2.ResetClocksRequest(requested_by="ops"))
    assert [(s.gpu_index, s.locked, s.current_sm_clock_mhz) for s in reply.clocks] == [
        (0, False, 1410),
        (1, False, 1410),
    ]


async def test_get_gpu_sample(agent: Agent) -> None:
    agent.clock.advance(2.0)
    reply = await agent.stub.GetGpuSample(agent_pb2.GetGpuSampleRequest(gpu=gpu(1)))
    (sample,) = reply.samples
    assert sample.gpu_index == 1
    assert sample.instance_id == "decode-0"
    assert sample.agent_address == agent.service.address
    assert sample.power_w == A100.idle_w
    assert sample.energy_j == pytest.approx(A100.idle_w * 2.0)
    assert sample.sm_clock_mhz == 1410
    assert sample.timestamp_s == pytest.approx(agent.clock.unix_s(52.0))


async def test_start_and_stop_reset_clocks() -> None:
    clock = ManualClock()
    sim = SimulatedGpu(A100, 0, now_s=clock.now_s, clock_change_delay_ms=0)
    sim.set_locked_sm_clock_mhz(1005, 1005)  # left locked by a crashed predecessor
    service = AgentService(AgentSettings(security=SECURITY), devices=[sim], clock=clock)
    await service.start()
    try:
        assert sim.locked_range_mhz is None
        async with create_channel(service.address, security=SECURITY) as channel:
            stub = agent_pb2_grpc.NodeAgentServiceStub(channel)
            await stub.SetClocks(agent_pb2.SetClocksRequest(gpu=gpu(0), sm_clock_mhz=1200))
        assert sim.sm_clock_mhz() == 1200
    finally:
        await service.stop()
    assert sim.locked_range_mhz is None
    assert sim.sm_clock_mhz() == 1410
    await service.stop()  # idempotent


async def test_sim_backend_from_settings_with_the_system_clock() -> None:
    settings = AgentSettings(
        backend="sim", gpu_indices=(0, 2), sim_gpu_key="h100-80g", security=SECURITY
    )
    async with (
        AgentService(settings) as service,
        create_channel(service.address, security=SECURITY) as channel,
    ):
        stub = agent_pb2_grpc.NodeAgentServiceStub(channel)
        listing = await stub.ListGpus(agent_pb2.ListGpusRequest())
        assert [(g.gpu_index, g.gpu_key) for g in listing.gpus] == [
            (0, "h100-80g"),
            (2, "h100-80g"),
        ]
        # The simulated H100 takes 50 ms to change clocks; the agent waits and reads it back.
        reply = await stub.SetClocks(agent_pb2.SetClocksRequest(gpu=gpu(2), sm_clock_mhz=990))
        assert reply.applied_sm_clock_mhz == 990
        assert reply.measured_sm_clock_mhz == 990
        assert not reply.clamped


async def test_clock_rpcs_continue_the_callers_trace_from_metadata() -> None:
    # The servicer over a ClockManager with its own tracer (AgentService uses the global one).
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    clock = ManualClock()
    sim = SimulatedGpu(A100, 0, now_s=clock.now_s, clock_change_delay_ms=0)
    clocks = ClockManager(
        [sim],
        clock,
        default_lease_ttl_s=1.0,
        max_lease_ttl_s=5.0,
        tracer=provider.get_tracer("test"),
    )
    servicer = NodeAgentServicer(
        clocks,
        clock,
        gpu_keys={0: "a100-80g"},
        simulated_gpus=frozenset({0}),
        instance_gpu_indices={},
    )
    register = functools.partial(agent_pb2_grpc.add_NodeAgentServiceServicer_to_server, servicer)
    started = await start_grpc_server("127.0.0.1:0", [register], [NODE_AGENT_SERVICE])
    caller_trace_id, caller_span_id = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
    traceparent = f"00-{caller_trace_id:032x}-{caller_span_id:016x}-01"
    try:
        async with create_channel(f"127.0.0.1:{started.port}", security=SECURITY) as channel:
            stub = agent_pb2_grpc.NodeAgentServiceStub(channel)
            metadata = (("traceparent", traceparent),)
            await stub.SetClocks(
                agent_pb2.SetClocksRequest(gpu=gpu(0), sm_clock_mhz=1005, requested_by="ctl"),
                metadata=metadata,
            )
            await stub.RenewLease(
                agent_pb2.RenewLeaseRequest(gpu=gpu(0), requested_by="ctl"), metadata=metadata
            )
            await stub.ResetClocks(
                agent_pb2.ResetClocksRequest(gpu=gpu(0), requested_by="ctl"), metadata=metadata
            )
            # Without trace headers a clock change starts a trace of its own.
            await stub.SetClocks(agent_pb2.SetClocksRequest(gpu=gpu(0), sm_clock_mhz=1005))
    finally:
        await stop_grpc_server(started.server, 0)
    spans = exporter.get_finished_spans()
    names = [span.name for span in spans]
    assert names == [
        "voltana.agent.set_clocks",
        "voltana.agent.renew_lease",
        "voltana.agent.reset_clocks",
        "voltana.agent.set_clocks",
    ]
    for span in spans[:3]:
        assert span.context.trace_id == caller_trace_id, span.name
        assert span.parent is not None and span.parent.span_id == caller_span_id, span.name
        assert span.parent.is_remote
    assert spans[3].context.trace_id != caller_trace_id and spans[3].parent is None


def nvml_without_permission() -> Any:
    nvml = mock.create_autospec(pynvml)
    nvml.nvmlDeviceGetCount.return_value = 1
    nvml.nvmlDeviceGetHandleByIndex.return_value = "handle-0"
    nvml.nvmlDeviceGetName.return_value = b"NVIDIA A100-SXM4-80GB"
    nvml.nvmlDeviceGetUUID.return_value = "GPU-0000"
    nvml.nvmlDeviceGetSupportedMemoryClocks.return_value = [1593]
    nvml.nvmlDeviceGetSupportedGraphicsClocks.return_value = list(range(1410, 209, -15))
    nvml.nvmlDeviceGetDefaultApplicationsClock.return_value = 1410
    nvml.nvmlDeviceGetClockInfo.return_value = 1410
    nvml.nvmlDeviceGetPowerUsage.return_value = 61_000
    nvml.nvmlDeviceGetEnforcedPowerLimit.return_value = 400_000
    nvml.nvmlDeviceGetTotalEnergyConsumption.return_value = 5_000
    no_permission = pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
    nvml.nvmlDeviceSetGpuLockedClocks.side_effect = no_permission
    nvml.nvmlDeviceResetGpuLockedClocks.side_effect = no_permission
    return nvml


async def test_nvml_backend_without_root_is_permission_denied() -> None:
    nvml = nvml_without_permission()
    # The autospec'd pynvml lives in this process: no fail-safe watchdog process can use it.
    settings = AgentSettings(
        backend="nvml", gpu_indices=(0,), failsafe_watchdog=False, security=SECURITY
    )
    # The reset at start fails too; the agent still starts and serves readings.
    async with (
        AgentService(settings, nvml=nvml) as service,
        create_channel(service.address, security=SECURITY) as channel,
    ):
        stub = agent_pb2_grpc.NodeAgentServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SetClocks(agent_pb2.SetClocksRequest(gpu=gpu(0), sm_clock_mhz=1005))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "CAP_SYS_ADMIN" in (caught.value.details() or "")
        (info,) = (await stub.ListGpus(agent_pb2.ListGpusRequest())).gpus
        assert info.gpu_key == "a100-80g" and not info.simulated and info.uuid == "GPU-0000"
        (sample,) = (await stub.GetGpuSample(agent_pb2.GetGpuSampleRequest())).samples
        assert sample.power_w == pytest.approx(61.0) and sample.energy_j == pytest.approx(5.0)
        # No lease was taken for the failed change, so nothing will "expire".
        (state,) = (await stub.GetClocks(agent_pb2.GetClocksRequest())).clocks
        assert not state.locked and state.lease_holder == ""
    nvml.nvmlInit.assert_called_once_with()
    nvml.nvmlShutdown.assert_called_once_with()
    nvml.nvmlDeviceSetGpuLockedClocks.assert_called_once_with("handle-0", 1005, 1005)


async def test_nvml_backend_without_a_driver_fails_to_start() -> None:
    nvml = mock.create_autospec(pynvml)
    nvml.nvmlInit.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    service = AgentService(AgentSettings(backend="nvml", security=SECURITY), nvml=nvml)
    with pytest.raises(NvmlUnavailableError):
        await service.start()
