"""Calls to node agents: one reused channel per agent address, traced (a CLIENT span per call,
its context in the metadata, so the agent's SERVER span continues the controller's trace)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import grpc.aio
from opentelemetry import trace

from voltana.contract.instances import GpuRef
from voltana.rpc import RpcSecurity, create_channel, error_from_rpc
from voltana.v1 import agent_pb2, agent_pb2_grpc

if TYPE_CHECKING:
    from voltana.v1.agent_pb2_grpc import NodeAgentServiceAsyncStub

ChannelFactory = Callable[[str], grpc.aio.Channel]


@dataclass(frozen=True, slots=True)
class AppliedClock:
    """What the agent reports after a SetClocks."""

    requested_sm_clock_mhz: int
    applied_sm_clock_mhz: int
    measured_sm_clock_mhz: int
    clamped: bool
    lease_expires_at_s: float


class AgentClients:
    """Clock calls on node agents as ``holder``. Failed calls raise the matching VoltanaError
    (UnavailableError when the agent is down, FailedPreconditionError for lease conflicts...).

    ``security`` gives the control-plane token the clock calls need, and TLS; the default
    ``channel_factory`` traces the calls with ``tracer_provider`` (their trace context travels
    in the metadata).
    """

    def __init__(
        self,
        *,
        holder: str,
        timeout_s: float,
        security: RpcSecurity | None = None,
        channel_factory: ChannelFactory | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._holder = holder
        self._timeout_s = timeout_s
        self._channel_factory = channel_factory or functools.partial(
            create_channel, security=security, tracer_provider=tracer_provider
        )
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, NodeAgentServiceAsyncStub] = {}

    @property
    def addresses(self) -> list[str]:
        """Agents a channel is open to."""
        return sorted(self._channels)

    def _stub(self, address: str) -> NodeAgentServiceAsyncStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = self._channel_factory(address)
            self._channels[address] = channel
            stub = self._stubs[address] = agent_pb2_grpc.NodeAgentServiceStub(channel)
        return stub

    async def set_clocks(
        self, address: str, gpu_index: int, sm_clock_mhz: int, lease_ttl_ms: int, reason: str
    ) -> AppliedClock:
        request = agent_pb2.SetClocksRequest(
            gpu=agent_pb2.GpuSelector(gpu_index=gpu_index),
            sm_clock_mhz=sm_clock_mhz,
            lease_ttl_ms=lease_ttl_ms,
            requested_by=self._holder,
            reason=reason,
        )
        try:
            response = await self._stub(address).SetClocks(request, timeout=self._timeout_s)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        return AppliedClock(
            requested_sm_clock_mhz=response.requested_sm_clock_mhz,
            applied_sm_clock_mhz=response.applied_sm_clock_mhz,
            measured_sm_clock_mhz=response.measured_sm_clock_mhz,
            clamped=response.clamped,
            lease_expires_at_s=response.lease_expires_at_s,
        )

    async def renew_lease(self, address: str, gpu_index: int, ttl_ms: int) -> float:
        """Extend our lease on one GPU; returns its new expiry (agent's Unix time).

        FailedPreconditionError when we hold no live lease there (expired or taken).
        """
        request = agent_pb2.RenewLeaseRequest(
            gpu=agent_pb2.GpuSelector(gpu_index=gpu_index), ttl_ms=ttl_ms, requested_by=self._holder
        )
        try:
            response = await self._stub(address).RenewLease(request, timeout=self._timeout_s)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        return float(response.lease_expires_at_s)

    async def reset_clocks(self, address: str, gpu_index: int, reason: str) -> None:
        request = agent_pb2.ResetClocksRequest(
            gpu=agent_pb2.GpuSelector(gpu_index=gpu_index),
            requested_by=self._holder,
            reason=reason,
        )
        try:
            await self._stub(address).ResetClocks(request, timeout=self._timeout_s)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        self._stubs = {}
        for channel in channels.values():
            await channel.close()

    # --- an instance's GPUs (several for a tensor-parallel instance) -----------------------

    async def set_group_clocks(
        self, gpus: Sequence[GpuRef], sm_clock_mhz: int, lease_ttl_ms: int, reason: str
    ) -> AppliedClock:
        """Lock every GPU of an instance (they run at the pace of the slowest); what the first
        reports. The first failure is raised (the others' leases lapse unless renewed)."""
        results = await asyncio.gather(
            *(
                self.set_clocks(
                    gpu.agent_address, gpu.gpu_index, sm_clock_mhz, lease_ttl_ms, reason
                )
                for gpu in gpus
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        first = results[0]
        assert isinstance(first, AppliedClock)
        return first

    async def renew_group_lease(self, gpus: Sequence[GpuRef], ttl_ms: int) -> None:
        await _all(self.renew_lease(gpu.agent_address, gpu.gpu_index, ttl_ms) for gpu in gpus)

    async def reset_group_clocks(self, gpus: Sequence[GpuRef], reason: str) -> None:
        await _all(self.reset_clocks(gpu.agent_address, gpu.gpu_index, reason) for gpu in gpus)


async def _all(calls: Iterable[Awaitable[object]]) -> None:
    """Every call, concurrently; then the first failure, if any."""
    for result in await asyncio.gather(*calls, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result
