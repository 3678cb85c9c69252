"""NodeAgentService over a ClockManager: proto in, typed call, proto out.

Errors are raised as typed VoltanaErrors; voltana.rpc's interceptor turns them into status
codes (InvalidClockError → INVALID_ARGUMENT, GpuNotFoundError → NOT_FOUND, GpuPermissionError →
PERMISSION_DENIED, lease conflicts → FAILED_PRECONDITION), so a bad request never takes the
server down. The clock-changing methods (AGENT_PRIVILEGED_METHODS) need the control-plane
token (voltana.rpc.auth, checked before any of this runs); leases belong to the caller's
holder id and authenticated principal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context

from voltana.errors import InvalidArgumentError
from voltana.gpu import GpuDevice, GpuError, GpuNotFoundError, GpuSample, read_gpu_sample
from voltana.rpc.auth import current_principal
from voltana.rpc.limits import check_id, check_text
from voltana.rpc.names import NODE_AGENT_SERVICE, method_names
from voltana.services.agent.clock import AgentClock
from voltana.services.agent.clock_manager import ClockManager, GpuClockStatus
from voltana.services.agent.settings import gpu_groups
from voltana.services.agent.sinks import gpu_sample_to_proto
from voltana.v1 import agent_pb2, agent_pb2_grpc

# Methods that change clocks or leases: they need the control-plane token.
AGENT_PRIVILEGED_METHODS = method_names(
    NODE_AGENT_SERVICE, "SetClocks", "ResetClocks", "RenewLease"
)
ANONYMOUS_HOLDER = "anonymous"

_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class NodeAgentServicer(agent_pb2_grpc.NodeAgentServiceServicer):
    def __init__(
        self,
        clocks: ClockManager,
        clock: AgentClock,
        *,
        gpu_keys: Mapping[int, str],
        simulated_gpus: frozenset[int],
        instance_gpu_indices: Mapping[str, int | Sequence[int]],
        energy_counters: frozenset[int] = frozenset(),
        driver_version: str = "",
    ) -> None:
        self._clocks = clocks
        self._clock = clock
        self._gpu_keys = dict(gpu_keys)
        self._simulated_gpus = simulated_gpus
        # Instance → its GPU indices (several for a tensor-parallel instance).
        self._instance_gpus = gpu_groups(instance_gpu_indices)
        # GPUs with a total-energy counter (read once at start: it does not change).
        self._energy_counters = energy_counters
        self._driver_version = driver_version
        # host:port reported to callers; the service sets it once the port is bound.
        self.agent_address = ""

    # --- helpers -------------------------------------------------------------------------

    @staticmethod
    def _holder(requested_by: str, reason: str = "") -> str:
        """The caller's holder id (checked), ANONYMOUS_HOLDER when it names none."""
        check_id(requested_by, "requested_by", required=False)
        check_text(reason, "reason")
        return requested_by or ANONYMOUS_HOLDER

    @staticmethod
    def _trace_context(context: _Context) -> Context:
        """The trace context clock-change spans start in.

        Normally the gRPC instrumentation's server span (current while the RPC runs), itself a
        child of the caller's span. When that span is not recorded (the global tracer provider
        is a no-op but the clock manager has a tracer of its own), the caller's context from
        the W3C headers (``traceparent``) in the metadata. Without either, an empty context:
        the span starts a new trace.
        """
        if trace.get_current_span().get_span_context().is_valid:
            return otel_context.get_current()
        carrier: dict[str, str] = {}
        for key, value in context.invocation_metadata() or ():
            if isinstance(value, str):  # binary ("-bin") headers carry no text context
                carrier[key.lower()] = value
        return propagate.extract(carrier)

    def _selection(self, request: Any) -> list[int] | None:
        """GPU indices a request's ``gpu`` selector names; None when it names none."""
        target = request.gpu.WhichOneof("target") if request.HasField("gpu") else None
        if target is None:
            return None
        if target == "instance_id":
            instance_id = request.gpu.instance_id
            check_id(instance_id, "gpu.instance_id")
            try:
                gpu_indices = list(self._instance_gpus[instance_id])
            except KeyError:
                known = sorted(self._instance_gpus)
                raise GpuNotFoundError(
                    f"no instance {instance_id!r} is bound to a GPU of this agent; known: {known}"
                ) from None
        else:
            gpu_indices = [request.gpu.gpu_index]
        for gpu_index in gpu_indices:
            self._clocks.device(gpu_index)  # NOT_FOUND for GPUs this agent does not control
        return gpu_indices

    def _selected_or_all(self, request: Any) -> list[int]:
        selection = self._selection(request)
        return list(self._clocks.devices) if selection is None else selection

    def _instances_on(self, gpu_index: int) -> list[str]:
        return sorted(
            instance for instance, indices in self._instance_gpus.items() if gpu_index in indices
        )

    def _clock_state(self, status: GpuClockStatus) -> agent_pb2.GpuClockState:
        lease = status.lease
        return agent_pb2.GpuClockState(
            gpu_index=status.gpu_index,
            current_sm_clock_mhz=status.current_sm_clock_mhz,
            locked=status.locked_sm_clock_mhz is not None,
            locked_sm_clock_mhz=status.locked_sm_clock_mhz or 0,
            lease_holder=lease.holder if lease else "",
            lease_expires_at_s=self._clock.unix_s(lease.expires_at_s) if lease else 0.0,
        )

    @staticmethod
    def _lease_ttl_s(ttl_ms: int) -> float | None:
        if ttl_ms < 0:
            raise InvalidArgumentError(f"lease TTL must be >= 0 ms, got {ttl_ms}")
        return ttl_ms / 1000.0 if ttl_ms else None

    async def _gpu_info(self, device: GpuDevice) -> agent_pb2.GpuInfo:
        supported = device.supported_sm_clocks_mhz()
        try:
            power_limit_w = await asyncio.to_thread(device.power_limit_w)
        except GpuError:
            power_limit_w = 0.0  # unknown; the proto says so with 0
        return agent_pb2.GpuInfo(
            gpu_index=device.index,
            uuid=device.uuid,
            name=device.name,
            gpu_key=self._gpu_keys.get(device.index, ""),
            supported_sm_clocks_mhz=supported,
            min_sm_clock_mhz=supported[0],
            max_sm_clock_mhz=supported[-1],
            power_limit_w=power_limit_w,
            instance_ids=self._instances_on(device.index),
            simulated=device.index in self._simulated_gpus,
            energy_counter_supported=device.index in self._energy_counters,
            default_sm_clock_mhz=device.default_sm_clock_mhz,
        )

    # --- RPCs ----------------------------------------------------------------------------

    async def ListGpus(
        self, request: agent_pb2.ListGpusRequest, context: _Context
    ) -> agent_pb2.ListGpusResponse:
        gpus = [await self._gpu_info(device) for device in self._clocks.devices.values()]
        return agent_pb2.ListGpusResponse(
            gpus=gpus, agent_address=self.agent_address, driver_version=self._driver_version
        )

    async def GetClocks(
        self, request: agent_pb2.GetClocksRequest, context: _Context
    ) -> agent_pb2.GetClocksResponse:
        statuses = [await self._clocks.status(index) for index in self._selected_or_all(request)]
        return agent_pb2.GetClocksResponse(clocks=[self._clock_state(s) for s in statuses])

    async def SetClocks(
        self, request: agent_pb2.SetClocksRequest, context: _Context
    ) -> agent_pb2.SetClocksResponse:
        holder = self._holder(request.requested_by, request.reason)
        selection = self._selection(request)
        if selection is None:
            raise InvalidArgumentError("a GPU selector (gpu_index or instance_id) is required")
        # A tensor-parallel instance runs at the pace of its slowest GPU: lock them all.
        changes = [
            await self._clocks.set_clock(
                gpu_index,
                request.sm_clock_mhz,
                holder=holder,
                ttl_s=self._lease_ttl_s(request.lease_ttl_ms),
                reason=request.reason,
                trace_context=self._trace_context(context),
                principal=current_principal(),
            )
            for gpu_index in selection
        ]
        change = changes[0]
        return agent_pb2.SetClocksResponse(
            gpu_index=change.gpu_index,
            requested_sm_clock_mhz=request.sm_clock_mhz,
            applied_sm_clock_mhz=change.applied_sm_clock_mhz,
            clamped=change.clamped,
            measured_sm_clock_mhz=change.measured_sm_clock_mhz,
            lease_expires_at_s=self._clock.unix_s(change.lease.expires_at_s),
            gpu_indices=[each.gpu_index for each in changes],
        )

    async def ResetClocks(
        self, request: agent_pb2.ResetClocksRequest, context: _Context
    ) -> agent_pb2.ResetClocksResponse:
        holder = self._holder(request.requested_by, request.reason)
        principal = current_principal()
        reason = f"requested by {holder}" + (f": {request.reason}" if request.reason else "")
        trace_context = self._trace_context(context)
        selected = self._selected_or_all(request)
        # All or nothing: refuse before resetting any when one is someone else's.
        self._clocks.check_releasable(selected, holder, principal)
        statuses = [
            await self._clocks.reset(index, reason, trace_context, (holder, principal))
            for index in selected
        ]
        return agent_pb2.ResetClocksResponse(clocks=[self._clock_state(s) for s in statuses])

    async def RenewLease(
        self, request: agent_pb2.RenewLeaseRequest, context: _Context
    ) -> agent_pb2.RenewLeaseResponse:
        renewed, expires_at_s = await self._clocks.renew(
            self._selection(request),
            holder=self._holder(request.requested_by),
            ttl_s=self._lease_ttl_s(request.ttl_ms),
            trace_context=self._trace_context(context),
            principal=current_principal(),
        )
        return agent_pb2.RenewLeaseResponse(
            gpu_indices=renewed,
            lease_expires_at_s=self._clock.unix_s(expires_at_s) if expires_at_s else 0.0,
        )

    async def GetGpuSample(
        self, request: agent_pb2.GetGpuSampleRequest, context: _Context
    ) -> agent_pb2.GetGpuSampleResponse:
        samples = []
        for gpu_index in self._selected_or_all(request):
            device = self._clocks.device(gpu_index)
            sample = await asyncio.to_thread(self._read_now, device)
            instances = self._instances_on(gpu_index)
            samples.append(
                gpu_sample_to_proto(
                    sample,
                    instance_id=instances[0] if instances else "",
                    agent_address=self.agent_address,
                )
            )
        return agent_pb2.GetGpuSampleResponse(samples=samples)

    def _read_now(self, device: GpuDevice) -> GpuSample:
        # Stamped in the worker thread, just before the reads: a stamp taken before the
        # thread hop would lag the energy reading by however long the hop took.
        return read_gpu_sample(device, self._clock.unix_s(self._clock.now_s()))
