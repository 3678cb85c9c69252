"""GPU samples from the agent to a telemetry gRPC server (a fake TelemetryService servicer)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from security_helpers import SECURITY

from voltana.gpu import GpuError, GpuSample, SimulatedGpu
from voltana.hardware import get_gpu
from voltana.rpc import create_channel, start_grpc_server, stop_grpc_server
from voltana.rpc.names import NODE_AGENT_SERVICE, TELEMETRY_SERVICE
from voltana.services.agent import (
    AgentService,
    AgentSettings,
    GpuSampler,
    GrpcGpuSampleSink,
    ManualClock,
)
from voltana.v1 import common_pb2, telemetry_pb2, telemetry_pb2_grpc

pytestmark = pytest.mark.integration

A100 = get_gpu("a100-80g")


async def eventually(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


class FakeTelemetry(telemetry_pb2_grpc.TelemetryServiceServicer):
    """Records GPU samples and how many report streams ended."""

    def __init__(self) -> None:
        self.samples: list[common_pb2.GpuSample] = []
        self.finished_streams = 0

    async def ReportGpuSamples(
        self, request_iterator: AsyncIterator[common_pb2.GpuSample], context: Any
    ) -> telemetry_pb2.ReportSamplesResponse:
        accepted = 0
        async for sample in request_iterator:
            self.samples.append(sample)
            accepted += 1
        self.finished_streams += 1
        return telemetry_pb2.ReportSamplesResponse(accepted=accepted)


async def start_fake_telemetry(address: str = "127.0.0.1:0") -> tuple[Any, int, FakeTelemetry]:
    telemetry = FakeTelemetry()
    register = functools.partial(
        telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server, telemetry
    )
    server, port = await start_grpc_server(address, [register], [TELEMETRY_SERVICE])
    return server, port, telemetry


async def test_agent_streams_samples_to_telemetry() -> None:
    server, port, telemetry = await start_fake_telemetry()
    try:
        settings = AgentSettings(
            backend="sim",
            gpu_indices=(0, 1),
            instance_gpu_indices={"prefill-0": 0},
            telemetry_address=f"127.0.0.1:{port}",
            sample_interval_ms=20,
            advertise_address="node-a:50070",
            security=SECURITY,
        )
        async with AgentService(settings):
            await eventually(lambda: len(telemetry.samples) >= 6)
        # Stopping the agent ends the stream cleanly (done_writing, then the reply).
        await eventually(lambda: telemetry.finished_streams == 1)
    finally:
        await stop_grpc_server(server, 0)
    by_gpu = {sample.gpu_index: sample for sample in telemetry.samples}
    assert set(by_gpu) == {0, 1}
    assert by_gpu[0].instance_id == "prefill-0"
    assert by_gpu[1].instance_id == ""
    assert all(sample.agent_address == "node-a:50070" for sample in telemetry.samples)
    assert by_gpu[0].sm_clock_mhz == 1410
    assert by_gpu[0].power_w == A100.idle_w
    energies = [s.energy_j for s in telemetry.samples if s.gpu_index == 0]
    assert energies == sorted(energies) and energies[-1] > 0
    assert abs(by_gpu[0].timestamp_s - time.time()) < 5


async def test_sink_drops_while_telemetry_is_down_and_reconnects() -> None:
    server, port, _ = await start_fake_telemetry()
    await stop_grpc_server(server, 0)  # a port nobody listens on (for now)
    address = f"127.0.0.1:{port}"
    sink = GrpcGpuSampleSink(
        address, agent_address="a:1", instance_ids_by_gpu={}, security=SECURITY
    )
    sample = GpuSample(gpu_index=0, timestamp_s=1.0, sm_clock_mhz=1410, power_w=60.0, energy_j=1.0)
    await sink.send([sample])
    await sink.send([sample])
    assert sink.dropped_samples >= 1
    server, _, telemetry = await start_fake_telemetry(address)
    try:
        # The channel reconnects with backoff; keep sending as the sampler would.
        deadline = time.monotonic() + 5
        while not telemetry.samples and time.monotonic() < deadline:
            await sink.send([sample])
            await asyncio.sleep(0.05)
        assert telemetry.samples
        assert sink.sent_samples >= 1
    finally:
        await sink.close()
        await stop_grpc_server(server, 0)


class RecordingSink:
    def __init__(self, fail_first: int = 0) -> None:
        self.rounds: list[list[GpuSample]] = []
        self._fail_first = fail_first

    async def send(self, samples: Sequence[GpuSample]) -> None:
        if self._fail_first:
            self._fail_first -= 1
            raise RuntimeError("sink broke (test)")
        self.rounds.append(list(samples))

    async def close(self) -> None:
        pass


class BrokenGpu(SimulatedGpu):
    def power_w(self) -> float:
        raise GpuError("power sensor gone (test)")


async def test_sampler_skips_broken_gpus_and_survives_a_failing_sink() -> None:
    clock = ManualClock()
    gpus = [SimulatedGpu(A100, 0, now_s=clock.now_s), BrokenGpu(A100, 1, now_s=clock.now_s)]
    sink = RecordingSink(fail_first=1)
    task = asyncio.create_task(GpuSampler(gpus, sink, clock, interval_s=1.0).run())
    try:
        for _ in range(3):
            await eventually(lambda: clock.pending_sleepers == 1)
            clock.advance(1.0)
        await eventually(lambda: len(sink.rounds) >= 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert all([s.gpu_index for s in round_] == [0] for round_ in sink.rounds)
    assert [round_[0].energy_j for round_ in sink.rounds[:2]] == pytest.approx(
        [A100.idle_w * 1.0, A100.idle_w * 2.0]
    )


class DetachableGpu(SimulatedGpu):
    """A GPU that can fall off the bus (every read fails) and come back."""

    detached = False

    def power_w(self) -> float:
        if self.detached:
            raise GpuError("GPU has fallen off the bus (test)")
        return super().power_w()


async def test_agent_is_not_serving_while_a_gpu_cannot_be_read() -> None:
    detachable = DetachableGpu(A100, 1)
    settings = AgentSettings(sample_interval_ms=20, security=SECURITY)
    async with (
        AgentService(settings, devices=[SimulatedGpu(A100, 0), detachable]) as agent,
        create_channel(agent.address, security=SECURITY) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)

        async def status() -> int:
            request = health_pb2.HealthCheckRequest(service=NODE_AGENT_SERVICE)
            return int((await health.Check(request, timeout=2.0)).status)

        async def becomes(expected: int) -> None:
            deadline = time.monotonic() + 3.0
            while await status() != expected:
                assert time.monotonic() < deadline, f"health never became {expected}"
                await asyncio.sleep(0.01)

        assert await status() == health_pb2.HealthCheckResponse.SERVING
        detachable.detached = True
        await becomes(health_pb2.HealthCheckResponse.NOT_SERVING)
        detachable.detached = False
        await becomes(health_pb2.HealthCheckResponse.SERVING)


async def test_agent_uses_an_injected_sink() -> None:
    clock = ManualClock()
    sim = SimulatedGpu(A100, 0, now_s=clock.now_s, clock_change_delay_ms=0)
    sink = RecordingSink()
    async with AgentService(
        AgentSettings(sample_interval_ms=100, security=SECURITY),
        devices=[sim],
        clock=clock,
        sink=sink,
    ):
        await eventually(lambda: len(sink.rounds) == 1)
        clock.advance(0.1)
        await eventually(lambda: len(sink.rounds) == 2)


class StalledTelemetry(telemetry_pb2_grpc.TelemetryServiceServicer):
    """Accepts a report stream but never reads it, so the agent's writes back up."""

    def __init__(self) -> None:
        self.opened_streams = 0
        self.release = asyncio.Event()

    async def ReportGpuSamples(
        self, request_iterator: AsyncIterator[common_pb2.GpuSample], context: Any
    ) -> telemetry_pb2.ReportSamplesResponse:
        self.opened_streams += 1
        await self.release.wait()
        return telemetry_pb2.ReportSamplesResponse()


async def test_sink_closes_quietly_after_a_write_was_cancelled_mid_stream() -> None:
    telemetry = StalledTelemetry()
    register = functools.partial(
        telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server, telemetry
    )
    server, port = await start_grpc_server("127.0.0.1:0", [register], [TELEMETRY_SERVICE])
    sink = GrpcGpuSampleSink(
        f"127.0.0.1:{port}", agent_address="a:1", instance_ids_by_gpu={}, security=SECURITY
    )
    sample = GpuSample(gpu_index=0, timestamp_s=1.0, sm_clock_mhz=1410, power_w=60.0, energy_j=1.0)
    try:
        # More samples than telemetry will ever take: the sender is inside a write when the
        # sampler (here: this task) is cancelled, and gRPC cancels the call with it.
        sending = asyncio.create_task(sink.send([sample] * 100_000))
        await eventually(lambda: telemetry.opened_streams == 1)
        await asyncio.sleep(0.05)
        assert not sending.done()
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        started_s = time.monotonic()
        await sink.close()  # used to raise the call's CancelledError
        assert time.monotonic() - started_s < 4.0  # nothing left to flush: no 5 s write timeout
    finally:
        telemetry.release.set()
        await stop_grpc_server(server, 0)


class FailingCloseSink(RecordingSink):
    """A sink whose teardown fails the way a cancelled or broken gRPC stream does."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error
        self.close_calls = 0

    async def close(self) -> None:
        self.close_calls += 1
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        asyncio.CancelledError(),
        grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone (test)"
        ),
        RuntimeError("sink bug (test)"),
    ],
    ids=["cancelled", "rpc-error", "bug"],
)
async def test_stop_never_raises_from_sink_teardown(error: BaseException) -> None:
    clock = ManualClock()
    sim = SimulatedGpu(A100, 0, now_s=clock.now_s, clock_change_delay_ms=0)
    sink = FailingCloseSink(error)
    service = AgentService(AgentSettings(security=SECURITY), devices=[sim], clock=clock, sink=sink)
    await service.start()
    await eventually(lambda: len(sink.rounds) == 1)
    sim.set_locked_sm_clock_mhz(1005, 1005)
    await service.stop()
    assert sink.close_calls == 1
    assert sim.locked_range_mhz is None  # the GPU reset still happened


class BlockingCloseSink(RecordingSink):
    def __init__(self) -> None:
        super().__init__()
        self.closing = asyncio.Event()
        self.closed = False

    async def close(self) -> None:
        self.closing.set()
        await asyncio.Event().wait()  # until cancelled
        self.closed = True


async def test_cancelling_stop_itself_still_propagates() -> None:
    clock = ManualClock()
    sim = SimulatedGpu(A100, 0, now_s=clock.now_s, clock_change_delay_ms=0)
    sink = BlockingCloseSink()
    service = AgentService(AgentSettings(security=SECURITY), devices=[sim], clock=clock, sink=sink)
    await service.start()
    stopping = asyncio.create_task(service.stop())
    await asyncio.wait_for(sink.closing.wait(), 2.0)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert stopping.cancelled() and not sink.closed


class ClosingSink(RecordingSink):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    async def close(self) -> None:
        await asyncio.sleep(0)
        self.closed = True


async def test_stop_as_cleanup_of_a_cancelled_task_still_finishes() -> None:
    # A cancel() the task received before stop() began is not a cancellation of stop().
    clock = ManualClock()
    sim = SimulatedGpu(A100, 0, now_s=clock.now_s, clock_change_delay_ms=0)
    sink = ClosingSink()
    service = AgentService(AgentSettings(security=SECURITY), devices=[sim], clock=clock, sink=sink)
    serving = asyncio.Event()

    async def serve_until_cancelled() -> None:
        await service.start()
        try:
            serving.set()
            await asyncio.Event().wait()
        finally:
            sim.set_locked_sm_clock_mhz(1005, 1005)
            await service.stop()

    task = asyncio.create_task(serve_until_cancelled())
    await asyncio.wait_for(serving.wait(), 2.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.closed
    assert sim.locked_range_mhz is None
