"""Async client of TelemetryService for the router, controller, agents and simulators.

Failed calls raise the VoltanaError their status stands for (voltana.rpc.error_from_rpc):
InvalidArgumentError for rejected input, UnavailableError when telemetry is down, ...
"""

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from voltana.contract.instances import InstanceInfo
from voltana.contract.state import ClusterSnapshot, InstanceState, Phase, SloTarget
from voltana.gpu import GpuSample
from voltana.rpc import RpcSecurity, create_channel, error_from_rpc, wait_until_ready
from voltana.services.telemetry.convert import (
    completion_to_proto,
    gpu_sample_to_proto,
    infos_from_snapshot_proto,
    phase_to_proto,
    register_request_to_proto,
    report_result_from_proto,
    router_shares_from_proto,
    sample_to_proto,
    slo_to_proto,
    snapshot_from_proto,
    window_report_from_proto,
)
from voltana.services.telemetry.records import (
    Completion,
    PendingPlacement,
    PlacementEvent,
    ReportResult,
    RouterShare,
    WindowReport,
)
from voltana.v1 import common_pb2, telemetry_pb2, telemetry_pb2_grpc

ItemT = TypeVar("ItemT")
MessageT = TypeVar("MessageT")

DEFAULT_TIMEOUT_S = 5.0


async def _converted(
    items: Iterable[ItemT] | AsyncIterable[ItemT], convert: Callable[[ItemT], MessageT]
) -> AsyncIterator[MessageT]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield convert(item)
    else:
        for item in items:
            yield convert(item)


class TelemetryClient:
    """One channel to telemetry at ``address`` ("host:port"); close it (or use ``async with``).

    Unary calls time out after ``timeout_s``; report and watch streams have no deadline.
    ``security`` gives the control-plane token that registration and reports need, and TLS;
    without it only reads (snapshots, watches, aggregates) are allowed.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        channel: grpc.aio.Channel | None = None,
        security: RpcSecurity | None = None,
    ) -> None:
        self._owns_channel = channel is None
        # Telemetry traffic is background work on timers: not traced (see create_channel).
        self._channel = (
            channel
            if channel is not None
            else create_channel(address, security=security, traced=False)
        )
        self._stub = telemetry_pb2_grpc.TelemetryServiceStub(self._channel)
        self._timeout_s = timeout_s

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> TelemetryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_until_ready(self, timeout_s: float) -> None:
        """Raise UnavailableError unless the service can be reached within ``timeout_s``."""
        await wait_until_ready(self._channel, timeout_s)

    async def _call(self, call: Any) -> Any:
        try:
            return await call
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error

    # Registration.

    async def register_instance(self, info: InstanceInfo) -> bool:
        """Announce (or update) an instance; True when it was new."""
        request = register_request_to_proto(info)
        response = await self._call(self._stub.RegisterInstance(request, timeout=self._timeout_s))
        return bool(response.created)

    async def unregister_instance(self, instance_id: str) -> None:
        """Forget an instance; NotFoundError when it was not registered."""
        request = telemetry_pb2.UnregisterInstanceRequest(instance_id=instance_id)
        await self._call(self._stub.UnregisterInstance(request, timeout=self._timeout_s))

    async def set_cluster_slo(self, slo: SloTarget) -> float:
        """Change the cluster SLO every router and controller follows; returns when it was
        set on telemetry's clock (snapshots taken before still carry the previous one)."""
        request = telemetry_pb2.SetClusterSloRequest(slo=slo_to_proto(slo))
        response = await self._call(self._stub.SetClusterSlo(request, timeout=self._timeout_s))
        return float(response.set_at_s)

    # Reports.

    async def report_instance_samples(
        self, states: Iterable[InstanceState] | AsyncIterable[InstanceState]
    ) -> ReportResult:
        """Stream load reports of registered instances; returns once ``states`` is exhausted.

        Only the load fields travel (phase and gpu key come from the registration, clock and
        power from GPU samples); an arrival rate of 0 lets telemetry derive it.
        """
        call = self._stub.ReportInstanceSamples(_converted(states, sample_to_proto))
        return report_result_from_proto(await self._call(call))

    async def report_gpu_samples(
        self,
        samples: Iterable[GpuSample] | AsyncIterable[GpuSample],
        *,
        agent_address: str = "",
        instance_ids_by_gpu: Mapping[int, str] | None = None,
    ) -> ReportResult:
        """Stream GPU readings; each is attributed to ``instance_ids_by_gpu[gpu_index]`` or,
        without an entry, to the instance registered on (``agent_address``, ``gpu_index``)."""
        by_gpu = dict(instance_ids_by_gpu or {})

        def convert(sample: GpuSample) -> common_pb2.GpuSample:
            return gpu_sample_to_proto(
                sample,
                instance_id=by_gpu.get(sample.gpu_index, ""),
                agent_address=agent_address,
            )

        call = self._stub.ReportGpuSamples(_converted(samples, convert))
        return report_result_from_proto(await self._call(call))

    async def report_completion(self, completion: Completion) -> None:
        request = completion_to_proto(completion)
        await self._call(self._stub.ReportCompletion(request, timeout=self._timeout_s))

    async def report_completions(self, completions: Sequence[Completion]) -> dict[int, str]:
        """Report several records in one call; returns the refused ones (index in
        ``completions`` → why), which sending again would not help."""
        request = telemetry_pb2.ReportCompletionsRequest(
            records=[completion_to_proto(c) for c in completions]
        )
        response: telemetry_pb2.ReportCompletionsResponse = await self._call(
            self._stub.ReportCompletions(request, timeout=self._timeout_s)
        )
        return {rejection.index: rejection.reason for rejection in response.rejected}

    async def report_placements(
        self,
        placements: Sequence[PlacementEvent],
        *,
        router_id: str = "",
        pending: Sequence[PendingPlacement] | None = None,
    ) -> int:
        """Count these placements into the instances' arrival rates; returns how many. With
        ``router_id`` they are counted as that router's, and ``pending`` (when given) is its
        whole in-flight share now."""
        request = telemetry_pb2.ReportPlacementsRequest(
            router_id=router_id,
            pending=[
                telemetry_pb2.PendingPlacement(
                    instance_id=p.instance_id,
                    tokens=p.tokens,
                    visible_from_s=p.visible_from_s or 0.0,
                )
                for p in pending or ()
            ],
            placements=[
                telemetry_pb2.PlacementRecord(
                    request_id=p.request_id,
                    prefill_instance_id=p.prefill_instance_id,
                    decode_instance_id=p.decode_instance_id,
                    input_tokens=p.input_tokens,
                    placed_at_s=p.placed_at_s,
                )
                for p in placements
            ],
        )
        response: telemetry_pb2.ReportPlacementsResponse = await self._call(
            self._stub.ReportPlacements(request, timeout=self._timeout_s)
        )
        return response.accepted

    # Snapshots and aggregates.

    async def _snapshot_message(
        self, phase: Phase | None, instance_ids: Iterable[str]
    ) -> common_pb2.ClusterSnapshot:
        request = telemetry_pb2.GetSnapshotRequest(
            phase=phase_to_proto(phase), instance_ids=list(instance_ids)
        )
        message: common_pb2.ClusterSnapshot = await self._call(
            self._stub.GetSnapshot(request, timeout=self._timeout_s)
        )
        return message

    async def snapshot(
        self, *, phase: Phase | None = None, instance_ids: Iterable[str] = ()
    ) -> ClusterSnapshot:
        """Latest state of every instance (of ``phase``, among ``instance_ids`` when given)."""
        return snapshot_from_proto(await self._snapshot_message(phase, instance_ids))

    async def snapshot_with_endpoints(
        self, *, phase: Phase | None = None, instance_ids: Iterable[str] = ()
    ) -> tuple[ClusterSnapshot, dict[str, InstanceInfo]]:
        """The snapshot plus each registered instance's endpoint (what the router dials)."""
        message = await self._snapshot_message(phase, instance_ids)
        return snapshot_from_proto(message), infos_from_snapshot_proto(message)

    async def watch_with_endpoints(
        self,
        interval_ms: int = 0,
        *,
        phase: Phase | None = None,
        instance_ids: Iterable[str] = (),
    ) -> AsyncGenerator[tuple[ClusterSnapshot, dict[str, InstanceInfo]], None]:
        """Like ``watch``, with endpoints."""
        stream = self.watch_with_shares(interval_ms, phase=phase, instance_ids=instance_ids)
        try:
            async for snapshot, infos, _ in stream:
                yield snapshot, infos
        finally:
            await stream.aclose()

    async def watch_with_shares(
        self,
        interval_ms: int = 0,
        *,
        phase: Phase | None = None,
        instance_ids: Iterable[str] = (),
    ) -> AsyncGenerator[tuple[ClusterSnapshot, dict[str, InstanceInfo], list[RouterShare]], None]:
        """Like ``watch``, with endpoints and each router's share (active-active routers)."""
        request = telemetry_pb2.WatchSnapshotsRequest(
            interval_ms=interval_ms, phase=phase_to_proto(phase), instance_ids=list(instance_ids)
        )
        call = self._stub.WatchSnapshots(request)
        try:
            async for message in call:
                yield (
                    snapshot_from_proto(message),
                    infos_from_snapshot_proto(message),
                    router_shares_from_proto(message),
                )
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        finally:
            call.cancel()

    async def watch(
        self,
        interval_ms: int = 0,
        *,
        phase: Phase | None = None,
        instance_ids: Iterable[str] = (),
    ) -> AsyncGenerator[ClusterSnapshot, None]:
        """A snapshot now, then one after each change (at most every ``interval_ms``; 0 = the
        server's default) until the caller stops iterating (``aclose()`` ends the stream)."""
        stream = self.watch_with_endpoints(interval_ms, phase=phase, instance_ids=instance_ids)
        try:
            async for snapshot, _ in stream:
                yield snapshot
        finally:
            await stream.aclose()

    async def window_report(
        self, window_s: float = 0.0, *, instance_ids: Iterable[str] = ()
    ) -> WindowReport:
        """Rolling-window aggregates per instance and for the selection (0 s = the server's
        default window; no ids = every instance)."""
        request = telemetry_pb2.GetAggregatesRequest(
            window_s=window_s, instance_ids=list(instance_ids)
        )
        response = await self._call(self._stub.GetAggregates(request, timeout=self._timeout_s))
        return window_report_from_proto(response)
