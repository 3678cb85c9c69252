"""Where the agent's GPU samples go: a small interface and its telemetry gRPC implementation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import grpc
import grpc.aio

from voltana.gpu import GpuSample
from voltana.rpc import RpcSecurity, create_channel
from voltana.v1 import common_pb2, telemetry_pb2, telemetry_pb2_grpc

_LOG = logging.getLogger(__name__)


class GpuSampleSink(Protocol):
    async def send(self, samples: Sequence[GpuSample]) -> None:
        """Deliver one round of samples (one per GPU); may drop them when the peer is down."""
        ...

    async def close(self) -> None:
        """Flush and release connections."""
        ...


def gpu_sample_to_proto(
    sample: GpuSample, *, instance_id: str, agent_address: str
) -> common_pb2.GpuSample:
    return common_pb2.GpuSample(
        instance_id=instance_id,
        gpu_index=sample.gpu_index,
        sm_clock_mhz=sample.sm_clock_mhz,
        power_w=sample.power_w,
        energy_j=sample.energy_j,
        timestamp_s=sample.timestamp_s,
        agent_address=agent_address,
    )


class GrpcGpuSampleSink:
    """Streams samples to TelemetryService.ReportGpuSamples over one long client stream.

    When the stream breaks (telemetry restarts, network), that round of samples is dropped and
    the next ``send`` opens a new stream: telemetry keeps the latest state, so a gap is harmless
    and the agent never blocks on a dead peer.
    """

    def __init__(
        self,
        telemetry_address: str,
        *,
        agent_address: str,
        instance_ids_by_gpu: Mapping[int, str],
        write_timeout_s: float = 5.0,
        security: RpcSecurity | None = None,
    ) -> None:
        self._security = security
        self._write_timeout_s = write_timeout_s
        self._telemetry_address = telemetry_address
        self._agent_address = agent_address
        self._instance_ids_by_gpu = dict(instance_ids_by_gpu)
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None  # grpc.aio.StreamUnaryCall while a stream is open
        self.sent_samples = 0
        self.dropped_samples = 0

    def _open_call(self) -> Any:
        if self._channel is None:
            # Background stream: not traced (see create_channel).
            self._channel = create_channel(
                self._telemetry_address, security=self._security, traced=False
            )
        stub = telemetry_pb2_grpc.TelemetryServiceStub(self._channel)
        return stub.ReportGpuSamples()

    async def send(self, samples: Sequence[GpuSample]) -> None:
        if not samples:
            return
        if self._call is None:
            self._call = self._open_call()
        call = self._call
        try:
            for sample in samples:
                message = gpu_sample_to_proto(
                    sample,
                    instance_id=self._instance_ids_by_gpu.get(sample.gpu_index, ""),
                    agent_address=self._agent_address,
                )
                # A peer that accepts the connection but never reads must not stall sampling.
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel
                # that races with a finishing write, and the sampler would then never stop.
                async with asyncio.timeout(self._write_timeout_s):
                    await call.write(message)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError) as error:
            self.dropped_samples += len(samples)
            self._call = None
            call.cancel()
            _LOG.warning(
                "GPU sample stream to telemetry at %s broke (%s); reopening on the next round",
                self._telemetry_address,
                _describe(error),
            )
            return
        self.sent_samples += len(samples)

    async def close(self) -> None:
        call, self._call = self._call, None
        try:
            if call is not None and call.cancelled():
                # A write was cancelled mid-stream (the sampler stopped): gRPC cancelled the
                # call with it, nothing is left to flush, and awaiting it would only raise
                # CancelledError.
                _LOG.debug("GPU sample stream was cancelled mid-write; nothing to flush")
            elif call is not None:
                await self._finish(call)
        finally:
            if self._channel is not None:
                await self._channel.close()
                self._channel = None

    async def _finish(self, call: Any) -> None:
        """Half-close the stream and wait for telemetry's reply."""
        try:
            async with asyncio.timeout(self._write_timeout_s):
                await call.done_writing()
            async with asyncio.timeout(self._write_timeout_s):
                response: telemetry_pb2.ReportSamplesResponse = await call
            if response.rejected:
                _LOG.warning(
                    "telemetry rejected %d GPU samples; first: %s",
                    response.rejected,
                    response.first_rejection_reason,
                )
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError) as error:
            call.cancel()
            _LOG.warning("closing the GPU sample stream failed: %s", _describe(error))


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error) or type(error).__name__
