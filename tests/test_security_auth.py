"""Authentication of every privileged RPC of every service, over real loopback gRPC: refused
without a credential (UNAUTHENTICATED), refused with a wrong one (PERMISSION_DENIED), accepted
with the control-plane token; leases bound to their holder; router API keys."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import descriptor_pool
from security_helpers import SECURITY, WRONG_TOKEN

from voltana.errors import ConfigError
from voltana.gpu import SimulatedGpu
from voltana.hardware import get_gpu
from voltana.rpc import RpcSecurity, create_channel
from voltana.rpc.names import (
    CONTROLLER_SERVICE,
    NODE_AGENT_SERVICE,
    ROUTER_SERVICE,
    TELEMETRY_SERVICE,
    method_names,
)
from voltana.sdk import AuthenticationError, VoltanaClient
from voltana.services.agent import AGENT_PRIVILEGED_METHODS, AgentService, AgentSettings
from voltana.services.controller import ControllerService, ControllerSettings
from voltana.services.controller.servicer import CONTROLLER_PRIVILEGED_METHODS
from voltana.services.router import RouterService, RouterSettings
from voltana.services.router.servicer import ROUTER_KEYED_METHODS
from voltana.services.telemetry import TelemetryService, TelemetrySettings
from voltana.services.telemetry.servicer import TELEMETRY_PRIVILEGED_METHODS
from voltana.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    controller_pb2,
    controller_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
    telemetry_pb2,
    telemetry_pb2_grpc,
)

pytestmark = pytest.mark.integration

A100 = get_gpu("a100-80g")
API_KEY = "router-api-key-for-the-tests-0123"
# Methods anyone may call: reads. Every other method of a service must be privileged (or, on
# the router, keyed) - a new RPC has to be placed in one list or the other on purpose.
OPEN_METHODS = {
    TELEMETRY_SERVICE: {"GetSnapshot", "WatchSnapshots", "GetAggregates"},
    CONTROLLER_SERVICE: {"GetStatus", "ListPolicies"},
    NODE_AGENT_SERVICE: {"ListGpus", "GetClocks", "GetGpuSample"},
    ROUTER_SERVICE: set(),
}
GUARDED_METHODS = {
    TELEMETRY_SERVICE: TELEMETRY_PRIVILEGED_METHODS,
    CONTROLLER_SERVICE: CONTROLLER_PRIVILEGED_METHODS,
    NODE_AGENT_SERVICE: AGENT_PRIVILEGED_METHODS,
    ROUTER_SERVICE: ROUTER_KEYED_METHODS,
}


def test_every_method_is_either_open_or_guarded() -> None:
    pool = descriptor_pool.Default()
    for service, open_methods in OPEN_METHODS.items():
        every = {method.name for method in pool.FindServiceByName(service).methods}
        guarded = GUARDED_METHODS[service]
        assert not guarded & method_names(service, *open_methods), service
        assert guarded | method_names(service, *open_methods) == method_names(service, *every)


# ---- one running control plane -----------------------------------------------------------------


@dataclass
class ControlPlane:
    telemetry: TelemetryService
    controller: ControllerService
    agent: AgentService
    gpu: SimulatedGpu


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    async with AsyncExitStack() as stack:
        telemetry = await stack.enter_async_context(
            TelemetryService(TelemetrySettings(security=SECURITY))
        )
        controller = await stack.enter_async_context(
            ControllerService(
                ControllerSettings(telemetry_address=telemetry.address, security=SECURITY)
            )
        )
        gpu = SimulatedGpu(A100, 0, clock_change_delay_ms=0)
        agent = await stack.enter_async_context(
            AgentService(AgentSettings(security=SECURITY), devices=[gpu])
        )
        yield ControlPlane(telemetry, controller, agent, gpu)


Call = Callable[[grpc.aio.Channel], Awaitable[Any]]


def register_request(instance_id: str = "decode-0") -> telemetry_pb2.RegisterInstanceRequest:
    return telemetry_pb2.RegisterInstanceRequest(
        instance_id=instance_id,
        phase=common_pb2.PHASE_DECODE,
        gpu_key="a100-80g",
        endpoint=common_pb2.InstanceEndpoint(engine_url="http://10.0.0.9:30000"),
    )


async def register(channel: grpc.aio.Channel) -> Any:
    return await telemetry_pb2_grpc.TelemetryServiceStub(channel).RegisterInstance(
        register_request()
    )


async def unregister(channel: grpc.aio.Channel) -> Any:
    return await telemetry_pb2_grpc.TelemetryServiceStub(channel).UnregisterInstance(
        telemetry_pb2.UnregisterInstanceRequest(instance_id="decode-0")
    )


async def report_samples(channel: grpc.aio.Channel) -> Any:
    sample = telemetry_pb2.InstanceSample(instance_id="decode-0", running_batch=3)
    return await telemetry_pb2_grpc.TelemetryServiceStub(channel).ReportInstanceSamples(
        iter([sample])
    )


async def report_gpu_samples(channel: grpc.aio.Channel) -> Any:
    sample = common_pb2.GpuSample(instance_id="decode-0", sm_clock_mhz=210, power_w=60.0)
    return await telemetry_pb2_grpc.TelemetryServiceStub(channel).ReportGpuSamples(iter([sample]))


def completion_record(request_id: str) -> telemetry_pb2.CompletionRecord:
    now_s = time.time()
    return telemetry_pb2.CompletionRecord(
        request_id=request_id,
        decode_instance_id="decode-0",
        ok=True,
        reason="stop",
        arrival_s=now_s - 0.5,
        finished_at_s=now_s,
    )


async def report_completion(channel: grpc.aio.Channel) -> Any:
    record = completion_record("r-1")
    return await telemetry_pb2_grpc.TelemetryServiceStub(channel).ReportCompletion(record)


async def report_completions(channel: grpc.aio.Channel) -> Any:
    request = telemetry_pb2.ReportCompletionsRequest(records=[completion_record("r-2")])
    return await telemetry_pb2_grpc.TelemetryServiceStub(channel).ReportCompletions(request)


async def report_placements(channel: grpc.aio.Channel) -> Any:
    placement = telemetry_pb2.PlacementRecord(
        request_id="r-1",
        prefill_instance_id="prefill-0",
        decode_instance_id="decode-0",
        input_tokens=10,
        placed_at_s=time.time(),
    )
    return await telemetry_pb2_grpc.TelemetryServiceStub(channel).ReportPlacements(
        telemetry_pb2.ReportPlacementsRequest(placements=[placement])
    )


async def set_cluster_slo(channel: grpc.aio.Channel) -> Any:
    return await telemetry_pb2_grpc.TelemetryServiceStub(channel).SetClusterSlo(
        telemetry_pb2.SetClusterSloRequest(slo=common_pb2.SloTarget(ttft_ms=700.0, itl_ms=45.0))
    )


async def notify_placement(channel: grpc.aio.Channel) -> Any:
    state = common_pb2.InstanceState(instance_id="prefill-0", phase=common_pb2.PHASE_PREFILL)
    return await controller_pb2_grpc.ControllerServiceStub(channel).NotifyPlacement(
        controller_pb2.NotifyPlacementRequest(instances=[state])
    )


async def set_slo(channel: grpc.aio.Channel) -> Any:
    slo = common_pb2.SloTarget(ttft_ms=500.0, itl_ms=40.0)
    return await controller_pb2_grpc.ControllerServiceStub(channel).SetSlo(
        controller_pb2.SetSloRequest(slo=slo)
    )


async def set_policy(channel: grpc.aio.Channel) -> Any:
    return await controller_pb2_grpc.ControllerServiceStub(channel).SetPolicy(
        controller_pb2.SetPolicyRequest(policy_name="static:210")
    )


GPU0 = agent_pb2.GpuSelector(gpu_index=0)


async def set_clocks(channel: grpc.aio.Channel) -> Any:
    return await agent_pb2_grpc.NodeAgentServiceStub(channel).SetClocks(
        agent_pb2.SetClocksRequest(gpu=GPU0, sm_clock_mhz=210, requested_by="tester")
    )


async def renew_lease(channel: grpc.aio.Channel) -> Any:
    return await agent_pb2_grpc.NodeAgentServiceStub(channel).RenewLease(
        agent_pb2.RenewLeaseRequest(gpu=GPU0, requested_by="tester")
    )


async def reset_clocks(channel: grpc.aio.Channel) -> Any:
    return await agent_pb2_grpc.NodeAgentServiceStub(channel).ResetClocks(
        agent_pb2.ResetClocksRequest(gpu=GPU0, requested_by="tester")
    )


# In an order in which each accepted call succeeds (register before reporting, lock before
# renewing...). service attribute of ControlPlane, full method name, the call.
PRIVILEGED_CALLS: list[tuple[str, str, Call]] = [
    ("telemetry", f"/{TELEMETRY_SERVICE}/RegisterInstance", register),
    ("telemetry", f"/{TELEMETRY_SERVICE}/ReportInstanceSamples", report_samples),
    ("telemetry", f"/{TELEMETRY_SERVICE}/ReportGpuSamples", report_gpu_samples),
    ("telemetry", f"/{TELEMETRY_SERVICE}/ReportCompletion", report_completion),
    ("telemetry", f"/{TELEMETRY_SERVICE}/ReportCompletions", report_completions),
    ("telemetry", f"/{TELEMETRY_SERVICE}/ReportPlacements", report_placements),
    ("telemetry", f"/{TELEMETRY_SERVICE}/UnregisterInstance", unregister),
    ("telemetry", f"/{TELEMETRY_SERVICE}/SetClusterSlo", set_cluster_slo),
    ("controller", f"/{CONTROLLER_SERVICE}/SetSlo", set_slo),
    ("controller", f"/{CONTROLLER_SERVICE}/SetPolicy", set_policy),
    ("controller", f"/{CONTROLLER_SERVICE}/NotifyPlacement", notify_placement),
    ("agent", f"/{NODE_AGENT_SERVICE}/SetClocks", set_clocks),
    ("agent", f"/{NODE_AGENT_SERVICE}/RenewLease", renew_lease),
    ("agent", f"/{NODE_AGENT_SERVICE}/ResetClocks", reset_clocks),
]


def test_the_call_table_covers_every_privileged_method() -> None:
    assert {method for _, method, _ in PRIVILEGED_CALLS} == (
        TELEMETRY_PRIVILEGED_METHODS | CONTROLLER_PRIVILEGED_METHODS | AGENT_PRIVILEGED_METHODS
    )


async def refused_with(address: str, security: RpcSecurity | None, call: Call) -> grpc.StatusCode:
    async with create_channel(address, security=security) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(channel)
    return refused.value.code()


async def test_every_privileged_rpc_needs_the_token(plane: ControlPlane) -> None:
    wrong = RpcSecurity(token=WRONG_TOKEN)
    for service_name, method, call in PRIVILEGED_CALLS:
        address = getattr(plane, service_name).address
        assert await refused_with(address, None, call) == grpc.StatusCode.UNAUTHENTICATED, method
        assert await refused_with(address, wrong, call) == grpc.StatusCode.PERMISSION_DENIED, method
        async with create_channel(address, security=SECURITY) as channel:
            await call(channel)  # accepted: no exception
    # Refused calls changed nothing; accepted ones did what they say.
    store = plane.telemetry.store
    assert await store.instance_infos() == {}
    assert (
        await store.window_report(None, 60.0)
    ).cluster.finished == 2  # ReportCompletion and ReportCompletions
    assert plane.gpu.sm_clock_mhz() == A100.default_sm_clock_mhz  # reset by the last call


async def test_refusals_say_what_is_missing(plane: ControlPlane) -> None:
    async with create_channel(plane.controller.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await set_policy(channel)
    details = refused.value.details() or ""
    assert "SetPolicy" in details and "authorization" in details
    assert "VOLTANA_CONTROL_TOKEN" in details
    async with create_channel(
        plane.controller.address, security=RpcSecurity(token=WRONG_TOKEN)
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await set_policy(channel)
    assert WRONG_TOKEN not in (refused.value.details() or "")


async def test_reads_stay_open(plane: ControlPlane) -> None:
    async with create_channel(plane.telemetry.address) as channel:
        snapshot = await telemetry_pb2_grpc.TelemetryServiceStub(channel).GetSnapshot(
            telemetry_pb2.GetSnapshotRequest()
        )
    assert list(snapshot.instances) == []
    async with create_channel(plane.controller.address) as channel:
        await controller_pb2_grpc.ControllerServiceStub(channel).GetStatus(
            controller_pb2.GetStatusRequest()
        )
    async with create_channel(plane.agent.address) as channel:
        clocks = await agent_pb2_grpc.NodeAgentServiceStub(channel).GetClocks(
            agent_pb2.GetClocksRequest()
        )
    assert [state.gpu_index for state in clocks.clocks] == [0]


async def test_a_stranger_cannot_hijack_an_instance(plane: ControlPlane) -> None:
    """The issue's attack: re-register decode-0 with one's own engine to receive prompts."""
    async with create_channel(plane.telemetry.address, security=SECURITY) as channel:
        await register(channel)
    hijack = register_request()
    hijack.endpoint.engine_url = "http://evil.example:30000"
    for security in (None, RpcSecurity(token=WRONG_TOKEN)):
        async with create_channel(plane.telemetry.address, security=security) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await telemetry_pb2_grpc.TelemetryServiceStub(channel).RegisterInstance(hijack)
    infos = await plane.telemetry.store.instance_infos()
    assert infos["decode-0"].engine_url == "http://10.0.0.9:30000"


async def test_services_refuse_to_start_without_a_token() -> None:
    for service in (
        TelemetryService(TelemetrySettings()),
        ControllerService(ControllerSettings(telemetry_address="127.0.0.1:1")),
        AgentService(AgentSettings(), devices=[SimulatedGpu(A100, 0)]),
        RouterService(RouterSettings(initial_snapshot_timeout_s=0)),
    ):
        with pytest.raises(ConfigError, match=r"no control-plane token.*--insecure-no-auth"):
            await service.start()
        await service.stop()


async def test_authentication_can_be_turned_off_explicitly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    open_security = RpcSecurity(insecure_no_auth=True)
    async with (
        TelemetryService(TelemetrySettings(security=open_security)) as telemetry,
        create_channel(telemetry.address) as channel,
    ):
        await register(channel)
    assert any(
        record.levelname == "WARNING" and "authentication is OFF" in record.getMessage()
        for record in caplog.records
    )


# ---- leases bound to their holder --------------------------------------------------------------


async def test_a_lease_belongs_to_its_holder(plane: ControlPlane) -> None:
    async with create_channel(plane.agent.address, security=SECURITY) as channel:
        stub = agent_pb2_grpc.NodeAgentServiceStub(channel)
        await stub.SetClocks(
            agent_pb2.SetClocksRequest(gpu=GPU0, sm_clock_mhz=1005, requested_by="controller@a")
        )
        intruder = "someone-else"
        for call in (
            stub.ResetClocks(agent_pb2.ResetClocksRequest(gpu=GPU0, requested_by=intruder)),
            stub.ResetClocks(agent_pb2.ResetClocksRequest(requested_by=intruder)),  # all GPUs
            stub.RenewLease(agent_pb2.RenewLeaseRequest(gpu=GPU0, requested_by=intruder)),
            stub.SetClocks(
                agent_pb2.SetClocksRequest(gpu=GPU0, sm_clock_mhz=210, requested_by=intruder)
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "controller@a" in (refused.value.details() or "")
        assert plane.gpu.sm_clock_mhz() == 1005
        state = (await stub.GetClocks(agent_pb2.GetClocksRequest())).clocks[0]
        assert state.lease_holder == "controller@a"
        # Its holder may release it.
        await stub.ResetClocks(agent_pb2.ResetClocksRequest(gpu=GPU0, requested_by="controller@a"))
    assert plane.gpu.sm_clock_mhz() == A100.default_sm_clock_mhz


async def test_a_long_low_clock_lease_is_cut_to_the_maximum(plane: ControlPlane) -> None:
    """The issue's attack: a 300 s lease at 210 MHz. The agent grants at most 30 s."""
    async with create_channel(plane.agent.address, security=SECURITY) as channel:
        reply = await agent_pb2_grpc.NodeAgentServiceStub(channel).SetClocks(
            agent_pb2.SetClocksRequest(
                gpu=GPU0, sm_clock_mhz=210, lease_ttl_ms=300_000, requested_by="x"
            )
        )
    assert reply.lease_expires_at_s - time.time() <= 30.5


# ---- router: open by default, API keys on request ---------------------------------------------


@pytest.fixture
async def keyed_router(plane: ControlPlane) -> AsyncIterator[RouterService]:
    settings = RouterSettings(
        telemetry_address=plane.telemetry.address,
        security=SECURITY,
        api_keys=frozenset({API_KEY}),
        initial_snapshot_timeout_s=1.0,
    )
    async with RouterService(settings) as router:
        yield router


async def test_router_with_api_keys_refuses_requests_without_one(
    keyed_router: RouterService,
) -> None:
    for key in (None, "wrong-api-key-0123456789"):
        async with VoltanaClient(keyed_router.address, api_key=key) as client:
            with pytest.raises(AuthenticationError) as refused:
                await client.place("hello", max_new_tokens=4)
            expected = (
                grpc.StatusCode.UNAUTHENTICATED
                if key is None
                else grpc.StatusCode.PERMISSION_DENIED
            )
            assert refused.value.code == expected
            with pytest.raises(AuthenticationError):
                await client.generate("hello", max_new_tokens=4, stream=False)
    # With the key the call gets past authentication (no instance is registered).
    for key in (API_KEY, SECURITY.token):
        async with VoltanaClient(keyed_router.address, api_key=key) as client:
            with pytest.raises(Exception) as failed:
                await client.place("hello", max_new_tokens=4)
            assert not isinstance(failed.value, AuthenticationError)


async def test_router_without_api_keys_is_open(plane: ControlPlane) -> None:
    settings = RouterSettings(
        telemetry_address=plane.telemetry.address, security=SECURITY, initial_snapshot_timeout_s=1
    )
    async with RouterService(settings) as router, create_channel(router.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await router_pb2_grpc.RouterServiceStub(channel).Place(
                router_pb2.GenerateRequest(text="hello", max_new_tokens=4)
            )
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE  # no instance, not auth


async def test_the_shared_sample_stream_carries_the_token(plane: ControlPlane) -> None:
    """An agent's own GPU-sample stream (a long client stream) authenticates too."""
    async with create_channel(plane.telemetry.address, security=SECURITY) as channel:
        stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        request = register_request()
        request.endpoint.agent_address = "node-a:50054"
        await stub.RegisterInstance(request)
        call = stub.ReportGpuSamples()
        for _ in range(3):
            await call.write(
                common_pb2.GpuSample(gpu_index=0, agent_address="node-a:50054", power_w=70.0)
            )
            await asyncio.sleep(0)
        await call.done_writing()
        reply = await call
    assert reply.accepted == 3
