"""RouterService: the router as a start/stop-able in-process server."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter

import grpc.aio
from grpc_health.v1 import health
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from voltana.contract.state import ClusterSnapshot, SloTarget
from voltana.engine import SglangHttpClient
from voltana.errors import FailedPreconditionError
from voltana.hardware import GPU_CATALOG
from voltana.lifecycle import AsyncService, cancel_and_wait
from voltana.observability.prometheus import MetricsServer, start_metrics_server
from voltana.policy.base import RoutingPolicy
from voltana.policy.registry import build_router, build_suite
from voltana.policy.unified import ColocatedRouting
from voltana.rpc import dialable_address, set_serving, start_grpc_server, stop_grpc_server
from voltana.rpc.names import ROUTER_SERVICE
from voltana.services.router.cluster import LiveCluster
from voltana.services.router.energy_estimates import EnergyEstimates
from voltana.services.router.errors import ROUTER_STATUS_CODES
from voltana.services.router.health import EngineHealth
from voltana.services.router.http_api import RouterHttpApi
from voltana.services.router.metrics import RouterMetrics
from voltana.services.router.placements import ControllerTrigger, PlacementReporter
from voltana.services.router.reporting import CompletionReporter
from voltana.services.router.servicer import ROUTER_KEYED_METHODS, RouterServicer
from voltana.services.router.settings import RouterSettings, default_router_id
from voltana.services.router.tracing import TRACER_NAME
from voltana.services.telemetry.client import TelemetryClient
from voltana.v1 import router_pb2_grpc

_LOG = logging.getLogger(__name__)
# A broken watch is retried after watch_retry_s, doubling up to this many times that (so
# routing catches up within a few seconds of telemetry coming back).
_WATCH_BACKOFF_FACTOR = 4.0
# Once the drain is over, calls still open get this long: health watches (which would hold
# the exit for the whole grace), and a call grpc took just before the stop whose handler has
# yet to run (it refuses the request with "retry elsewhere" once it does; a busy host delays it).
_AFTER_DRAIN_GRACE_S = 1.0
# How long requests whose handlers are done may take to get their last bytes out.
_CALLS_CLOSE_TIMEOUT_S = 10.0
# How often the health status is brought in line with whether a request could be placed.
_HEALTH_REFRESH_S = 0.25


def build_routing_policy(
    settings: RouterSettings, gpu_key: str | None = None
) -> tuple[str, RoutingPolicy]:
    """The suite name and its router (or the explicitly named router), as the simulator builds
    them, for the ``gpu_key`` GPU (default: the settings')."""
    context = settings.policy_context(gpu_key)
    override = build_router(settings.router, context) if settings.router else None
    suite = build_suite(settings.policy, context, override)
    # Colocated instances are placed beside the PD router (it alone places a PD-only cluster).
    return suite.name, ColocatedRouting(suite.router)


def reported_gpu_key(snapshot: ClusterSnapshot) -> str | None:
    """The catalogued GPU most decode instances report (node agents detect it), or None."""
    keys = Counter(
        state.gpu_key.lower()
        for state in (
            *snapshot.decode.values(),
            *snapshot.prefill.values(),
            *snapshot.unified.values(),
        )
        if state.gpu_key.lower() in GPU_CATALOG
    )
    return keys.most_common(1)[0][0] if keys else None


class RouterService(AsyncService):
    """Serves RouterService on ``settings.listen_address``.

    ``start`` opens the telemetry watch (waiting up to ``initial_snapshot_timeout_s`` for the
    first snapshot), then binds the port. ``stop`` stops accepting calls, lets running ones
    finish for ``shutdown_grace_s``, then flushes pending completion reports.

    ``policy`` replaces the one named in settings (tests, custom policies); ``telemetry`` and
    ``engine`` clients may be shared with the caller (they are then not closed on stop).
    """

    def __init__(
        self,
        settings: RouterSettings,
        *,
        policy: RoutingPolicy | None = None,
        telemetry: TelemetryClient | None = None,
        engine: SglangHttpClient | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._settings = settings
        # The GPU the policy is built for; it follows what telemetry reports unless the policy
        # was given or comes from a measured profile.
        self._policy_gpu_key: str | None = settings.gpu_key
        if policy is None:
            self._policy_name, self._policy = build_routing_policy(settings)
        else:
            self._policy_name, self._policy = policy.name, policy
            self._policy_gpu_key = None
        if settings.profile_path:
            self._policy_gpu_key = None
        self._servicer: RouterServicer | None = None
        self._rebuild: asyncio.Task[None] | None = None
        self._given_telemetry = telemetry
        self._given_engine = engine
        self._tracer_provider = tracer_provider
        self._tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
        # This router's own registry (never prometheus_client's global one).
        self.metrics_registry = CollectorRegistry(auto_describe=True)
        self._metrics = RouterMetrics(
            self.metrics_registry, policy=self._policy_name, router=self._policy.name
        )
        self._metrics_server: MetricsServer | None = None
        self._http: RouterHttpApi | None = None
        self.router_id = settings.router_id or default_router_id()
        self._cluster = LiveCluster(
            stale_after_s=settings.instance_stale_after_s,
            snapshot_stale_after_s=settings.snapshot_stale_after_s,
            vanished_phase_grace_s=settings.vanished_phase_grace_s,
            router_id=self.router_id,
            cluster_slo=settings.slo,
        )
        self._energy_estimates = EnergyEstimates()
        self._telemetry: TelemetryClient | None = None
        self._engine: SglangHttpClient | None = None
        self._reporter: CompletionReporter | None = None
        self._placements: PlacementReporter | None = None
        self._trigger: ControllerTrigger | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._engine_health: EngineHealth | None = None
        self._prober: SglangHttpClient | None = None
        self._first_snapshot = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._port: int | None = None

    @property
    def settings(self) -> RouterSettings:
        return self._settings

    @property
    def policy(self) -> RoutingPolicy:
        return self._policy

    @property
    def cluster(self) -> LiveCluster:
        """The live cluster view (for inspection and tests)."""
        return self._cluster

    @property
    def reporter(self) -> CompletionReporter | None:
        return self._reporter

    @property
    def engine_health(self) -> EngineHealth | None:
        """Passive and active engine health checks (None until started)."""
        return self._engine_health

    @property
    def servicer(self) -> RouterServicer | None:
        return self._servicer

    @property
    def metrics(self) -> RouterMetrics:
        return self._metrics

    @property
    def http_url(self) -> str | None:
        """``http://host:port`` of the HTTP front door while it serves, else None."""
        return self._http.url if self._http is not None else None

    @property
    def metrics_url(self) -> str | None:
        """``http://host:port/metrics`` while metrics are served, else None."""
        return self._metrics_server.url if self._metrics_server is not None else None

    @property
    def port(self) -> int:
        if self._port is None:
            raise FailedPreconditionError("router service is not started")
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` clients can dial (loopback when listening on every interface)."""
        return dialable_address(self._settings.listen_address, self.port)

    async def start(self) -> None:
        if self._server is not None:
            raise FailedPreconditionError("router service is already started")
        settings = self._settings
        # It reports completions, which telemetry only takes with the token.
        settings.security.require_credentials("router")
        try:
            self._telemetry = self._given_telemetry or TelemetryClient(
                settings.telemetry_address,
                timeout_s=settings.telemetry_timeout_s,
                security=settings.security,
            )
            # Its streams carry the request's trace context, with a CLIENT span each when the
            # tracer provider records (nothing else to pay when tracing is off).
            self._engine = self._given_engine or SglangHttpClient(
                connect_timeout_s=settings.engine_connect_timeout_s,
                max_connections=settings.max_engine_connections,
                traced=True,
                tracer_provider=self._tracer_provider,
            )
            self._reporter = CompletionReporter(
                self._telemetry,
                queue_size=settings.completion_queue_size,
                timeout_s=settings.telemetry_timeout_s,
                on_dropped=self._metrics.completion_reports_dropped.inc,
                interval_s=settings.completion_report_interval_ms / 1000.0,
            )
            self._reporter.start()
            self._metrics.watch_telemetry(self._cluster, self._reporter)
            self._placements = PlacementReporter(
                self._telemetry,
                interval_s=settings.placement_report_interval_ms / 1000.0,
                router_id=self.router_id,
                share=self._cluster.pending_placements,
            )
            self._placements.start()
            if settings.controller_address:
                self._trigger = ControllerTrigger(
                    settings.controller_address,
                    timeout_s=settings.placement_notice_timeout_ms / 1000.0,
                    security=settings.security,
                    view_of=self._cluster.view_of,
                    interval_s=settings.placement_notice_interval_ms / 1000.0,
                    router_id=self.router_id,
                    served_of=self._cluster.served_of,
                    serving_now=self._cluster.serving_now,
                )
                self._cluster.on_serving_change = self._trigger.serving_changed
                self._trigger.start()
            # Probes get their own untraced client: they are polls, not requests.
            self._prober = SglangHttpClient(health_timeout_s=settings.health_check_timeout_s)
            self._engine_health = EngineHealth(
                self._cluster,
                self._prober.health,
                interval_s=settings.health_check_interval_s,
                unhealthy_after=settings.unhealthy_after,
                healthy_after=settings.healthy_after,
            )
            self._first_snapshot = asyncio.Event()
            self._watch_task = asyncio.create_task(self._watch(), name="router-snapshot-watch")
            await self._wait_for_first_snapshot()
            await self.wait_for_policy()  # built for the GPU the first snapshot reports
            servicer = RouterServicer(
                settings,
                cluster=self._cluster,
                policy=self._policy,
                policy_name=self._policy_name,
                engine=self._engine,
                reporter=self._reporter,
                tracer=self._tracer,
                health=self._engine_health,
                metrics=self._metrics,
                placements=self._placements,
                trigger=self._trigger,
                energy_estimates=self._energy_estimates,
            )
            self._servicer = servicer
            health_servicer = health.aio.HealthServicer()
            register = functools.partial(
                router_pb2_grpc.add_RouterServiceServicer_to_server, servicer
            )
            started = await start_grpc_server(
                settings.listen_address,
                [register],
                [ROUTER_SERVICE],
                health_servicer=health_servicer,
                error_codes=ROUTER_STATUS_CODES,
                tracer_provider=self._tracer_provider,
                security=settings.security,
                api_keys=settings.api_keys,
                keyed_methods=ROUTER_KEYED_METHODS,
            )
            self._server, self._port, self._health = started.server, started.port, health_servicer
            self._metrics_server = await start_metrics_server(
                self.metrics_registry, settings.metrics_listen_address
            )
            if settings.http_listen_address is not None:
                http = RouterHttpApi(
                    listen_address=settings.http_listen_address,
                    generate=servicer.generate,
                    served_model=settings.served_model_name or settings.model_key,
                    # As for gRPC: open, or API keys (and the control-plane token) only.
                    accepted_keys=(
                        {*settings.api_keys, *filter(None, [settings.security.token])}
                        if settings.api_keys
                        else ()
                    ),
                    ready=self._routable,
                    tracer_provider=self._tracer_provider,
                    limits=settings.http_limits,
                    on_shed=self._metrics.on_http_connection_shed,
                )
                await http.start()
                self._http = http
        except BaseException:
            if self._server is not None:
                await stop_grpc_server(self._server, 0)
                self._server = self._health = None
                self._port = None
            await self._release()
            raise
        await self._refresh_health(None)
        if settings.health_check_interval_s > 0:
            self._tasks.append(
                asyncio.create_task(self._engine_health.run(), name="router-engine-probes")
            )
        self._tasks.append(asyncio.create_task(self._keep_health(), name="router-health"))
        _LOG.info(
            "router %s serving on %s (policy %s, router %s, telemetry %s, placement notices to %s)",
            self.router_id,
            self.address,
            self._policy_name,
            self._policy.name,
            settings.telemetry_address,
            settings.controller_address or "no controller",
        )

    async def _wait_for_first_snapshot(self) -> None:
        timeout_s = self._settings.initial_snapshot_timeout_s
        if timeout_s <= 0:
            return
        try:
            await asyncio.wait_for(self._first_snapshot.wait(), timeout_s)
        except TimeoutError:
            _LOG.warning(
                "no snapshot from telemetry at %s after %g s; serving anyway (requests get "
                "UNAVAILABLE until one arrives)",
                self._settings.telemetry_address,
                timeout_s,
            )

    async def _refresh_health(self, serving: bool | None) -> bool:
        """Set the health status to whether a request could be placed now (NOT_SERVING
        without a placeable instance of each phase); returns it. ``serving`` is the last one
        set (None: unknown)."""
        placeable = self._cluster.placeable()
        if placeable != serving and self._health is not None:
            await set_serving(self._health, [ROUTER_SERVICE], placeable)
            if serving is not None:
                _LOG.log(
                    logging.INFO if placeable else logging.WARNING,
                    "router health: %s",
                    "SERVING" if placeable else "NOT_SERVING (no placeable instance)",
                )
        return placeable

    async def _keep_health(self) -> None:
        serving = self._cluster.placeable()
        stale = False
        while True:
            await asyncio.sleep(_HEALTH_REFRESH_S)
            serving = await self._refresh_health(serving)
            stale = self._note_staleness(stale)

    def _note_staleness(self, was_stale: bool) -> bool:
        """Log when the snapshot turns stale or fresh again; returns whether it is stale."""
        stale = self._cluster.snapshot_stale
        if stale and not was_stale:
            _LOG.warning(
                "no snapshot from telemetry for %.1f s; placing requests on the last one "
                "meanwhile (stale)",
                self._cluster.snapshot_age_s or 0.0,
            )
        elif was_stale and not stale:
            _LOG.info("snapshots from telemetry again; the cluster view is fresh")
        return stale

    def _follow_cluster_slo(self, cluster_slo: SloTarget | None) -> None:
        """Requests without their own SLO are held to the cluster SLO telemetry holds (its one
        owner: the controller's SetSlo changes it there); none said: the configured one."""
        servicer = self._servicer
        if cluster_slo is None or servicer is None or cluster_slo == servicer.cluster_slo:
            return
        previous = servicer.cluster_slo
        servicer.use_cluster_slo(cluster_slo)
        self._cluster.cluster_slo = cluster_slo
        _LOG.info(
            "cluster SLO from telemetry: TTFT %g ms, ITL %g ms (was TTFT %g ms, ITL %g ms)",
            cluster_slo.ttft_ms,
            cluster_slo.itl_ms,
            previous.ttft_ms,
            previous.itl_ms,
        )

    async def _watch(self) -> None:
        """Keep the cluster view current; reopen the watch while telemetry is away."""
        assert self._telemetry is not None
        retry_s = self._settings.watch_retry_s
        failing = False
        while True:
            try:
                stream = self._telemetry.watch_with_shares(self._settings.snapshot_interval_ms)
                try:
                    async for snapshot, infos, shares in stream:
                        self._cluster.update(snapshot, infos, shares)
                        self._follow_cluster_slo(snapshot.cluster_slo)
                        self._energy_estimates.update(snapshot)
                        self._follow_reported_gpu(snapshot)
                        self._first_snapshot.set()
                        if failing:
                            _LOG.info("telemetry watch restored")
                        failing, retry_s = False, self._settings.watch_retry_s
                finally:
                    await stream.aclose()
                _LOG.info("telemetry ended the snapshot watch; reopening")
            except asyncio.CancelledError:
                raise
            except Exception as error:  # telemetry down: keep routing on the last snapshot
                if not failing:
                    _LOG.warning(
                        "telemetry watch failed (%s); routing on the last snapshot meanwhile",
                        error,
                    )
                failing = True
            await asyncio.sleep(retry_s)
            retry_s = min(retry_s * 2, self._settings.watch_retry_s * _WATCH_BACKOFF_FACTOR)

    def _follow_reported_gpu(self, snapshot: ClusterSnapshot) -> None:
        """Rebuild the policy for the GPU the instances report, when it is another one."""
        reported = reported_gpu_key(snapshot)
        current = self._policy_gpu_key
        if current is None or reported is None or reported == current:
            return
        if self._rebuild is not None and not self._rebuild.done():
            return
        self._rebuild = asyncio.create_task(self._rebuild_policy(reported))

    async def _rebuild_policy(self, gpu_key: str) -> None:
        try:
            name, policy = await asyncio.to_thread(build_routing_policy, self._settings, gpu_key)
        except Exception as error:  # keep routing with the policy we have
            _LOG.error("cannot build the routing policy for %s: %s", gpu_key, error)
            self._policy_gpu_key = None
            return
        _LOG.info(
            "instances report %s GPUs (was %s): routing policy rebuilt for them",
            gpu_key,
            self._policy_gpu_key,
        )
        self._policy_gpu_key, self._policy_name, self._policy = gpu_key, name, policy
        if self._servicer is not None:
            self._servicer.use_policy(policy)

    async def wait_for_policy(self) -> None:
        """Until a rebuild for a newly reported GPU (if one runs) is done."""
        if self._rebuild is not None:
            await asyncio.shield(self._rebuild)

    async def stop(self) -> None:
        """The drain: health turns NOT_SERVING (load balancers and SDK health watches stop
        sending here), both doors stop taking requests (gRPC and HTTP answer UNAVAILABLE / 503,
        which clients retry on another router), running requests finish for up to
        ``shutdown_grace_s``; the rest end with UNAVAILABLE (a stream that sent its last token
        is let finish); every outcome is reported, then clean up."""
        server, self._server = self._server, None
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks)  # the health keeper must not turn SERVING again
        if server is not None:
            drain_s = self._settings.shutdown_grace_s
            if self._health is not None:
                await self._health.enter_graceful_shutdown()
            if self._servicer is not None:
                self._servicer.stop_accepting()
            if self._http is not None:
                await self._http.stop_accepting()
            # The gRPC server keeps taking calls while the drain runs, so a new one is answered
            # UNAVAILABLE (not taken: clients retry it on another router) by the servicer; a
            # server already stopping would end it CANCELLED, which no client may retry.
            if self._servicer is not None:
                ended = await self._servicer.drain(drain_s)
                if ended:
                    _LOG.warning(
                        "ended %d request(s) still running after the %g s drain", ended, drain_s
                    )
                # Each request's last message and status are on their way: let them out
                # (however busy the host) before the short grace below cuts what is left.
                await self._servicer.wait_for_calls(_CALLS_CLOSE_TIMEOUT_S)
            # Requests are done; what is left (health watches of load balancers and clients)
            # must not hold the exit for the rest of the grace.
            await stop_grpc_server(server, _AFTER_DRAIN_GRACE_S)
            self._health = None
            _LOG.info("router stopped")
        await self._release()
        self._port = None

    def _routable(self) -> bool:
        snapshot = self._cluster.latest
        return snapshot is not None and snapshot.placeable

    async def _release(self) -> None:
        rebuild, self._rebuild = self._rebuild, None
        if rebuild is not None:
            await cancel_and_wait([rebuild])
        http, self._http = self._http, None
        if http is not None:
            await http.stop()
        metrics_server, self._metrics_server = self._metrics_server, None
        if metrics_server is not None:
            await metrics_server.stop()
        tasks, self._tasks = self._tasks, []
        if self._watch_task is not None:
            tasks.append(self._watch_task)
            self._watch_task = None
        await cancel_and_wait(tasks)
        self._servicer = None
        placements, self._placements = self._placements, None
        if placements is not None:
            await placements.stop()
        trigger, self._trigger = self._trigger, None
        if trigger is not None:
            await trigger.close()
        reporter, self._reporter = self._reporter, None
        if reporter is not None:
            await reporter.stop(flush_timeout_s=self._settings.completion_flush_timeout_s)
        engine, self._engine = self._engine, None
        if engine is not None and self._given_engine is None:
            await engine.close()
        prober, self._prober = self._prober, None
        if prober is not None:
            await prober.close()
        telemetry, self._telemetry = self._telemetry, None
        if telemetry is not None and self._given_telemetry is None:
            await telemetry.close()
