"""Input bounds over real loopback gRPC: oversized and malformed strings, timestamps from the
future, absurd SLOs, too many instances, and request bytes that do not decode."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest
from security_helpers import SECURITY

from voltana.contract.state import InstanceState, Phase
from voltana.errors import InvalidArgumentError
from voltana.gpu import GpuSample, SimulatedGpu
from voltana.hardware import get_gpu
from voltana.rpc import create_channel
from voltana.rpc.channel import MAX_MESSAGE_BYTES
from voltana.rpc.limits import (
    MAX_ADDRESS_CHARS,
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_SLO_MS,
    slo_target_problem,
)
from voltana.rpc.names import (
    CONTROLLER_SERVICE,
    NODE_AGENT_SERVICE,
    ROUTER_SERVICE,
    TELEMETRY_SERVICE,
)
from voltana.services.agent import AgentService, AgentSettings
from voltana.services.controller import ControllerService, ControllerSettings
from voltana.services.router import RouterService, RouterSettings
from voltana.services.telemetry import (
    Completion,
    InstanceInfo,
    TelemetryClient,
    TelemetryService,
    TelemetrySettings,
)
from voltana.services.telemetry.convert import snapshot_to_proto
from voltana.services.telemetry.validate import validate_instance_info
from voltana.text import shorten, truncate
from voltana.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    controller_pb2,
    controller_pb2_grpc,
    telemetry_pb2,
    telemetry_pb2_grpc,
)

pytestmark = pytest.mark.integration

A100 = get_gpu("a100-80g")
HUGE = "x" * 10_000_000  # the 10 MB string
YEAR_2096_S = 3_976_214_400.0
# A status message that quotes a 10 MB string would be megabytes long.
SHORT_DETAILS = 600


@dataclass
class Plane:
    telemetry: TelemetryService
    client: TelemetryClient
    controller: ControllerService
    agent: AgentService
    router: RouterService


@pytest.fixture
async def plane() -> AsyncIterator[Plane]:
    async with AsyncExitStack() as stack:
        telemetry = await stack.enter_async_context(
            TelemetryService(TelemetrySettings(security=SECURITY, max_instances=3))
        )
        client = await stack.enter_async_context(
            TelemetryClient(telemetry.address, security=SECURITY)
        )
        controller = await stack.enter_async_context(
            ControllerService(
                ControllerSettings(telemetry_address=telemetry.address, security=SECURITY)
            )
        )
        agent = await stack.enter_async_context(
            AgentService(AgentSettings(security=SECURITY), devices=[SimulatedGpu(A100, 0)])
        )
        router = await stack.enter_async_context(
            RouterService(
                RouterSettings(
                    telemetry_address=telemetry.address,
                    security=SECURITY,
                    initial_snapshot_timeout_s=1.0,
                )
            )
        )
        yield Plane(telemetry, client, controller, agent, router)


def decode_info(instance_id: str = "decode-0") -> InstanceInfo:
    return InstanceInfo(
        instance_id=instance_id,
        phase=Phase.DECODE,
        gpu_key="a100-80g",
        engine_url="http://10.0.0.9:30000",
        agent_address="node-a:50054",
        gpu_index=0,
    )


def load(instance_id: str, observed_at_s: float, running_batch: int) -> InstanceState:
    return InstanceState(
        instance_id=instance_id,
        phase=Phase.DECODE,
        gpu_key="",
        sm_clock_mhz=0,
        running_batch=running_batch,
        observed_at_s=observed_at_s,
    )


def a_completion(**overrides: Any) -> Completion:
    now_s = time.time()
    fields: dict[str, Any] = {
        "request_id": "r-1",
        "prefill_id": "prefill-0",
        "decode_id": "decode-0",
        "input_tokens": 1,
        "output_tokens": 1,
        "ttft_ms": 1.0,
        "mean_itl_ms": None,
        "ok": True,
        "reason": "stop",
        "arrival_s": now_s - 1.0,
        "finished_at_s": now_s,
    }
    return Completion(**{**fields, **overrides})


def assert_short_invalid(error: grpc.aio.AioRpcError) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert len(details) < SHORT_DETAILS and "\n" not in details


# ---- timestamps from the future -----------------------------------------------------------------


async def test_a_sample_from_the_future_does_not_freeze_an_instance(plane: Plane) -> None:
    await plane.client.register_instance(decode_info())
    result = await plane.client.report_instance_samples([load("decode-0", YEAR_2096_S, 99)])
    assert (result.accepted, result.rejected) == (0, 1)
    assert "ahead of telemetry's clock" in result.first_rejection_reason
    # Later, truthful samples still count (before: "older than the last", forever).
    result = await plane.client.report_instance_samples([load("decode-0", time.time(), 7)])
    assert (result.accepted, result.rejected) == (1, 0)
    snapshot = await plane.client.snapshot()
    assert snapshot.decode["decode-0"].running_batch == 7
    # A small skew is tolerated.
    result = await plane.client.report_instance_samples([load("decode-0", time.time() + 2, 8)])
    assert result.accepted == 1


async def test_gpu_samples_and_completions_from_the_future_are_refused(plane: Plane) -> None:
    await plane.client.register_instance(decode_info())
    future = GpuSample(
        gpu_index=0, timestamp_s=YEAR_2096_S, sm_clock_mhz=210, power_w=1, energy_j=1
    )
    now = GpuSample(gpu_index=0, timestamp_s=time.time(), sm_clock_mhz=1410, power_w=1, energy_j=2)
    result = await plane.client.report_gpu_samples([future, now], agent_address="node-a:50054")
    assert (result.accepted, result.rejected) == (1, 1)
    assert (await plane.client.snapshot()).decode["decode-0"].sm_clock_mhz == 1410
    completion = a_completion(finished_at_s=YEAR_2096_S)
    with pytest.raises(InvalidArgumentError, match="finished_at_s is stamped"):
        await plane.client.report_completion(completion)


async def test_a_long_failure_reason_is_cut_not_refused(plane: Plane) -> None:
    completion = a_completion(ok=False, output_tokens=0, reason="engine said: " + HUGE)
    await plane.client.report_completion(completion)
    report = await plane.telemetry.store.window_report(None, 60.0)
    assert report.cluster.failed == 1


# ---- oversized and malformed strings ------------------------------------------------------------


async def test_oversized_ids_are_refused_without_being_echoed(plane: Plane) -> None:
    async with create_channel(plane.telemetry.address, security=SECURITY) as channel:
        stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        calls = [
            stub.RegisterInstance(
                telemetry_pb2.RegisterInstanceRequest(
                    instance_id=HUGE, phase=common_pb2.PHASE_DECODE, gpu_key="a100-80g"
                )
            ),
            stub.UnregisterInstance(telemetry_pb2.UnregisterInstanceRequest(instance_id=HUGE)),
            stub.ReportInstanceSamples(iter([telemetry_pb2.InstanceSample(instance_id=HUGE)])),
            stub.GetSnapshot(telemetry_pb2.GetSnapshotRequest(instance_ids=[HUGE])),
            stub.RegisterInstance(
                telemetry_pb2.RegisterInstanceRequest(
                    instance_id="decode-0",
                    phase=common_pb2.PHASE_DECODE,
                    gpu_key="a100-80g",
                    endpoint=common_pb2.InstanceEndpoint(engine_url="http://" + HUGE),
                )
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert_short_invalid(refused.value)
            assert "characters long; at most" in (refused.value.details() or "")
    assert await plane.telemetry.store.instance_infos() == {}


async def test_control_characters_in_ids_are_refused_and_escaped(plane: Plane) -> None:
    forged = "decode-0\n2026-01-01T00:00:00Z INFO voltana: all good"
    with pytest.raises(InvalidArgumentError) as refused:
        await plane.client.register_instance(decode_info(forged))
    assert "\n" not in str(refused.value) and "\\n" in str(refused.value)


async def test_agent_bounds_holder_ids_and_escapes_reasons_in_its_log(
    plane: Plane, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gpu = agent_pb2.GpuSelector(gpu_index=0)
    async with create_channel(plane.agent.address, security=SECURITY) as channel:
        stub = agent_pb2_grpc.NodeAgentServiceStub(channel)
        for request in (
            agent_pb2.SetClocksRequest(gpu=gpu, sm_clock_mhz=1005, requested_by=HUGE),
            agent_pb2.SetClocksRequest(gpu=gpu, sm_clock_mhz=1005, reason=HUGE),
            agent_pb2.SetClocksRequest(
                gpu=agent_pb2.GpuSelector(instance_id=HUGE), sm_clock_mhz=1005
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.SetClocks(request)
            assert_short_invalid(refused.value)
        await stub.SetClocks(
            agent_pb2.SetClocksRequest(
                gpu=gpu, sm_clock_mhz=1005, requested_by="ops", reason="line one\nFAKE LINE"
            )
        )
    messages = [record.getMessage() for record in caplog.records]
    locked = [message for message in messages if "locked at 1005 MHz" in message]
    assert locked and "\n" not in locked[0] and "line one\\nFAKE LINE" in locked[0]


def test_the_largest_snapshot_stays_far_below_the_message_limit() -> None:
    settings = TelemetrySettings()
    width = max(MAX_ADDRESS_CHARS - len("http://"), 1)
    infos = {}
    for index in range(settings.max_instances):
        instance_id = f"{index:06d}".ljust(MAX_ID_CHARS, "i")
        info = InstanceInfo(
            instance_id=instance_id,
            phase=Phase.DECODE,
            gpu_key="g" * MAX_NAME_CHARS,
            engine_url="http://" + "e" * width,
            bootstrap_host="b" * MAX_ADDRESS_CHARS,
            bootstrap_port=65535,
            agent_address="a" * MAX_ADDRESS_CHARS,
            gpu_index=2**31 - 1,
            kv_tokens_capacity=2**62,
            max_running_requests=2**31 - 1,
        )
        validate_instance_info(info)  # the largest values telemetry accepts
        infos[instance_id] = info
    states = {
        instance_id: InstanceState(
            instance_id=instance_id,
            phase=Phase.DECODE,
            gpu_key=info.gpu_key,
            sm_clock_mhz=2**31 - 1,
            queue_len=2**31 - 1,
            queued_tokens=2**62,
            oldest_wait_ms=math.pi * 1e300,
            running_batch=2**31 - 1,
            recent_ttft_ms=1e300,
            recent_itl_ms=1e300,
            observed_at_s=YEAR_2096_S,
        )
        for instance_id, info in infos.items()
    }
    size = snapshot_to_proto(states, infos, time.time()).ByteSize()
    assert size < MAX_MESSAGE_BYTES / 8, size


async def test_instances_beyond_the_maximum_are_refused(plane: Plane) -> None:
    for index in range(3):
        await plane.client.register_instance(decode_info(f"decode-{index}"))
    async with create_channel(plane.telemetry.address, security=SECURITY) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await telemetry_pb2_grpc.TelemetryServiceStub(channel).RegisterInstance(
                telemetry_pb2.RegisterInstanceRequest(
                    instance_id="decode-3", phase=common_pb2.PHASE_DECODE, gpu_key="a100-80g"
                )
            )
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_instances" in (refused.value.details() or "")
    # Re-registering one that is there (a heartbeat, a new endpoint) still works.
    assert await plane.client.register_instance(decode_info("decode-1")) is False
    await plane.client.unregister_instance("decode-0")
    assert await plane.client.register_instance(decode_info("decode-3")) is True


# ---- controller knobs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttft_ms", "itl_ms"),
    [(1e308, 50.0), (800.0, -1.0), (math.nan, 50.0), (800.0, math.inf), (0.0, 50.0)],
)
async def test_absurd_slos_are_refused(plane: Plane, ttft_ms: float, itl_ms: float) -> None:
    async with create_channel(plane.controller.address, security=SECURITY) as channel:
        stub = controller_pb2_grpc.ControllerServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SetSlo(
                controller_pb2.SetSloRequest(
                    slo=common_pb2.SloTarget(ttft_ms=ttft_ms, itl_ms=itl_ms)
                )
            )
        assert_short_invalid(refused.value)
        status = await stub.GetStatus(controller_pb2.GetStatusRequest())
    before = ControllerSettings(telemetry_address="x:1").slo
    assert (status.slo.ttft_ms, status.slo.itl_ms) == (before.ttft_ms, before.itl_ms)


def test_slo_targets_have_a_sane_range() -> None:
    assert slo_target_problem("ttft_ms", MAX_SLO_MS) is None
    assert slo_target_problem("ttft_ms", 0.5) is None
    for value in (0.0, -1.0, math.nan, math.inf, MAX_SLO_MS * 1.01, 1e308):
        problem = slo_target_problem("ttft_ms", value)
        assert problem is not None and problem.startswith("ttft_ms must be")


async def test_policy_names_and_selections_are_bounded(plane: Plane) -> None:
    async with create_channel(plane.controller.address, security=SECURITY) as channel:
        stub = controller_pb2_grpc.ControllerServiceStub(channel)
        for call in (
            stub.SetPolicy(controller_pb2.SetPolicyRequest(policy_name=HUGE)),
            stub.GetStatus(controller_pb2.GetStatusRequest(instance_ids=[HUGE])),
            stub.GetStatus(controller_pb2.GetStatusRequest(instance_ids=["d"] * 5000)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert_short_invalid(refused.value)
        # An unknown (but sane) policy name is still explained with the valid ones.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SetPolicy(controller_pb2.SetPolicyRequest(policy_name="fastest"))
        assert "valid:" in (refused.value.details() or "")


# ---- request bytes that do not decode -----------------------------------------------------------


GARBAGE = b"\xff\xff\xff\xff\x0f not a protobuf message"


async def test_undecodable_requests_are_invalid_argument_in_one_log_line(
    plane: Plane, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    targets = [
        (plane.telemetry.address, f"/{TELEMETRY_SERVICE}/RegisterInstance", "unary"),
        (plane.telemetry.address, f"/{TELEMETRY_SERVICE}/GetSnapshot", "unary"),
        (plane.telemetry.address, f"/{TELEMETRY_SERVICE}/ReportGpuSamples", "client-stream"),
        (plane.telemetry.address, f"/{TELEMETRY_SERVICE}/WatchSnapshots", "server-stream"),
        (plane.controller.address, f"/{CONTROLLER_SERVICE}/SetSlo", "unary"),
        (plane.agent.address, f"/{NODE_AGENT_SERVICE}/SetClocks", "unary"),
        (plane.router.address, f"/{ROUTER_SERVICE}/Generate", "server-stream"),
        (plane.router.address, f"/{ROUTER_SERVICE}/Place", "unary"),
    ]
    for address, method, kind in targets:
        caplog.clear()
        async with create_channel(address, security=SECURITY) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                if kind == "unary":
                    await channel.unary_unary(method)(GARBAGE)
                elif kind == "client-stream":
                    await channel.stream_unary(method)(iter([GARBAGE]))
                else:
                    async for _ in channel.unary_stream(method)(GARBAGE):
                        pass
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert "does not decode" in (refused.value.details() or ""), method
        lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1, (method, [r.getMessage() for r in lines])
        assert lines[0].exc_info is None and "undecodable" in lines[0].getMessage()


async def test_undecodable_bytes_from_a_stranger_are_refused_first(plane: Plane) -> None:
    async with create_channel(plane.telemetry.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary(f"/{TELEMETRY_SERVICE}/RegisterInstance")(GARBAGE)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ---- the helpers ----------------------------------------------------------------------------------


def test_shorten_quotes_cuts_and_escapes() -> None:
    assert shorten("decode-0") == "'decode-0'"
    assert shorten("a\nb") == "'a\\nb'"
    cut = shorten(HUGE, 10)
    assert cut == "'xxxxxxxxxx'… (+9999990 chars)"
    assert len(truncate(HUGE, 100)) <= 100 and truncate("short", 100) == "short"
