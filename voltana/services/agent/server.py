"""AgentService: the node agent as a start/stop-able in-process server."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from voltana.errors import ConfigError
from voltana.gpu import (
    GpuDevice,
    GpuError,
    NvmlLibrary,
    SharedSimulatedGpu,
    SimulatedGpu,
    energy_counter_supported,
)
from voltana.hardware import get_gpu
from voltana.hardware.gpu_names import catalog_key_for_device_name
from voltana.lifecycle import AsyncService
from voltana.observability.prometheus import MetricsServer, start_metrics_server
from voltana.rpc import dialable_address, set_serving, start_grpc_server, stop_grpc_server
from voltana.rpc.names import NODE_AGENT_SERVICE
from voltana.services.agent.clock import AgentClock, SystemClock
from voltana.services.agent.clock_manager import ClockManager
from voltana.services.agent.failsafe import FailsafeWatchdog, watchdog_command
from voltana.services.agent.metrics import AgentCollector
from voltana.services.agent.sampler import GpuSampler
from voltana.services.agent.servicer import AGENT_PRIVILEGED_METHODS, NodeAgentServicer
from voltana.services.agent.settings import AgentSettings
from voltana.services.agent.sinks import GpuSampleSink, GrpcGpuSampleSink
from voltana.v1 import agent_pb2_grpc

_LOG = logging.getLogger(__name__)


def gpu_key_for(device: GpuDevice, configured_key: str = "") -> str:
    """Catalog key of a device: the simulated spec's, the configured one, or its NVML name's
    (H100/H200 name variants included); "" for a GPU outside the catalog."""
    if isinstance(device, SimulatedGpu):
        return device.spec.key
    if configured_key:
        return configured_key
    return catalog_key_for_device_name(device.name)


def _cancel_requests() -> int:
    """How many cancel() requests of the running task are pending (see Task.cancelling)."""
    current = asyncio.current_task()
    return current.cancelling() if current is not None else 0


async def _close_sink(sink: GpuSampleSink, cancel_requests_before: int) -> None:
    """Close the sample sink; teardown failures are logged, never raised out of stop().

    ``cancel_requests_before``: the running task's pending cancel() requests when stop()
    began. More than that means stop()'s caller cancelled it, and that must propagate.
    """
    try:
        await sink.close()
    except asyncio.CancelledError:
        if _cancel_requests() > cancel_requests_before:
            raise
        # The sink's own, e.g. its stream's call was cancelled with a write in flight.
        _LOG.debug("closing the GPU sample sink was cancelled under us", exc_info=True)
    except grpc.RpcError:
        _LOG.debug("closing the GPU sample sink failed", exc_info=True)
    except Exception:  # a sink bug must not keep stop() from finishing; show its traceback
        _LOG.warning("closing the GPU sample sink failed", exc_info=True)


class AgentService(AsyncService):
    """Serves NodeAgentService for the GPUs in ``settings`` (or the ``devices`` given).

    ``start`` resets every GPU to default clocks (a crashed predecessor may have left them
    locked), binds the port and starts the lease watchdog and the sampler (which streams to
    telemetry with a telemetry address or a ``sink``). ``stop`` stops serving first, then
    resets every GPU. ``tracer_provider`` (default: the global one) traces its RPCs and clock
    changes; ``settings.metrics_listen_address`` serves Prometheus metrics.
    """

    def __init__(
        self,
        settings: AgentSettings,
        *,
        devices: Sequence[GpuDevice] | None = None,
        clock: AgentClock | None = None,
        sink: GpuSampleSink | None = None,
        nvml: Any = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._settings = settings
        self._given_devices = list(devices) if devices is not None else None
        self._clock: AgentClock = clock or SystemClock()
        self._given_sink = sink
        self._nvml_module = nvml
        self._nvml: NvmlLibrary | None = None
        self._devices: list[GpuDevice] = []
        self._clocks: ClockManager | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._port: int | None = None
        self._sink: GpuSampleSink | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._tracer_provider = tracer_provider
        self._sampler: GpuSampler | None = None
        self._failsafe: FailsafeWatchdog | None = None
        self._gpu_keys: dict[int, str] = {}
        self.metrics_registry = CollectorRegistry(auto_describe=True)
        self.metrics_registry.register(
            AgentCollector(
                latest_samples=lambda: self._sampler.latest if self._sampler else {},
                lease_state=self._lease_state,
                gpu_indices=lambda: sorted(device.index for device in self._devices),
                instance_ids_by_gpu=self._instance_ids_by_gpu(),
                gpu_keys=lambda: self._gpu_keys,
                now_s=self._clock.now_s,
                unix_s=self._clock.unix_s,
            )
        )
        self._metrics_server: MetricsServer | None = None

    @property
    def settings(self) -> AgentSettings:
        return self._settings

    @property
    def port(self) -> int:
        if self._port is None:
            raise ConfigError("the agent is not started")
        return self._port

    @property
    def address(self) -> str:
        """host:port to reach the running agent at (loopback when bound to all interfaces)."""
        return dialable_address(self._settings.listen_address, self.port)

    @property
    def advertised_address(self) -> str:
        return self._settings.advertise_address or self.address

    @property
    def metrics_url(self) -> str | None:
        """``http://host:port/metrics`` while metrics are served, else None."""
        return self._metrics_server.url if self._metrics_server is not None else None

    def _lease_state(self, gpu_index: int) -> tuple[Any, int | None]:
        if self._clocks is None:
            return None, None
        return self._clocks.lease_state(gpu_index)

    @property
    def devices(self) -> list[GpuDevice]:
        return list(self._devices)

    def _open_devices(self) -> list[GpuDevice]:
        settings = self._settings
        if settings.backend == "sim":
            spec = get_gpu(settings.sim_gpu_key)
            indices = settings.gpu_indices or (0,)
            return [SimulatedGpu(spec, index, now_s=self._clock.now_s) for index in indices]
        if settings.backend == "sim-shared":
            spec = get_gpu(settings.sim_gpu_key)
            return [
                SharedSimulatedGpu(spec, index, state_dir=settings.sim_state_dir)
                for index in settings.gpu_indices or (0,)
            ]
        self._nvml = NvmlLibrary(self._nvml_module)
        self._nvml.open()
        return list(self._nvml.devices(settings.gpu_indices or None))

    def _instance_ids_by_gpu(self) -> dict[int, str]:
        # Several instances on one GPU are unusual; samples name the first, alphabetically.
        by_gpu: dict[int, str] = {}
        for instance_id, gpu_indices in sorted(self._settings.instance_gpu_groups.items()):
            for gpu_index in gpu_indices:
                by_gpu.setdefault(gpu_index, instance_id)
        return by_gpu

    def _energy_counters(self) -> frozenset[int]:
        """GPUs with a working total-energy counter."""
        indices = set()
        for device in self._devices:
            try:
                if energy_counter_supported(device):
                    indices.add(device.index)
            except GpuError as error:
                _LOG.warning("cannot read the energy counter of GPU %d: %s", device.index, error)
        return frozenset(indices)

    def _driver_version(self) -> str:
        if self._nvml is None:
            simulated = all(isinstance(device, SimulatedGpu) for device in self._devices)
            return "simulated" if simulated else ""
        try:
            return self._nvml.driver_version()
        except GpuError as error:
            _LOG.warning("cannot read the driver version: %s", error)
            return ""

    async def start(self) -> None:
        if self._server is not None:
            raise ConfigError("the agent is already started")
        settings = self._settings
        try:
            self._devices = (
                self._given_devices if self._given_devices is not None else self._open_devices()
            )
            self._check_bindings()
            self._clocks = ClockManager(
                self._devices,
                self._clock,
                default_lease_ttl_s=settings.default_lease_ttl_s,
                max_lease_ttl_s=settings.max_lease_ttl_s,
                readback_timeout_s=settings.readback_timeout_ms / 1000.0,
                readback_poll_s=settings.readback_poll_ms / 1000.0,
                tracer=trace.get_tracer(
                    "voltana.services.agent", tracer_provider=self._tracer_provider
                ),
                lease_listener=self._lease_changed,
            )
            if settings.reset_on_start:
                # Failures are logged; an agent without clock rights still serves readings.
                await self._clocks.reset_all("agent starting")
            await self._start_failsafe()
            self._gpu_keys = {d.index: gpu_key_for(d, settings.gpu_key) for d in self._devices}
            servicer = NodeAgentServicer(
                self._clocks,
                self._clock,
                gpu_keys=self._gpu_keys,
                simulated_gpus=frozenset(
                    d.index for d in self._devices if isinstance(d, SimulatedGpu)
                ),
                instance_gpu_indices=settings.instance_gpu_indices,
                energy_counters=self._energy_counters(),
                driver_version=self._driver_version(),
            )
            register = functools.partial(
                agent_pb2_grpc.add_NodeAgentServiceServicer_to_server, servicer
            )
            started = await start_grpc_server(
                settings.listen_address,
                [register],
                [NODE_AGENT_SERVICE],
                health_servicer=self._health,
                security=settings.security,
                privileged_methods=AGENT_PRIVILEGED_METHODS,
                tracer_provider=self._tracer_provider,
            )
            self._server, self._port = started.server, started.port
            servicer.agent_address = self.advertised_address
            self._tasks.append(asyncio.create_task(self._clocks.run_watchdog()))
            self._start_sampler()
            self._metrics_server = await start_metrics_server(
                self.metrics_registry, settings.metrics_listen_address
            )
        except BaseException:
            if self._server is not None:
                await stop_grpc_server(self._server, 0)
                self._server = None
            await self._release()
            raise
        _LOG.info(
            "node agent %s serving %d %s GPU(s) on %s",
            settings.node_name or "(unnamed)",
            len(self._devices),
            settings.backend if self._given_devices is None else "given",
            self.address,
        )

    def _lease_changed(self, gpu_index: int, expires_at_s: float | None) -> None:
        if self._failsafe is not None:
            self._failsafe.lease_changed(gpu_index, expires_at_s)

    async def _start_failsafe(self) -> None:
        """Start the watchdog that resets the GPUs if this process dies (GPUs that outlive it:
        NVML or shared simulated ones opened from settings)."""
        settings = self._settings
        if (
            not settings.failsafe_watchdog
            or self._given_devices is not None
            or settings.backend not in ("nvml", "sim-shared")
        ):
            return
        failsafe = FailsafeWatchdog(
            watchdog_command(
                settings.backend,
                [device.index for device in self._devices],
                sim_gpu_key=settings.sim_gpu_key,
                sim_state_dir=settings.sim_state_dir,
                grace_s=settings.failsafe_grace_s,
            ),
            self._clock,
        )
        await failsafe.start()
        self._failsafe = failsafe

    @property
    def failsafe_pid(self) -> int | None:
        """Process id of the fail-safe watchdog (None when none runs)."""
        return self._failsafe.pid if self._failsafe is not None else None

    def _check_bindings(self) -> None:
        indices = {device.index for device in self._devices}
        unbound = {
            instance: group
            for instance, group in self._settings.instance_gpu_groups.items()
            if not set(group) <= indices
        }
        if unbound:
            raise ConfigError(f"instances bound to GPUs this agent does not have: {unbound}")

    def _start_sampler(self) -> None:
        settings = self._settings
        sink = self._given_sink
        if sink is None and settings.telemetry_address:
            sink = GrpcGpuSampleSink(
                settings.telemetry_address,
                agent_address=self.advertised_address,
                instance_ids_by_gpu=self._instance_ids_by_gpu(),
                security=settings.security,
            )
        self._sink = sink
        # Runs without a sink too: /metrics shows its latest readings.
        sampler = GpuSampler(
            self._devices,
            sink,
            self._clock,
            settings.sample_interval_ms / 1000.0,
            unreadable_listener=self._unreadable_changed,
        )
        self._sampler = sampler
        self._tasks.append(asyncio.create_task(sampler.run()))

    async def _unreadable_changed(self, unreadable: frozenset[int]) -> None:
        # NOT_SERVING while a GPU cannot be read (fallen off the bus, driver gone): an
        # orchestrator or `voltana health` sees an agent that cannot vouch for its GPUs.
        if unreadable:
            _LOG.error(
                "GPU(s) %s unreadable: health NOT_SERVING until they read", sorted(unreadable)
            )
        else:
            _LOG.info("every GPU reads again: health SERVING")
        if self._server is not None:
            await set_serving(self._health, [NODE_AGENT_SERVICE], not unreadable)

    async def stop(self) -> None:
        """Stop serving, then reset every GPU to default clocks and release NVML."""
        if self._server is None:
            return
        await stop_grpc_server(
            self._server, self._settings.shutdown_grace_s, health_servicer=self._health
        )
        self._server = None
        await self._release()
        _LOG.info("node agent stopped; GPUs back at default clocks")

    async def _release(self) -> None:
        # Compared with later counts, not just "> 0": stop() may run as the cleanup of a task
        # that was itself cancelled earlier, and that old request must not abort the cleanup.
        cancel_requests_before = _cancel_requests()
        metrics_server, self._metrics_server = self._metrics_server, None
        if metrics_server is not None:
            await metrics_server.stop()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                # We cancelled the task; swallow that, but not a cancellation of stop() itself.
                if _cancel_requests() > cancel_requests_before:
                    raise
        if self._clocks is not None:
            await self._clocks.reset_all("agent stopping")
            self._clocks = None
        failsafe, self._failsafe = self._failsafe, None
        if failsafe is not None:
            await failsafe.stop()
        sink, self._sink = self._sink, None
        if sink is not None:
            await _close_sink(sink, cancel_requests_before)
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None
        self._port = None
