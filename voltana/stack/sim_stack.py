"""The whole Voltana stack in one process on loopback, over simulated GPUs and engines.

Per instance: a ``SimulatedGpu``, a simulated SGLang engine driving it, and a node agent
(sim backend) holding the *same* GPU object, so a clock the controller pushes through the agent
changes how fast the engine runs and how much power it draws. Around them: telemetry (memory or
Redis), the frequency controller and the router. Every server is the real gRPC/HTTP server the
deployment runs, started in process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from opentelemetry import trace

from voltana.contract.state import Phase
from voltana.engine import ScaledClock, SimEngine, SimEngineSettings
from voltana.errors import FailedPreconditionError, UnavailableError
from voltana.gpu import SimulatedGpu
from voltana.lifecycle import AsyncService
from voltana.perf.model import PerformanceModel
from voltana.perf.selection import resolve_physics
from voltana.services.agent import AgentService, AgentSettings
from voltana.services.controller import ControllerService, ControllerSettings
from voltana.services.router import (
    NoInstanceAvailableError,
    RouterService,
    RouterSettings,
    build_routing_policy,
)
from voltana.services.telemetry import (
    GpuRef,
    InstanceInfo,
    TelemetryClient,
    TelemetryService,
    TelemetrySettings,
)
from voltana.stack.ports import require_free_ports
from voltana.stack.registration import InstanceRegistration
from voltana.stack.settings import METRICS_PORTS_BEFORE_AGENTS, SimStackSettings
from voltana.stack.sinks import TelemetryInstanceSink

_LOG = logging.getLogger(__name__)
# Builds the tracer provider of one in-process service: (service.name, service.instance.id).
TracerProviders = Callable[[str, str | None], trace.TracerProvider | None]
_ServiceT = TypeVar("_ServiceT")
_READY_POLL_S = 0.02
CONTROLLER_ID = "controller@voltana-up"


@dataclass
class StackInstance:
    """One serving instance of the stack: its GPU(s) (one per TP rank), engine and node agent."""

    instance_id: str
    phase: Phase
    gpus: tuple[SimulatedGpu, ...]
    engine: SimEngine
    agent: AgentService | None = None

    @property
    def gpu(self) -> SimulatedGpu:
        """Its first GPU."""
        return self.gpus[0]

    def info(self) -> InstanceInfo:
        """What telemetry (and through it the router and controller) knows of this instance."""
        engine = self.engine
        is_prefill = self.phase is Phase.PREFILL
        agent_address = self.agent.advertised_address if self.agent is not None else ""
        return InstanceInfo(
            instance_id=self.instance_id,
            phase=self.phase,
            gpu_key=self.gpu.spec.key,
            engine_url=engine.url,
            bootstrap_host=engine.bootstrap_host if is_prefill else "",
            bootstrap_port=engine.bootstrap_port if is_prefill else 0,
            agent_address=agent_address,
            gpu_index=self.gpu.index,
            kv_tokens_capacity=engine.core.kv_capacity_tokens,
            max_running_requests=engine.settings.max_running_requests,
            gpus=(
                tuple(GpuRef(agent_address, gpu.index) for gpu in self.gpus)
                if agent_address and len(self.gpus) > 1
                else ()
            ),
        )


class SimStack(AsyncService):
    """``await start()`` brings everything up (and waits until the router sees every instance);
    ``await stop()`` takes it down in reverse order, leaving every GPU at its default clock.

    Tracing: ``tracer_providers(service_name, instance_id)`` gives each service its own
    provider, so its spans carry its own ``service.name`` (``voltana-router``,
    ``voltana-telemetry``, ``voltana-controller``, ``voltana-agent`` and ``voltana-engine`` per
    instance; see TracingHandle.provider_for); ``tracer_provider`` is one for every service;
    with neither, services use the global provider.
    """

    def __init__(
        self,
        settings: SimStackSettings,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        tracer_providers: TracerProviders | None = None,
    ) -> None:
        self.settings = settings
        self._tracer_provider = tracer_provider
        self._tracer_providers = tracer_providers
        self.clock = ScaledClock(settings.speedup)
        # The simulated GPUs' physics, which the policies also use: the analytical model, or a
        # measured profile (its GPU, model and TP then replace the settings').
        self.physics = resolve_physics(
            gpu_key=settings.gpu_key,
            model_key=settings.model_key,
            tensor_parallel=settings.tp,
            model_config_path=settings.model_config_path,
            profile_path=settings.profile_path,
        )
        self.perf: PerformanceModel = self.physics.perf
        self.telemetry: TelemetryService | None = None
        self.controller: ControllerService | None = None
        self.router: RouterService | None = None
        # Every router (active-active, sharing placements through telemetry); router is the
        # first.
        self.routers: list[RouterService] = []
        # Kept after stop(), so callers can check the GPUs went back to default clocks.
        self.instances: list[StackInstance] = []
        self._telemetry_client: TelemetryClient | None = None
        # Stop actions of what started, run last-in first-out.
        self._stoppers: list[tuple[str, Callable[[], Awaitable[None]]]] = []

    # ---- addresses ---------------------------------------------------------------------------

    @property
    def router_address(self) -> str:
        return self._started(self.router, "router").address

    @property
    def router_addresses(self) -> list[str]:
        """Every router's gRPC address (what an SDK client with several targets takes)."""
        self._started(self.router, "router")
        return [router.address for router in self.routers]

    @property
    def telemetry_address(self) -> str:
        return self._started(self.telemetry, "telemetry").address

    @property
    def controller_address(self) -> str:
        return self._started(self.controller, "controller").address

    @property
    def addresses(self) -> dict[str, str]:
        """Every address, router first (what clients connect to), then the control plane,
        then per instance its engine URL, KV bootstrap endpoint (prefill) and node agent;
        each service's Prometheus endpoint (``<service>.metrics``) follows the service."""
        self._started(self.router, "router")
        telemetry = self._started(self.telemetry, "telemetry")
        controller = self._started(self.controller, "controller")
        result: dict[str, str] = {}
        for index, router in enumerate(self.routers):
            name = "router" if index == 0 else f"router-{index}"
            result[name] = router.address
            if router.http_url is not None:
                result[f"{name}.http"] = router.http_url
            self._add_metrics(result, name, router.metrics_url)
        result["telemetry"] = telemetry.address
        self._add_metrics(result, "telemetry", telemetry.metrics_url)
        result["controller"] = controller.address
        self._add_metrics(result, "controller", controller.metrics_url)
        for instance in self.instances:
            info = instance.info()
            result[f"{instance.instance_id}.engine"] = info.engine_url
            if info.bootstrap_port:
                result[f"{instance.instance_id}.bootstrap"] = (
                    f"{info.bootstrap_host}:{info.bootstrap_port}"
                )
            result[f"{instance.instance_id}.agent"] = info.agent_address
            if instance.agent is not None:
                self._add_metrics(
                    result, f"{instance.instance_id}.agent", instance.agent.metrics_url
                )
        return result

    @staticmethod
    def _add_metrics(addresses: dict[str, str], service: str, url: str | None) -> None:
        if url is not None:
            addresses[f"{service}.metrics"] = url

    def _provider(
        self, service: str, instance_id: str | None = None
    ) -> trace.TracerProvider | None:
        if self._tracer_providers is not None:
            return self._tracer_providers(service, instance_id)
        return self._tracer_provider

    @staticmethod
    def _started(service: _ServiceT | None, name: str) -> _ServiceT:
        if service is None:
            raise FailedPreconditionError(f"the stack's {name} is not started")
        return service

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._stoppers:
            raise FailedPreconditionError("the stack is already started")
        self.instances = []
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        _LOG.info(
            "stack up: %s %s %s, policy %s, router on %s",
            self.settings.shape,
            self.settings.gpu_key,
            self.settings.model_key,
            self.settings.policy,
            self.router_address,
        )

    async def _start(self) -> None:
        settings = self.settings
        router_settings = self._router_settings("127.0.0.1:1")
        build_routing_policy(router_settings)  # an unknown policy fails before anything binds
        require_free_ports(settings.host, settings.fixed_ports())  # so does a busy port
        telemetry = TelemetryService(
            TelemetrySettings(
                listen_address=settings.address(settings.telemetry_port),
                redis_url=settings.redis_url,
                redis_password=settings.redis_password,
                redis_key_prefix=settings.redis_key_prefix,
                slo=settings.slo,
                watch_min_interval_ms=min(
                    50, settings.control_interval_ms, settings.snapshot_interval_ms
                ),
                metrics_listen_address=settings.metrics_address(1),
                security=settings.security,
            ),
            tracer_provider=self._provider("voltana-telemetry"),
        )
        await telemetry.start()
        self.telemetry = telemetry
        self._stoppers.append(("telemetry", telemetry.stop))
        client = TelemetryClient(telemetry.address, security=settings.security)
        self._telemetry_client = client
        self._stoppers.append(("telemetry client", client.close))

        phases = (
            [Phase.PREFILL] * settings.prefill
            + [Phase.DECODE] * settings.decode
            + [Phase.UNIFIED] * settings.unified
        )
        counters = dict.fromkeys(Phase, 0)
        tp = self.physics.model.tensor_parallel
        for position, phase in enumerate(phases):
            instance_id = f"{phase.value}-{counters[phase]}"
            counters[phase] += 1
            gpu_indices = tuple(range(position * tp, (position + 1) * tp))
            await self._start_instance(instance_id, phase, gpu_indices, client)

        controller = ControllerService(
            ControllerSettings(
                telemetry_address=telemetry.address,
                listen_address=settings.address(settings.controller_port),
                policy=settings.policy,
                slo=settings.slo,
                gpu_key=settings.gpu_key,
                model_key=settings.model_key,
                tensor_parallel=settings.tp,
                model_config_path=settings.model_config_path,
                profile_path=settings.profile_path,
                control_interval_ms=settings.control_interval_ms,
                lease_ttl_ms=settings.lease_ttl_ms,
                controller_id=CONTROLLER_ID,
                metrics_listen_address=settings.metrics_address(2),
                security=settings.security,
            ),
            tracer_provider=self._provider("voltana-controller"),
        )
        await controller.start()
        self.controller = controller
        self._stoppers.append(("controller", controller.stop))

        for index in range(settings.routers):
            router = RouterService(
                self._router_settings(
                    telemetry.address,
                    controller.address if settings.placement_notices else "",
                    index,
                ),
                tracer_provider=self._provider("voltana-router"),
            )
            await router.start()
            self.routers.append(router)
            self.router = self.routers[0]
            self._stoppers.append((router.router_id, router.stop))
        for router in self.routers:
            await self._wait_until_routable(router)

    def _router_settings(
        self, telemetry_address: str, controller_address: str = "", index: int = 0
    ) -> RouterSettings:
        """Router ``index``'s settings (router i on router_port + i, HTTP on http_port + i
        when those are set)."""
        settings = self.settings

        def port(first: int) -> int:
            return settings.router_port_of(index, first)

        metrics = settings.metrics_address(0)
        if metrics is not None and index > 0:
            metrics = settings.address(0)  # the fixed ports after it belong to other services
        return RouterSettings(
            listen_address=settings.address(port(settings.router_port)),
            router_id=f"router-{index}",
            telemetry_address=telemetry_address,
            controller_address=controller_address,
            placement_notice_timeout_ms=settings.placement_notice_timeout_ms,
            policy=settings.policy,
            router=settings.router,
            gpu_key=settings.gpu_key,
            model_key=settings.model_key,
            tp=settings.tp,
            model_config_path=settings.model_config_path,
            profile_path=settings.profile_path,
            slo=settings.slo,
            snapshot_interval_ms=settings.snapshot_interval_ms,
            metrics_listen_address=metrics,
            http_listen_address=(
                settings.address(port(settings.http_port))
                if settings.http_port is not None
                else None
            ),
            security=settings.security,
        )

    async def _start_instance(
        self,
        instance_id: str,
        phase: Phase,
        gpu_indices: tuple[int, ...],
        client: TelemetryClient,
    ) -> None:
        settings = self.settings
        gpus = tuple(
            SimulatedGpu(
                self.perf.gpu,
                gpu_index,
                now_s=self.clock,
                power_source=self.perf.idle_power_w,
                clock_change_delay_ms=settings.clock_change_delay_ms,
            )
            for gpu_index in gpu_indices
        )
        sink = TelemetryInstanceSink(client, engine_clock=self.clock, speedup=settings.speedup)
        engine = SimEngine(
            SimEngineSettings(
                host=settings.host,
                mode=phase.value,
                gpu_key=settings.gpu_key,
                model_key=settings.model_key,
                tp=len(gpus),
                speedup=settings.speedup,
                max_running_requests=settings.max_running_requests,
                instance_id=instance_id,
                report_interval_ms=settings.report_interval_ms,
                drain_timeout_s=settings.drain_timeout_s,
                report_request_energy=settings.engines_report_energy,
            ),
            gpu=gpus,
            perf=self.perf,
            clock=self.clock,
            sample_sink=sink,
            tracer_provider=self._provider("voltana-engine", instance_id),
        )
        await engine.start()
        instance = StackInstance(instance_id, phase, gpus, engine)
        self.instances.append(instance)
        self._stoppers.append((f"engine {instance_id}", engine.stop))
        # Registered before its agent starts, so the agent's first GPU samples are accepted;
        # registered again with the agent's address once it is bound. Registered again
        # whenever telemetry loses it (a restarted Redis); unregistered on stop.
        registration = InstanceRegistration(client, instance.info)
        sink.registration = registration
        await registration.register()
        agent = AgentService(
            AgentSettings(
                listen_address=settings.address(0),
                backend="sim",
                gpu_indices=gpu_indices,
                sim_gpu_key=self.perf.gpu.key,
                instance_gpu_indices={instance_id: gpu_indices},
                node_name=instance_id,
                telemetry_address=self.telemetry_address,
                sample_interval_ms=settings.sample_interval_ms,
                metrics_listen_address=settings.metrics_address(
                    METRICS_PORTS_BEFORE_AGENTS + gpu_indices[0] // len(gpu_indices)
                ),
                security=settings.security,
            ),
            devices=list(gpus),
            tracer_provider=self._provider("voltana-agent", instance_id),
        )
        await agent.start()
        instance.agent = agent
        self._stoppers.append((f"agent {instance_id}", agent.stop))
        await registration.register()
        registration.start()
        self._stoppers.append((f"registration of {instance_id}", registration.stop))

    async def _wait_until_routable(self, router: RouterService) -> None:
        """Until the router's snapshot lists every instance with its engine and GPU clock."""
        expected = {instance.instance_id: instance.engine.url for instance in self.instances}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.ready_timeout_s
        while not self._router_sees(router, expected):
            if loop.time() > deadline:
                raise UnavailableError(
                    f"the router did not see all {len(expected)} instances within "
                    f"{self.settings.ready_timeout_s:g} s"
                )
            await asyncio.sleep(_READY_POLL_S)

    @staticmethod
    def _router_sees(router: RouterService, expected: dict[str, str]) -> bool:
        snapshot = router.cluster.latest
        if snapshot is None:
            return False
        for instance_id, url in expected.items():
            state = snapshot.instance(instance_id)
            if state is None or state.sm_clock_mhz <= 0:
                return False
            try:
                if router.cluster.endpoint(instance_id).engine_url != url:
                    return False
            except NoInstanceAvailableError:  # no endpoint yet
                return False
        return True

    async def failure(self) -> BaseException:
        """Wait until the stack fails for good (Redis refused telemetry's credentials)."""
        return await self._started(self.telemetry, "telemetry").failure()

    async def stop(self) -> None:
        """Stop what runs, newest first; one part failing to stop does not keep the rest up."""
        stoppers, self._stoppers = self._stoppers, []
        for name, stop in reversed(stoppers):
            try:
                await stop()
            except Exception:
                _LOG.exception("stopping the %s failed", name)
        self.router = self.controller = self.telemetry = None
        self.routers = []
        self._telemetry_client = None
