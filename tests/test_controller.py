"""The controller on loopback against a real telemetry service (memory store) and a real node
agent over simulated GPUs; a small recording fake of NodeAgentService where a test must see
the wire (trace metadata)."""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from security_helpers import SECURITY

from voltana.contract.state import ClockDecision, InstanceState, Phase, SloTarget
from voltana.control import MAX_NOTIFIED_INSTANCES
from voltana.gpu import SimulatedGpu
from voltana.hardware import get_gpu
from voltana.policy.base import PolicyContext, PolicySuite, RoutingPolicy
from voltana.policy.registry import register_policy
from voltana.policy.routing import RoundRobinRouter
from voltana.rpc import create_channel, start_grpc_server, stop_grpc_server
from voltana.rpc.names import CONTROLLER_SERVICE, NODE_AGENT_SERVICE
from voltana.services.agent import AgentService, AgentSettings
from voltana.services.controller import ControllerService, ControllerSettings
from voltana.services.telemetry import (
    InstanceInfo,
    TelemetryClient,
    TelemetryService,
    TelemetrySettings,
)
from voltana.services.telemetry.convert import slo_to_proto, state_to_proto
from voltana.v1 import agent_pb2, agent_pb2_grpc, common_pb2, controller_pb2, controller_pb2_grpc

pytestmark = pytest.mark.integration

A100 = get_gpu("a100-80g")
HOLDER = "controller@test"
QUEUE_POLICY = "test-queue-bang-bang"
ITL_POLICY = "test-itl-follower"


# --- a test-only dynamic policy --------------------------------------------------------------


@dataclass(frozen=True)
class QueueBangBang:
    """Max clock while requests wait, min clock otherwise."""

    min_mhz: int
    max_mhz: int

    @property
    def name(self) -> str:
        return QUEUE_POLICY

    @property
    def is_static(self) -> bool:
        return False

    def decide(self, state: InstanceState, slo: SloTarget, now_s: float) -> ClockDecision:
        if state.queue_len > 0:
            return ClockDecision(self.max_mhz, f"queue of {state.queue_len}")
        return ClockDecision(self.min_mhz, "no queue")


def _queue_suite(context: PolicyContext, router: RoutingPolicy | None) -> PolicySuite:
    policy = QueueBangBang(context.gpu.min_sm_clock_mhz, context.gpu.max_sm_clock_mhz)
    return PolicySuite(QUEUE_POLICY, policy, policy, router or RoundRobinRouter())


@dataclass(frozen=True)
class ItlFollower:
    """Max clock against an ITL target of at most 100 ms, min clock against a looser one:
    shows which targets the controller hands an instance's law."""

    min_mhz: int
    max_mhz: int

    @property
    def name(self) -> str:
        return ITL_POLICY

    @property
    def is_static(self) -> bool:
        return False

    def decide(self, state: InstanceState, slo: SloTarget, now_s: float) -> ClockDecision:
        if slo.itl_ms <= 100.0:
            return ClockDecision(self.max_mhz, f"tight ITL {slo.itl_ms:g} ms")
        return ClockDecision(self.min_mhz, f"loose ITL {slo.itl_ms:g} ms")


def _itl_suite(context: PolicyContext, router: RoutingPolicy | None) -> PolicySuite:
    policy = ItlFollower(context.gpu.min_sm_clock_mhz, context.gpu.max_sm_clock_mhz)
    return PolicySuite(ITL_POLICY, policy, policy, router or RoundRobinRouter())


@pytest.fixture(scope="module", autouse=True)
def queue_policy_registered() -> None:
    register_policy(QUEUE_POLICY, _queue_suite)
    register_policy(ITL_POLICY, _itl_suite)


# --- helpers -----------------------------------------------------------------------------------


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 3.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def closed_port_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


class CountingGpu(SimulatedGpu):
    """A simulated GPU that remembers every clock lock it was asked for."""

    def __init__(self, index: int) -> None:
        super().__init__(A100, index, clock_change_delay_ms=0)
        self.locks_mhz: list[int] = []
        # Cleared: a lock takes effect at once but its call returns only once this is set.
        self.answer = threading.Event()
        self.answer.set()

    def set_locked_sm_clock_mhz(self, min_mhz: int, max_mhz: int) -> None:
        self.locks_mhz.append(max_mhz)
        super().set_locked_sm_clock_mhz(min_mhz, max_mhz)
        self.answer.wait(timeout=10.0)


def load(instance_id: str, phase: Phase, *, queue_len: int = 0) -> InstanceState:
    return InstanceState(
        instance_id=instance_id,
        phase=phase,
        gpu_key=A100.key,
        sm_clock_mhz=0,
        queue_len=queue_len,
        queued_tokens=queue_len * 100,
        observed_at_s=time.time(),
    )


class Cluster:
    """Telemetry + one node agent (two simulated A100s) + controllers built on demand."""

    def __init__(
        self, telemetry: TelemetryService, agent: AgentService, gpus: list[CountingGpu]
    ) -> None:
        self.telemetry = telemetry
        self.agent = agent
        self.gpus = gpus
        self.client = TelemetryClient(telemetry.address, security=SECURITY)
        self.agent_channel = create_channel(agent.address, security=SECURITY)
        self.agent_stub: Any = agent_pb2_grpc.NodeAgentServiceStub(self.agent_channel)
        self.controllers: list[ControllerService] = []
        self._channels: list[grpc.aio.Channel] = []

    async def register(
        self, instance_id: str, phase: Phase, gpu_index: int, agent_address: str | None = None
    ) -> None:
        await self.client.register_instance(
            InstanceInfo(
                instance_id=instance_id,
                phase=phase,
                gpu_key=A100.key,
                agent_address=self.agent.address if agent_address is None else agent_address,
                gpu_index=gpu_index,
            )
        )

    async def report(self, *states: InstanceState) -> None:
        result = await self.client.report_instance_samples(list(states))
        assert result.rejected == 0, result.first_rejection_reason

    async def controller(self, **overrides: Any) -> tuple[ControllerService, Any]:
        tracer = overrides.pop("tracer", None)
        settings = ControllerSettings(
            telemetry_address=self.telemetry.address,
            controller_id=HOLDER,
            **overrides,
            security=SECURITY,
        )
        service = ControllerService(settings, tracer=tracer)
        await service.start()
        self.controllers.append(service)
        channel = create_channel(service.address, security=SECURITY)
        self._channels.append(channel)
        return service, controller_pb2_grpc.ControllerServiceStub(channel)

    async def agent_clock(self, gpu_index: int) -> agent_pb2.GpuClockState:
        response = await self.agent_stub.GetClocks(
            agent_pb2.GetClocksRequest(gpu=agent_pb2.GpuSelector(gpu_index=gpu_index))
        )
        state: agent_pb2.GpuClockState = response.clocks[0]
        return state

    async def close(self) -> None:
        for controller in self.controllers:
            await controller.stop()
        for channel in [*self._channels, self.agent_channel]:
            await channel.close()
        await self.client.close()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    telemetry = TelemetryService(TelemetrySettings(watch_min_interval_ms=20, security=SECURITY))
    await telemetry.start()
    gpus = [CountingGpu(0), CountingGpu(1)]
    # The agent streams no GPU samples: the controller needs only load reports and
    # endpoints, and without samples the clock before a first decision is known to be 0.
    agent = AgentService(
        AgentSettings(
            instance_gpu_indices={"prefill-0": 0, "decode-0": 1},
            readback_timeout_ms=50,
            security=SECURITY,
        ),
        devices=gpus,
    )
    await agent.start()
    cluster = Cluster(telemetry, agent, gpus)
    try:
        yield cluster
    finally:
        await cluster.close()
        await agent.stop()
        await telemetry.stop()


async def status(stub: Any, *instance_ids: str) -> controller_pb2.GetStatusResponse:
    response: controller_pb2.GetStatusResponse = await stub.GetStatus(
        controller_pb2.GetStatusRequest(instance_ids=list(instance_ids))
    )
    return response


async def decisions(stub: Any, instance_id: str) -> list[controller_pb2.ClockDecisionRecord]:
    response = await status(stub, instance_id)
    return list(response.instances[0].recent_decisions)


# --- tests -------------------------------------------------------------------------------------


async def test_static_policy_sets_each_clock_once_and_follows_new_instances(
    cluster: Cluster,
) -> None:
    await cluster.register("prefill-0", Phase.PREFILL, 0)
    _, stub = await cluster.controller(policy="static:1005")
    await eventually(lambda: cluster.gpus[0].sm_clock_mhz() == 1005)

    # An instance that registers later is picked up without a restart.
    await cluster.register("decode-0", Phase.DECODE, 1)
    await eventually(lambda: cluster.gpus[1].sm_clock_mhz() == 1005)

    # Many ticks and fresh snapshots later, nothing was pushed again.
    for _ in range(5):
        await cluster.report(load("prefill-0", Phase.PREFILL, queue_len=2))
        await asyncio.sleep(0.06)
    assert cluster.gpus[0].locks_mhz == [1005]
    assert cluster.gpus[1].locks_mhz == [1005]

    response = await status(stub)
    assert response.prefill_policy_name == response.decode_policy_name == "static:1005"
    assert [i.instance_id for i in response.instances] == ["decode-0", "prefill-0"]
    prefill = response.instances[1]
    assert prefill.phase == common_pb2.PHASE_PREFILL
    assert prefill.agent_address == cluster.agent.address
    assert prefill.gpu_index == 0
    assert prefill.lease_held
    assert prefill.target_sm_clock_mhz == 1005
    assert prefill.current_sm_clock_mhz == 1005
    assert prefill.policy_name == "static:1005"
    (record,) = prefill.recent_decisions
    assert record.applied
    assert record.sm_clock_mhz == record.applied_sm_clock_mhz == 1005
    assert record.previous_sm_clock_mhz == 0  # unknown: telemetry has no GPU sample yet
    assert record.reason == "fixed clock"
    assert record.error == ""
    assert record.decided_at_s == pytest.approx(time.time(), abs=5.0)


@pytest.mark.parametrize("snapshot_mode", ["watch", "poll"])
async def test_dynamic_policy_moves_clock_with_the_reported_queue(
    cluster: Cluster, snapshot_mode: str
) -> None:
    await cluster.register("prefill-0", Phase.PREFILL, 0)
    await cluster.report(load("prefill-0", Phase.PREFILL, queue_len=0))
    _, stub = await cluster.controller(policy=QUEUE_POLICY, snapshot_mode=snapshot_mode)
    gpu = cluster.gpus[0]
    await eventually(lambda: gpu.sm_clock_mhz() == A100.min_sm_clock_mhz)

    await cluster.report(load("prefill-0", Phase.PREFILL, queue_len=3))
    await eventually(lambda: gpu.sm_clock_mhz() == A100.max_sm_clock_mhz)

    await cluster.report(load("prefill-0", Phase.PREFILL, queue_len=0))
    await eventually(lambda: gpu.sm_clock_mhz() == A100.min_sm_clock_mhz)
    await asyncio.sleep(0.15)

    assert gpu.locks_mhz == [210, 1410, 210]
    newest_first = await decisions(stub, "prefill-0")
    assert [(d.sm_clock_mhz, d.previous_sm_clock_mhz, d.reason) for d in newest_first] == [
        (210, 1410, "no queue"),
        (1410, 210, "queue of 3"),
        (210, 0, "no queue"),
    ]
    assert all(d.applied for d in newest_first)


async def test_set_policy_switches_one_phase_and_rejects_unknown_names(
    cluster: Cluster,
) -> None:
    await cluster.register("prefill-0", Phase.PREFILL, 0)
    await cluster.register("decode-0", Phase.DECODE, 1)
    _, stub = await cluster.controller(policy="static:1005")
    await eventually(lambda: [g.sm_clock_mhz() for g in cluster.gpus] == [1005, 1005])

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.SetPolicy(controller_pb2.SetPolicyRequest(policy_name="no-such-policy"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no-such-policy" in (raised.value.details() or "")
    assert "static-max" in (raised.value.details() or "")  # the valid names are listed

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.SetPolicy(controller_pb2.SetPolicyRequest(policy_name="static:1000"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # not a supported clock

    response = await stub.SetPolicy(
        controller_pb2.SetPolicyRequest(policy_name="static:1200", phase=common_pb2.PHASE_DECODE)
    )
    assert (response.prefill_policy_name, response.decode_policy_name) == (
        "static:1005",
        "static:1200",
    )
    await eventually(lambda: cluster.gpus[1].sm_clock_mhz() == 1200)
    assert cluster.gpus[0].locks_mhz == [1005]

    listed = await stub.ListPolicies(controller_pb2.ListPoliciesRequest())
    names = [p.name for p in listed.policies]
    assert "static-max" in names
    assert QUEUE_POLICY in names
    assert listed.decode_policy_name == "static:1200"
    # Every policy runs colocated instances too (its phase laws composed).
    assert all(
        list(p.phases)
        == [common_pb2.PHASE_PREFILL, common_pb2.PHASE_DECODE, common_pb2.PHASE_UNIFIED]
        for p in listed.policies
    )


async def test_set_slo_validates_and_replaces_the_target(cluster: Cluster) -> None:
    _, stub = await cluster.controller(slo=SloTarget(ttft_ms=800.0, itl_ms=50.0))

    for bad in (
        controller_pb2.SetSloRequest(slo=common_pb2.SloTarget(ttft_ms=-1.0, itl_ms=50.0)),
        controller_pb2.SetSloRequest(slo=common_pb2.SloTarget(ttft_ms=500.0, itl_ms=0.0)),
        controller_pb2.SetSloRequest(),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.SetSlo(bad)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    response = await stub.SetSlo(
        controller_pb2.SetSloRequest(slo=common_pb2.SloTarget(ttft_ms=400.0, itl_ms=30.0))
    )
    assert (response.previous_slo.ttft_ms, response.previous_slo.itl_ms) == (800.0, 50.0)
    assert (response.slo.ttft_ms, response.slo.itl_ms) == (400.0, 30.0)
    current = await status(stub)
    assert (current.slo.ttft_ms, current.slo.itl_ms) == (400.0, 30.0)


async def test_get_status_rejects_unknown_instances(cluster: Cluster) -> None:
    await cluster.register("prefill-0", Phase.PREFILL, 0)
    service, stub = await cluster.controller()
    await eventually(lambda: "prefill-0" in service.loop.controls)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await status(stub, "prefill-0", "ghost")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ghost" in (raised.value.details() or "")


async def test_lease_renewals_keep_the_lease_alive_until_the_controller_stops(
    cluster: Cluster,
) -> None:
    await cluster.register("prefill-0", Phase.PREFILL, 0)
    service, _ = await cluster.controller(
        policy="static:1005", lease_ttl_ms=300, reset_clocks_on_stop=False
    )
    await eventually(lambda: cluster.gpus[0].sm_clock_mhz() == 1005)

    await asyncio.sleep(1.0)  # more than three lease lengths
    state = await cluster.agent_clock(0)
    assert state.locked and state.locked_sm_clock_mhz == 1005
    assert state.lease_holder == HOLDER
    assert state.lease_expires_at_s > time.time()
    assert cluster.gpus[0].locks_mhz == [1005]  # kept by renewals, not by re-locking

    # Without renewals the agent's watchdog takes the clock back within one lease.
    await service.stop()
    await eventually(lambda: cluster.gpus[0].sm_clock_mhz() == A100.default_sm_clock_mhz, 1.5)
    assert not (await cluster.agent_clock(0)).locked


async def test_a_lost_lease_is_taken_again(cluster: Cluster) -> None:
    await cluster.register("prefill-0", Phase.PREFILL, 0)
    await cluster.controller(policy="static:1005", lease_ttl_ms=300)
    await eventually(lambda: cluster.gpus[0].sm_clock_mhz() == 1005)

    # The GPU is reset behind the control loop's back (dropping its lease), e.g. by an
    # operator acting as the controller: only the lease's holder may do that.
    await cluster.agent_stub.ResetClocks(
        agent_pb2.ResetClocksRequest(gpu=agent_pb2.GpuSelector(gpu_index=0), requested_by=HOLDER)
    )
    assert cluster.gpus[0].sm_clock_mhz() == A100.default_sm_clock_mhz
    # The next renewal fails, and the controller locks the clock again.
    await eventually(lambda: cluster.gpus[0].locks_mhz == [1005, 1005], 1.5)
    await eventually(lambda: cluster.gpus[0].sm_clock_mhz() == 1005)
    assert (await cluster.agent_clock(0)).lease_holder == HOLDER


async def test_stop_resets_held_clocks_as_a_courtesy(cluster: Cluster) -> None:
    await cluster.register("prefill-0", Phase.PREFILL, 0)
    service, _ = await cluster.controller(policy="static:1005")
    await eventually(lambda: cluster.gpus[0].sm_clock_mhz() == 1005)
    await service.stop()
    state = await cluster.agent_clock(0)
    assert not state.locked
    assert state.lease_holder == ""
    assert cluster.gpus[0].sm_clock_mhz() == A100.default_sm_clock_mhz


async def test_stop_resets_a_clock_whose_setting_was_still_in_flight(cluster: Cluster) -> None:
    # The agent has locked the GPU but not answered yet when the controller stops: the
    # controller does not know it holds the lease, and must reset the GPU all the same.
    await cluster.register("prefill-0", Phase.PREFILL, 0)
    cluster.gpus[0].answer.clear()
    service, _ = await cluster.controller(policy="static:1005")
    await eventually(lambda: cluster.gpus[0].sm_clock_mhz() == 1005)
    stopping = asyncio.create_task(service.stop())
    await asyncio.sleep(0.05)
    cluster.gpus[0].answer.set()
    await stopping
    state = await cluster.agent_clock(0)
    assert not state.locked
    assert state.lease_holder == ""


async def test_an_unreachable_agent_does_not_stop_the_loop(cluster: Cluster) -> None:
    await cluster.register("decode-9", Phase.DECODE, 0, agent_address=closed_port_address())
    await cluster.register("prefill-0", Phase.PREFILL, 0)
    _, stub = await cluster.controller(policy="static:1005", retry_backoff_max_ms=100)
    await eventually(lambda: cluster.gpus[0].sm_clock_mhz() == 1005)

    async def failed_attempts() -> int:
        return len(await decisions(stub, "decode-9"))

    await eventually(lambda: _at_least(failed_attempts(), 3))
    records = await decisions(stub, "decode-9")
    assert not any(r.applied for r in records)
    assert all(r.error and r.applied_sm_clock_mhz == 0 for r in records)
    dead = (await status(stub, "decode-9")).instances[0]
    assert not dead.lease_held

    # The loop still serves the healthy instance.
    await stub.SetPolicy(controller_pb2.SetPolicyRequest(policy_name="static:1200"))
    await eventually(lambda: cluster.gpus[0].sm_clock_mhz() == 1200)


async def _at_least(count: Awaitable[int], minimum: int) -> bool:
    return await count >= minimum


async def test_telemetry_loss_lets_leases_lapse_to_default_clocks(cluster: Cluster) -> None:
    await cluster.register("prefill-0", Phase.PREFILL, 0)
    service, _ = await cluster.controller(
        policy="static:1005", lease_ttl_ms=300, telemetry_stale_after_ms=200
    )
    await eventually(lambda: cluster.gpus[0].sm_clock_mhz() == 1005)
    channel = create_channel(service.address, security=SECURITY)
    health = health_pb2_grpc.HealthStub(channel)

    async def health_status() -> int:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=CONTROLLER_SERVICE))
        return int(reply.status)

    try:
        assert await health_status() == health_pb2.HealthCheckResponse.SERVING
        await cluster.telemetry.stop()
        # Blind: no renewals, so within stale time + one lease the agent is back at default.
        await eventually(lambda: cluster.gpus[0].sm_clock_mhz() == A100.default_sm_clock_mhz, 2.0)
        assert cluster.gpus[0].locks_mhz == [1005]
        # And the controller says it cannot steer.
        await eventually(
            lambda: _is(health_status(), health_pb2.HealthCheckResponse.NOT_SERVING), 2.0
        )
    finally:
        await channel.close()


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_a_placement_notice_holds_until_a_report_shows_the_work(cluster: Cluster) -> None:
    """A report taken after the notice but before the request reached the engine shows an
    idle instance; it must not park the clock the notice raised (the placed prompt would run
    at the parked clock). A report that shows work, or one taken after the hold, takes over."""
    hold_s = 1.5
    await cluster.register("prefill-0", Phase.PREFILL, 0)
    await cluster.report(load("prefill-0", Phase.PREFILL))
    _, stub = await cluster.controller(policy=QUEUE_POLICY, placement_hold_ms=int(hold_s * 1e3))
    gpu = cluster.gpus[0]
    await eventually(lambda: gpu.sm_clock_mhz() == A100.min_sm_clock_mhz)

    async def notify() -> float:
        view = load("prefill-0", Phase.PREFILL, queue_len=1)
        response = await stub.NotifyPlacement(
            controller_pb2.NotifyPlacementRequest(instances=[state_to_proto(view)])
        )
        assert list(response.sm_clock_mhz) == [A100.max_sm_clock_mhz]
        return time.monotonic()

    # An idle report right after the notice does not undo it.
    await notify()
    await cluster.report(load("prefill-0", Phase.PREFILL))
    await asyncio.sleep(0.2)
    assert gpu.sm_clock_mhz() == A100.max_sm_clock_mhz
    # The engine's report of the work takes over; the next idle one parks.
    await cluster.report(load("prefill-0", Phase.PREFILL, queue_len=1))
    await cluster.report(load("prefill-0", Phase.PREFILL))
    await eventually(lambda: gpu.sm_clock_mhz() == A100.min_sm_clock_mhz)

    # A request that came and went between two reports: the hold ends the notice.
    noticed_s = await notify()
    while gpu.sm_clock_mhz() != A100.min_sm_clock_mhz:
        assert time.monotonic() - noticed_s < hold_s + 3.0, "the notice never ended"
        await cluster.report(load("prefill-0", Phase.PREFILL))
        await asyncio.sleep(0.05)
    assert time.monotonic() - noticed_s >= hold_s
    assert gpu.locks_mhz == [210, 1410, 210, 1410, 210]


# --- trace propagation, seen on the wire through a recording fake agent ----------------------


class RecordingAgent(agent_pb2_grpc.NodeAgentServiceServicer):
    """Grants every SetClocks and renewal, and keeps the metadata each SetClocks carried."""

    def __init__(self) -> None:
        self.set_clocks_metadata: list[dict[str, str]] = []
        self.renewals = 0

    async def SetClocks(
        self, request: agent_pb2.SetClocksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.SetClocksResponse:
        metadata = context.invocation_metadata() or ()
        self.set_clocks_metadata.append({str(k): str(v) for k, v in metadata})
        return agent_pb2.SetClocksResponse(
            gpu_index=request.gpu.gpu_index,
            requested_sm_clock_mhz=request.sm_clock_mhz,
            applied_sm_clock_mhz=request.sm_clock_mhz,
            measured_sm_clock_mhz=request.sm_clock_mhz,
            lease_expires_at_s=time.time() + request.lease_ttl_ms / 1000.0,
        )

    async def RenewLease(
        self, request: agent_pb2.RenewLeaseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.RenewLeaseResponse:
        self.renewals += 1
        return agent_pb2.RenewLeaseResponse(
            gpu_indices=[request.gpu.gpu_index], lease_expires_at_s=time.time() + 1.0
        )

    async def ResetClocks(
        self, request: agent_pb2.ResetClocksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.ResetClocksResponse:
        return agent_pb2.ResetClocksResponse()


async def test_clock_changes_are_traced_and_the_context_reaches_the_agent(
    cluster: Cluster,
) -> None:
    fake = RecordingAgent()
    started = await start_grpc_server(
        "127.0.0.1:0",
        [functools.partial(agent_pb2_grpc.add_NodeAgentServiceServicer_to_server, fake)],
        [NODE_AGENT_SERVICE],
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        await cluster.register(
            "decode-0", Phase.DECODE, 3, agent_address=f"127.0.0.1:{started.port}"
        )
        await cluster.controller(
            policy="static:1005", lease_ttl_ms=300, tracer=provider.get_tracer("test")
        )
        await eventually(lambda: fake.renewals >= 2)
    finally:
        await stop_grpc_server(started.server, 0)

    (span,) = [s for s in exporter.get_finished_spans() if "clock_change" in s.name]
    attributes = dict(span.attributes or {})
    assert attributes["voltana.instance.id"] == "decode-0"
    assert attributes["voltana.gpu.sm_clock.target_mhz"] == 1005
    assert attributes["voltana.gpu.sm_clock.applied_mhz"] == 1005
    assert attributes["voltana.reason"] == "fixed clock"
    assert attributes["voltana.gpu.index"] == 3
    (metadata,) = fake.set_clocks_metadata
    trace_id = format(span.context.trace_id, "032x")
    assert metadata["traceparent"].split("-")[1] == trace_id


async def test_set_slo_reaches_telemetry_and_every_other_controller(cluster: Cluster) -> None:
    """The cluster SLO has one owner, telemetry's store: SetSlo on one controller changes it
    there, and every other controller (and router) follows it from the snapshots."""
    await cluster.register("prefill-0", Phase.PREFILL, 0)
    first, stub = await cluster.controller()
    second, _ = await cluster.controller()
    await eventually(lambda: "prefill-0" in second.loop.controls)
    await stub.SetSlo(
        controller_pb2.SetSloRequest(slo=common_pb2.SloTarget(ttft_ms=400.0, itl_ms=30.0))
    )
    assert cluster.telemetry.cluster_slo == SloTarget(ttft_ms=400.0, itl_ms=30.0)
    assert (await cluster.client.snapshot()).cluster_slo == SloTarget(ttft_ms=400.0, itl_ms=30.0)
    await eventually(lambda: second.policies.slo == SloTarget(ttft_ms=400.0, itl_ms=30.0))
    assert first.policies.slo == SloTarget(ttft_ms=400.0, itl_ms=30.0)


async def test_a_controller_configured_otherwise_follows_the_cluster_slo(
    cluster: Cluster,
) -> None:
    await cluster.register("prefill-0", Phase.PREFILL, 0)
    service, _ = await cluster.controller(slo=SloTarget(ttft_ms=600.0, itl_ms=40.0))
    # Telemetry's configured SLO (the default) seeded the store: that is the cluster's.
    await eventually(lambda: service.policies.slo == SloTarget())


async def test_set_slo_is_refused_when_telemetry_cannot_take_it(cluster: Cluster) -> None:
    """One the owner did not take is in force nowhere (not even in this controller)."""
    _, stub = await cluster.controller(slo=SloTarget())
    await cluster.telemetry.stop()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.SetSlo(
            controller_pb2.SetSloRequest(slo=common_pb2.SloTarget(ttft_ms=400.0, itl_ms=30.0))
        )
    # Refused at once (connection refused), or at the call's deadline on a host too busy to
    # notice the closed port first: either way the owner did not take it.
    assert raised.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    current = await status(stub)
    assert (current.slo.ttft_ms, current.slo.itl_ms) == (800.0, 50.0)


# --- SLO classes: what each instance's law runs against ----------------------------------------


def served(
    instance_id: str, *, cluster_slo: bool = False, own: SloTarget | None = None
) -> controller_pb2.ServedSlo:
    entry = controller_pb2.ServedSlo(instance_id=instance_id, cluster_slo=cluster_slo)
    if own is not None:
        entry.own_slo.CopyFrom(slo_to_proto(own))
    return entry


async def test_the_law_runs_against_the_tightest_targets_the_routers_say_an_instance_serves(
    cluster: Cluster,
) -> None:
    loose = SloTarget(ttft_ms=5000.0, itl_ms=200.0)
    await cluster.register("decode-0", Phase.DECODE, 1)
    await cluster.report(load("decode-0", Phase.DECODE))
    _, stub = await cluster.controller(policy=ITL_POLICY)
    gpu = cluster.gpus[1]
    await eventually(lambda: gpu.locks_mhz == [A100.max_sm_clock_mhz])  # the cluster SLO

    async def notify(router_id: str, *entries: controller_pb2.ServedSlo) -> list[int]:
        view = load("decode-0", Phase.DECODE, queue_len=1)
        response = await stub.NotifyPlacement(
            controller_pb2.NotifyPlacementRequest(
                instances=[state_to_proto(view)], router_id=router_id, serving=entries
            )
        )
        return list(response.sm_clock_mhz)

    async def law_itl_ms() -> float:
        return float((await status(stub, "decode-0")).instances[0].slo.itl_ms)

    # Router r1 holds only loose requests there: the law relaxes, decided with the notice.
    assert await notify("r1", served("decode-0", own=loose)) == [A100.min_sm_clock_mhz]
    assert await law_itl_ms() == 200.0
    # Router r2 places a request held to the cluster SLO there: the tightest wins at once.
    assert await notify("r2", served("decode-0", cluster_slo=True)) == [A100.max_sm_clock_mhz]
    assert await law_itl_ms() == SloTarget().itl_ms
    # r2's request ended (a notice naming no state, only what it serves now): loose again.
    await stub.NotifyPlacement(
        controller_pb2.NotifyPlacementRequest(router_id="r2", serving=[served("decode-0")])
    )
    await eventually(lambda: gpu.sm_clock_mhz() == A100.min_sm_clock_mhz)
    assert await law_itl_ms() == 200.0


async def test_notices_naming_many_instances_are_taken_and_bad_classes_refused(
    cluster: Cluster,
) -> None:
    for index in range(3):
        await cluster.register(f"decode-{index}", Phase.DECODE, 1)
    _, stub = await cluster.controller(policy=ITL_POLICY)
    # One coalesced notice covers every instance placed on since the last (it was refused
    # beyond two before, and the router only logged it).
    views = [load(f"decode-{index}", Phase.DECODE, queue_len=1) for index in range(3)]
    response = await stub.NotifyPlacement(
        controller_pb2.NotifyPlacementRequest(instances=[state_to_proto(v) for v in views])
    )
    assert len(response.sm_clock_mhz) == 3
    bad = [
        controller_pb2.NotifyPlacementRequest(
            serving=[served("decode-0", own=SloTarget(ttft_ms=800.0, itl_ms=-1.0))]
        ),
        controller_pb2.NotifyPlacementRequest(serving=[served("")]),
        controller_pb2.NotifyPlacementRequest(router_id="r" * 10_000),
        controller_pb2.NotifyPlacementRequest(
            serving=[served(f"decode-{i}") for i in range(MAX_NOTIFIED_INSTANCES + 1)]
        ),
    ]
    for request in bad:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.NotifyPlacement(request)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT, request
        assert raised.value.details()
