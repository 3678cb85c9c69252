"""ControllerService: the frequency controller as a start/stop-able in-process server."""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import grpc.aio
from grpc_health.v1 import health
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from voltana.contract.state import Phase
from voltana.lifecycle import AsyncService, cancel_and_wait
from voltana.observability.prometheus import MetricsServer, start_metrics_server
from voltana.rpc import dialable_address, set_serving, start_grpc_server, stop_grpc_server
from voltana.rpc.names import CONTROLLER_SERVICE
from voltana.services.controller.agents import AgentClients
from voltana.services.controller.errors import ControllerNotRunningError
from voltana.services.controller.feed import SnapshotFeed
from voltana.services.controller.loop import Clock, ControlLoop
from voltana.services.controller.metrics import ControllerMetrics
from voltana.services.controller.policies import PolicyBook
from voltana.services.controller.servicer import CONTROLLER_PRIVILEGED_METHODS, ControllerServicer
from voltana.services.controller.settings import ControllerSettings
from voltana.services.telemetry.client import TelemetryClient
from voltana.v1 import controller_pb2_grpc

_LOG = logging.getLogger(__name__)
# How often the health status is brought in line with whether telemetry is reachable.
HEALTH_CHECK_INTERVAL_S = 0.25


class ControllerService(AsyncService):
    """Runs the control loop against telemetry and node agents, and serves ControllerService.

    ``clock`` is the time policies and decision records see: Unix seconds live (telemetry
    stamps states with Unix time), virtual time in simulations. ``tracer_provider`` (default:
    the global one, a no-op until an OpenTelemetry SDK is configured) traces its gRPC calls and
    clock changes; ``tracer`` overrides the tracer of the clock-change spans.
    Prometheus metrics are served on ``settings.metrics_listen_address`` when set.
    """

    def __init__(
        self,
        settings: ControllerSettings,
        *,
        clock: Clock = time.time,
        tracer: trace.Tracer | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._tracer_provider = tracer_provider
        self._tracer = tracer or trace.get_tracer(
            "voltana.services.controller", tracer_provider=tracer_provider
        )
        self.metrics_registry = CollectorRegistry(auto_describe=True)
        self._policies: PolicyBook | None = None
        self._metrics = ControllerMetrics(self.metrics_registry, self._policy_names)
        self._metrics_server: MetricsServer | None = None
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._port: int | None = None
        self._telemetry: TelemetryClient | None = None
        self._agents: AgentClients | None = None
        self._loop: ControlLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def settings(self) -> ControllerSettings:
        return self._settings

    @property
    def port(self) -> int:
        if self._port is None:
            raise ControllerNotRunningError("the controller is not started")
        return self._port

    @property
    def address(self) -> str:
        """host:port to reach the running controller at (loopback when bound to all)."""
        return dialable_address(self._settings.listen_address, self.port)

    @property
    def metrics_url(self) -> str | None:
        """``http://host:port/metrics`` while metrics are served, else None."""
        return self._metrics_server.url if self._metrics_server is not None else None

    def _policy_names(self) -> dict[Phase, str]:
        policies = self._policies
        if policies is None:
            return {}
        return {phase: policies.policy_name(phase) for phase in Phase}

    @property
    def policies(self) -> PolicyBook:
        """The policies in force and the SLO they steer to."""
        if self._policies is None:
            raise ControllerNotRunningError("the controller is not started")
        return self._policies

    @property
    def loop(self) -> ControlLoop:
        if self._loop is None:
            raise ControllerNotRunningError("the controller is not started")
        return self._loop

    async def start(self) -> None:
        if self._server is not None:
            raise ControllerNotRunningError("the controller is already started")
        settings = self._settings
        # Fails (ConfigError) on an unknown policy before anything is bound.
        policies = PolicyBook(
            policy_name=settings.policy,
            slo=settings.slo,
            gpu_key=settings.gpu_key,
            model_key=settings.model_key,
            tensor_parallel=settings.tensor_parallel,
            model_config_path=settings.model_config_path,
            profile_path=settings.profile_path,
        )
        self._policies = policies
        # Agents take clock changes only with the token.
        settings.security.require_credentials("controller")
        try:
            self._telemetry = TelemetryClient(
                settings.telemetry_address,
                timeout_s=settings.rpc_timeout_s,
                security=settings.security,
            )
            self._agents = AgentClients(
                holder=settings.holder,
                timeout_s=settings.rpc_timeout_s,
                security=settings.security,
                tracer_provider=self._tracer_provider,
            )
            feed = SnapshotFeed(
                self._telemetry,
                mode=settings.snapshot_mode,
                interval_ms=settings.control_interval_ms,
                clock=self._clock,
            )
            loop = ControlLoop(
                settings,
                policies,
                feed,
                self._agents,
                clock=self._clock,
                tracer=self._tracer,
                metrics=self._metrics,
            )
            self._loop = loop
            servicer = ControllerServicer(
                loop,
                policies,
                clock=self._clock,
                status_decisions=settings.status_decisions,
                publish_slo=self._telemetry.set_cluster_slo,
            )
            register = functools.partial(
                controller_pb2_grpc.add_ControllerServiceServicer_to_server, servicer
            )
            started = await start_grpc_server(
                settings.listen_address,
                [register],
                [CONTROLLER_SERVICE],
                health_servicer=self._health,
                security=settings.security,
                privileged_methods=CONTROLLER_PRIVILEGED_METHODS,
                tracer_provider=self._tracer_provider,
            )
            self._server, self._port = started.server, started.port
            self._metrics_server = await start_metrics_server(
                self.metrics_registry, settings.metrics_listen_address
            )
            self._tasks = [
                asyncio.create_task(feed.run(), name="controller-feed"),
                asyncio.create_task(loop.run(), name="controller-loop"),
                asyncio.create_task(loop.run_lease_renewals(), name="controller-leases"),
                asyncio.create_task(self._keep_health(loop), name="controller-health"),
            ]
        except BaseException:
            await self._release()
            raise
        _LOG.info(
            "controller %s serving on %s; policy %s; telemetry %s",
            settings.holder,
            self.address,
            settings.policy,
            settings.telemetry_address,
        )

    async def _keep_health(self, loop: ControlLoop) -> None:
        """NOT_SERVING while telemetry is lost (clock control paused), SERVING otherwise: an
        orchestrator or `voltana health` sees a controller that cannot steer."""
        serving = True
        while True:
            await asyncio.sleep(HEALTH_CHECK_INTERVAL_S)
            if loop.blind == serving:
                serving = not loop.blind
                await set_serving(self._health, [CONTROLLER_SERVICE], serving)

    async def stop(self) -> None:
        """Stop serving and deciding; reset held clocks when the settings ask for it."""
        if self._server is None:
            return
        server, self._server = self._server, None
        await stop_grpc_server(
            server, self._settings.shutdown_grace_s, health_servicer=self._health
        )
        await self._release()
        _LOG.info("controller stopped")

    async def _release(self) -> None:
        metrics_server, self._metrics_server = self._metrics_server, None
        if metrics_server is not None:
            await metrics_server.stop()
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks)
        if self._loop is not None:
            await self._loop.release(reset_clocks=self._settings.reset_clocks_on_stop)
            self._loop = None
        if self._agents is not None:
            await self._agents.close()
            self._agents = None
        if self._telemetry is not None:
            await self._telemetry.close()
            self._telemetry = None
        self._port = None
