"""voltana.rpc over a real loopback server: health, reflection, error mapping, stop, channels."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from voltana.errors import (
    NotFoundError,
    RemoteError,
    UnavailableError,
    UnknownNameError,
    VoltanaError,
)
from voltana.rpc import (
    create_channel,
    error_from_rpc,
    start_grpc_server,
    status_code_for,
    stop_grpc_server,
    wait_until_ready,
)
from voltana.rpc.names import CONTROLLER_SERVICE, ROUTER_SERVICE
from voltana.v1 import controller_pb2, controller_pb2_grpc, router_pb2, router_pb2_grpc

pytestmark = pytest.mark.integration

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class LeaseTakenError(VoltanaError):
    """A service-specific error that only a per-server mapping gives a code."""


class FakeController(controller_pb2_grpc.ControllerServiceServicer):
    async def ListPolicies(
        self, request: controller_pb2.ListPoliciesRequest, context: Context
    ) -> controller_pb2.ListPoliciesResponse:
        return controller_pb2.ListPoliciesResponse(
            policies=[controller_pb2.PolicyInfo(name="ecofreq")], decode_policy_name="ecofreq"
        )

    async def SetPolicy(
        self, request: controller_pb2.SetPolicyRequest, context: Context
    ) -> controller_pb2.SetPolicyResponse:
        raise UnknownNameError("policy", request.policy_name, ["ecofreq"])

    async def GetStatus(
        self, request: controller_pb2.GetStatusRequest, context: Context
    ) -> controller_pb2.GetStatusResponse:
        if request.instance_ids == ["lease"]:
            raise LeaseTakenError("held by controller-2")
        if request.instance_ids == ["crash"]:
            raise RuntimeError("bug")
        raise NotFoundError(f"no instance {request.instance_ids[0]!r}")


class FakeRouter(router_pb2_grpc.RouterServiceServicer):
    async def Generate(
        self, request: router_pb2.GenerateRequest, context: Context
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        yield router_pb2.GenerateResponse(chunk=router_pb2.TokenChunk(text="Hel", index=0))
        raise UnavailableError("decode-0 went away")


@pytest.fixture
async def server() -> AsyncIterator[tuple[grpc.aio.Server, int, health.aio.HealthServicer]]:
    health_servicer = health.aio.HealthServicer()
    started = await start_grpc_server(
        "127.0.0.1:0",
        [
            functools.partial(
                controller_pb2_grpc.add_ControllerServiceServicer_to_server, FakeController()
            ),
            functools.partial(router_pb2_grpc.add_RouterServiceServicer_to_server, FakeRouter()),
        ],
        [CONTROLLER_SERVICE, ROUTER_SERVICE],
        health_servicer=health_servicer,
        error_codes={LeaseTakenError: grpc.StatusCode.FAILED_PRECONDITION},
    )
    try:
        yield started.server, started.port, health_servicer
    finally:
        await stop_grpc_server(started.server, grace_s=0)


@pytest.fixture
async def channel(
    server: tuple[grpc.aio.Server, int, health.aio.HealthServicer],
) -> AsyncIterator[grpc.aio.Channel]:
    async with create_channel(f"127.0.0.1:{server[1]}") as channel:
        await wait_until_ready(channel, timeout_s=5)
        yield channel


async def test_binds_a_free_port_and_serves_the_servicer(
    server: tuple[grpc.aio.Server, int, health.aio.HealthServicer], channel: grpc.aio.Channel
) -> None:
    assert server[1] > 0
    stub = controller_pb2_grpc.ControllerServiceStub(channel)

    reply = await stub.ListPolicies(controller_pb2.ListPoliciesRequest(), timeout=5)

    assert [policy.name for policy in reply.policies] == ["ecofreq"]


@pytest.mark.parametrize("service", ["", CONTROLLER_SERVICE, ROUTER_SERVICE])
async def test_health_reports_serving(channel: grpc.aio.Channel, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(channel)

    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)

    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_does_not_know_unregistered_services(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Check(health_pb2.HealthCheckRequest(service="voltana.v1.Nope"), timeout=5)

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )

    replies = [reply async for reply in call]

    listed = {service.name for service in replies[0].list_services_response.service}
    assert {CONTROLLER_SERVICE, ROUTER_SERVICE, "grpc.health.v1.Health"} <= listed


@pytest.mark.parametrize(
    ("instance_id", "code", "message"),
    [
        ("gone", grpc.StatusCode.NOT_FOUND, "no instance 'gone'"),
        ("lease", grpc.StatusCode.FAILED_PRECONDITION, "held by controller-2"),
        ("crash", grpc.StatusCode.UNKNOWN, "bug"),  # non-Voltana errors are grpc's to report
    ],
)
async def test_errors_become_status_codes(
    channel: grpc.aio.Channel, instance_id: str, code: grpc.StatusCode, message: str
) -> None:
    stub = controller_pb2_grpc.ControllerServiceStub(channel)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetStatus(controller_pb2.GetStatusRequest(instance_ids=[instance_id]), timeout=5)

    assert raised.value.code() == code
    assert message in (raised.value.details() or "")


async def test_config_errors_are_invalid_arguments_and_map_back(
    channel: grpc.aio.Channel,
) -> None:
    stub = controller_pb2_grpc.ControllerServiceStub(channel)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.SetPolicy(controller_pb2.SetPolicyRequest(policy_name="turbo"), timeout=5)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_from_rpc(raised.value)
    assert type(error).__name__ == "InvalidArgumentError"
    assert "unknown policy 'turbo'" in str(error)


async def test_streams_end_with_the_mapped_status(channel: grpc.aio.Channel) -> None:
    stub = router_pb2_grpc.RouterServiceStub(channel)
    received: list[router_pb2.GenerateResponse] = []

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for response in stub.Generate(router_pb2.GenerateRequest(text="hi"), timeout=5):
            received.append(response)

    assert [response.chunk.text for response in received] == ["Hel"]
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert isinstance(error_from_rpc(raised.value), UnavailableError)


async def test_unimplemented_methods_stay_unimplemented(channel: grpc.aio.Channel) -> None:
    stub = controller_pb2_grpc.ControllerServiceStub(channel)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.SetSlo(controller_pb2.SetSloRequest(), timeout=5)

    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert isinstance(error_from_rpc(raised.value), RemoteError)


async def test_graceful_stop_reports_not_serving_to_watchers() -> None:
    health_servicer = health.aio.HealthServicer()
    started = await start_grpc_server(
        "127.0.0.1:0",
        [functools.partial(router_pb2_grpc.add_RouterServiceServicer_to_server, FakeRouter())],
        [ROUTER_SERVICE],
        health_servicer=health_servicer,
    )
    statuses: list[int] = []
    async with create_channel(f"127.0.0.1:{started.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=ROUTER_SERVICE), timeout=5
        )
        statuses.append((await watch.read()).status)

        await stop_grpc_server(started.server, grace_s=0.2, health_servicer=health_servicer)

        with pytest.raises(grpc.aio.AioRpcError):  # the watch ends when the grace ends
            while (reply := await watch.read()) is not grpc.aio.EOF:
                statuses.append(reply.status)

    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert statuses == [serving, not_serving]


async def test_a_taken_port_is_a_config_error(
    server: tuple[grpc.aio.Server, int, health.aio.HealthServicer],
) -> None:
    from voltana.errors import ConfigError

    register = functools.partial(router_pb2_grpc.add_RouterServiceServicer_to_server, FakeRouter())
    with pytest.raises(ConfigError, match="cannot bind"):
        await start_grpc_server(f"127.0.0.1:{server[1]}", [register], [ROUTER_SERVICE])


async def test_wait_until_ready_fails_fast_without_a_server() -> None:
    # Bind-and-stop to get a port nobody listens on.
    started = await start_grpc_server(
        "127.0.0.1:0",
        [functools.partial(router_pb2_grpc.add_RouterServiceServicer_to_server, FakeRouter())],
        [ROUTER_SERVICE],
    )
    await stop_grpc_server(started.server, grace_s=0)

    async with create_channel(f"127.0.0.1:{started.port}") as channel:
        with pytest.raises(UnavailableError, match="not ready"):
            await wait_until_ready(channel, timeout_s=0.3)


def test_status_codes_follow_the_class_hierarchy() -> None:
    class GpuGoneError(NotFoundError):
        pass

    assert status_code_for(GpuGoneError("gpu 7")) == grpc.StatusCode.NOT_FOUND
    assert status_code_for(VoltanaError("?")) == grpc.StatusCode.INTERNAL
    assert status_code_for(ValueError("?")) is None
    assert (
        status_code_for(GpuGoneError("x"), {GpuGoneError: grpc.StatusCode.UNAVAILABLE})
        == grpc.StatusCode.UNAVAILABLE
    )


V1_REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


async def _reflect_v1(
    channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    # grpc.reflection.v1 has v1alpha's messages under a new package name: same wire format.
    method = channel.stream_stream(
        V1_REFLECTION,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    replies = [reply async for reply in method(iter([request]), timeout=5)]
    assert len(replies) == 1
    return replies[0]


async def test_reflection_v1_lists_and_describes_services(channel: grpc.aio.Channel) -> None:
    listed = await _reflect_v1(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {service.name for service in listed.list_services_response.service}
    assert {
        CONTROLLER_SERVICE,
        ROUTER_SERVICE,
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names

    for symbol in (ROUTER_SERVICE, "grpc.reflection.v1.ServerReflection"):
        described = await _reflect_v1(
            channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
        )
        assert described.WhichOneof("message_response") == "file_descriptor_response", symbol
        assert described.file_descriptor_response.file_descriptor_proto
