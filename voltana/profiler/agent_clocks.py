"""The profiled instance's GPUs through their node agent: clocks under a renewed lease, energy.

Clocks only ever change through the agent (SetClocks under a lease, renewed in the background,
ResetClocks at the end), so a profiler that dies leaves the GPUs to the agent's lease watchdog.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import grpc.aio

from voltana.errors import ConfigError, FailedPreconditionError, NotFoundError
from voltana.lifecycle import cancel_and_wait
from voltana.rpc import RpcSecurity, create_channel, error_from_rpc
from voltana.v1 import agent_pb2, agent_pb2_grpc, common_pb2

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupReading:
    """The instance's GPUs at one moment, summed: energy counters and power."""

    # The agent's timestamp (Unix seconds, the latest of the group's samples).
    timestamp_s: float
    energy_j: float
    power_w: float
    sm_clocks_mhz: tuple[int, ...]


class AgentClockControl:
    """Clocks and readings of ``gpu_indices`` on the agent at ``address``.

    Use ``async with``: leaving puts every GPU of the group back to default clocks, also when
    the profile was interrupted.
    """

    def __init__(
        self,
        address: str,
        gpu_indices: Sequence[int],
        *,
        security: RpcSecurity | None,
        holder: str,
        lease_ttl_ms: int = 10_000,
        timeout_s: float = 10.0,
    ) -> None:
        if not gpu_indices:
            raise ConfigError("profile at least one GPU")
        self._address = address
        self.gpu_indices = tuple(gpu_indices)
        self._security = security
        self._holder = holder
        self._ttl_ms = lease_ttl_ms
        self._timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: agent_pb2_grpc.NodeAgentServiceStub | None = None
        self._renewal: asyncio.Task[None] | None = None
        self._locked = False

    async def __aenter__(self) -> AgentClockControl:
        self._channel = create_channel(self._address, security=self._security, traced=False)
        self._stub = agent_pb2_grpc.NodeAgentServiceStub(self._channel)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # Shielded: an interrupted profile must still put the clocks back.
        await asyncio.shield(self._close())

    async def _close(self) -> None:
        try:
            await self.restore()
        finally:
            if self._channel is not None:
                await self._channel.close()
            self._channel = self._stub = None

    @property
    def _agent(self) -> agent_pb2_grpc.NodeAgentServiceStub:
        if self._stub is None:
            raise ConfigError("use AgentClockControl with `async with`")
        return self._stub

    async def _call(self, method: str, request: object) -> object:
        try:
            return await getattr(self._agent, method)(request, timeout=self._timeout_s)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error

    async def describe(self) -> tuple[list[agent_pb2.GpuInfo], str]:
        """The group's GPUs (ListGpus) and the node's driver version."""
        response = await self._call("ListGpus", agent_pb2.ListGpusRequest())
        assert isinstance(response, agent_pb2.ListGpusResponse)
        by_index = {gpu.gpu_index: gpu for gpu in response.gpus}
        missing = [index for index in self.gpu_indices if index not in by_index]
        if missing:
            raise NotFoundError(
                f"the agent at {self._address} controls no GPU {missing}; it has {sorted(by_index)}"
            )
        return [by_index[index] for index in self.gpu_indices], response.driver_version

    async def set_clock(self, sm_clock_mhz: int, reason: str) -> int:
        """Lock every GPU of the group at ``sm_clock_mhz``; returns the clock applied."""
        applied = 0
        # Set before the call: a SetClocks cut short (Ctrl-C, a lost reply) may still have
        # locked the GPU on the agent's side, and restore() must put it back.
        self._locked = True
        for gpu_index in self.gpu_indices:
            request = agent_pb2.SetClocksRequest(
                gpu=agent_pb2.GpuSelector(gpu_index=gpu_index),
                sm_clock_mhz=sm_clock_mhz,
                lease_ttl_ms=self._ttl_ms,
                requested_by=self._holder,
                reason=reason,
            )
            try:
                response = await self._call("SetClocks", request)
            except FailedPreconditionError as error:
                raise FailedPreconditionError(
                    f"GPU {gpu_index} is leased to someone else ({error}); stop the controller "
                    "(or anything else setting clocks on this instance) while profiling"
                ) from None
            assert isinstance(response, agent_pb2.SetClocksResponse)
            applied = response.applied_sm_clock_mhz
        if self._renewal is None:
            self._renewal = asyncio.create_task(self._renew(), name="profile-lease-renewal")
        return applied

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_ms / 3000.0)
            request = agent_pb2.RenewLeaseRequest(ttl_ms=self._ttl_ms, requested_by=self._holder)
            try:
                await self._call("RenewLease", request)
            except Exception as error:  # the next round retries; the lease outlives two misses
                _LOG.warning("renewing the clock lease failed: %s", error)

    async def restore(self) -> None:
        """Stop renewing and put every GPU of the group back to default clocks."""
        task, self._renewal = self._renewal, None
        await cancel_and_wait([task])
        if not self._locked or self._stub is None:
            return
        for gpu_index in self.gpu_indices:
            request = agent_pb2.ResetClocksRequest(
                gpu=agent_pb2.GpuSelector(gpu_index=gpu_index),
                requested_by=self._holder,
                reason="profile finished",
            )
            try:
                await self._call("ResetClocks", request)
            except Exception as error:
                _LOG.error(
                    "could not reset GPU %d (its lease lapses within %d ms): %s",
                    gpu_index,
                    self._ttl_ms,
                    error,
                )
        self._locked = False

    async def read(self) -> GroupReading:
        """One GetGpuSample of every GPU of the group, summed."""
        samples: list[common_pb2.GpuSample] = []
        for gpu_index in self.gpu_indices:
            request = agent_pb2.GetGpuSampleRequest(gpu=agent_pb2.GpuSelector(gpu_index=gpu_index))
            response = await self._call("GetGpuSample", request)
            assert isinstance(response, agent_pb2.GetGpuSampleResponse)
            samples.extend(response.samples)
        return GroupReading(
            timestamp_s=max(sample.timestamp_s for sample in samples),
            energy_j=sum(sample.energy_j for sample in samples),
            power_w=sum(sample.power_w for sample in samples),
            sm_clocks_mhz=tuple(sample.sm_clock_mhz for sample in samples),
        )
