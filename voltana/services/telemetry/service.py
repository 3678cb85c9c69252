"""The telemetry service: a store plus its gRPC server, started and stopped in process."""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import grpc.aio
from grpc_health.v1 import health
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from voltana.contract.state import SloTarget
from voltana.errors import FailedPreconditionError
from voltana.lifecycle import AsyncService, cancel_and_wait
from voltana.observability.prometheus import MetricsServer, start_metrics_server
from voltana.rpc import dialable_address, set_serving, start_grpc_server, stop_grpc_server
from voltana.rpc.names import TELEMETRY_SERVICE
from voltana.services.telemetry.books import CompletionBooks, build_books
from voltana.services.telemetry.cluster_slo import ClusterSloKeeper
from voltana.services.telemetry.errors import TELEMETRY_STATUS_CODES, TelemetryError
from voltana.services.telemetry.memory_store import MemoryTelemetryStore
from voltana.services.telemetry.metrics import TelemetryMetrics, instrumented
from voltana.services.telemetry.redis_repair import RedisRepair
from voltana.services.telemetry.redis_store import RedisTelemetryStore
from voltana.services.telemetry.redis_url import redact_redis_url
from voltana.services.telemetry.servicer import TELEMETRY_PRIVILEGED_METHODS, TelemetryServicer
from voltana.services.telemetry.settings import TelemetrySettings
from voltana.services.telemetry.store import Clock, TelemetryStore
from voltana.services.telemetry.upkeep import TelemetryUpkeep
from voltana.v1 import telemetry_pb2_grpc

_LOG = logging.getLogger(__name__)


def build_store(settings: TelemetrySettings, clock: Clock) -> TelemetryStore:
    """Redis when ``redis_url`` is set, else the in-process store."""
    if settings.redis_url is None:
        return MemoryTelemetryStore(
            clock=clock,
            series_cap=settings.series_cap,
            completions_cap=settings.completions_cap,
        )
    return RedisTelemetryStore.from_url(
        settings.redis_url,
        clock=clock,
        key_prefix=settings.redis_key_prefix,
        series_cap=settings.series_cap,
        completions_cap=settings.completions_cap,
        password=settings.redis_password,
    )


class TelemetryService(AsyncService):
    """``await start()`` serves TelemetryService (plus health and reflection); ``stop()`` ends.

    ``clock`` stamps snapshots and windows (wall time live, virtual time in simulations).
    Pass ``store`` to share one with in-process code; otherwise one is built from settings
    and closed on stop. The servicer's store calls are timed into Prometheus metrics (served on
    ``settings.metrics_listen_address`` when set); ``tracer_provider`` (default: the global
    one) traces the RPCs.
    """

    def __init__(
        self,
        settings: TelemetrySettings,
        *,
        clock: Clock = time.time,
        store: TelemetryStore | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._settings = settings
        self._owns_store = store is None
        self._store = store if store is not None else build_store(settings, clock)
        self._tracer_provider = tracer_provider
        self.metrics_registry = CollectorRegistry(auto_describe=True)
        self._metrics = TelemetryMetrics(
            self.metrics_registry, "redis" if settings.redis_url is not None else "memory"
        )
        self._metrics_server: MetricsServer | None = None
        # Redis is shared and outlives versions: what it holds is checked and repaired.
        self._repair: RedisRepair | None = None
        if isinstance(self._store, RedisTelemetryStore):
            self._repair = RedisRepair(self._store)
            self._store.quarantine.listen(
                found=self._metrics.count_quarantined, repaired=self._metrics.count_repaired
            )
        self._servicer: TelemetryServicer | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._upkeep: TelemetryUpkeep | None = None
        self._upkeep_task: asyncio.Task[None] | None = None
        self._books = build_books(
            instrumented(self._store, self._metrics), settings, self.metrics_registry
        )
        self._books_task: asyncio.Task[None] | None = None
        self._cluster_slo: ClusterSloKeeper | None = None
        self._warm_up_task: asyncio.Task[None] | None = None
        self._port: int | None = None
        self._stopped = False
        # Set when telemetry failed for good (Redis refused its credentials), see failure().
        self._failed = asyncio.Event()
        self._failure: TelemetryError | None = None

    @property
    def settings(self) -> TelemetrySettings:
        return self._settings

    @property
    def store(self) -> TelemetryStore:
        return self._store

    @property
    def upkeep(self) -> TelemetryUpkeep | None:
        """Store health checks and expiry of silent instances (None until started)."""
        return self._upkeep

    @property
    def books(self) -> CompletionBooks:
        """Where completions are stored, journaled and replayed after a store restart."""
        return self._books

    @property
    def metrics_url(self) -> str | None:
        """``http://host:port/metrics`` while metrics are served, else None."""
        return self._metrics_server.url if self._metrics_server is not None else None

    @property
    def port(self) -> int:
        if self._port is None:
            raise FailedPreconditionError("telemetry service is not started")
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` clients can dial (loopback when listening on every interface)."""
        return dialable_address(self._settings.listen_address, self.port)

    async def start(self) -> None:
        if self._server is not None:
            raise FailedPreconditionError("telemetry service is already started")
        if self._stopped:
            raise FailedPreconditionError("a stopped telemetry service cannot start again")
        self._settings.security.require_credentials("telemetry")
        if isinstance(self._store, RedisTelemetryStore):
            await self._store.ping()  # fail at start, not on the first report
        await self._books.check_store()  # learn the epoch: a change later = a restart
        store = instrumented(self._store, self._metrics)
        await self._cluster_slo_keeper(store).load()
        servicer = TelemetryServicer(
            store, self._settings, books=self._books, cluster_slo=self._cluster_slo
        )
        health_servicer = health.aio.HealthServicer()
        register = functools.partial(
            telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server, servicer
        )
        started = await start_grpc_server(
            self._settings.listen_address,
            [register],
            [TELEMETRY_SERVICE],
            health_servicer=health_servicer,
            error_codes=TELEMETRY_STATUS_CODES,
            security=self._settings.security,
            privileged_methods=TELEMETRY_PRIVILEGED_METHODS,
            tracer_provider=self._tracer_provider,
        )
        self._servicer, self._health = servicer, health_servicer
        self._server, self._port = started.server, started.port
        self._upkeep = TelemetryUpkeep(
            self._store,
            forget=servicer.forget_instance,
            on_health=self._set_health,
            interval_s=self._settings.upkeep_interval_s,
            instance_ttl_s=self._settings.instance_ttl_s,
            on_fatal=self._fail,
            heal=self._heal,
            check_timeout_s=self._settings.store_check_timeout_s,
        )
        self._upkeep_task = asyncio.create_task(self._upkeep.run(), name="telemetry-upkeep")
        self._books_task = asyncio.create_task(self._books.run(), name="telemetry-books")
        if isinstance(self._store, RedisTelemetryStore):
            self._warm_up_task = asyncio.create_task(
                self._warm_up(self._store), name="telemetry-warm-up"
            )
        try:
            self._metrics_server = await start_metrics_server(
                self.metrics_registry, self._settings.metrics_listen_address
            )
        except BaseException:
            await self.stop()
            raise
        redis_url = self._settings.redis_url
        _LOG.info(
            "telemetry serving on %s (store: %s)",
            self.address,
            f"redis at {redact_redis_url(redis_url)}" if redis_url else "in memory",
        )

    def _cluster_slo_keeper(self, store: TelemetryStore) -> ClusterSloKeeper:
        self._cluster_slo = ClusterSloKeeper(store, self._settings.slo)
        return self._cluster_slo

    @property
    def cluster_slo(self) -> SloTarget:
        """The cluster SLO in force (the configured one until started)."""
        keeper = self._cluster_slo
        return keeper.current if keeper is not None else self._settings.slo

    async def _heal(self) -> int:
        """One upkeep round's repairs: the Redis store's bad records, and the cluster SLO
        followed (another telemetry process changed it) or written back (the store lost it)."""
        repaired = await self._repair.heal() if self._repair is not None else 0
        if self._cluster_slo is not None:
            await self._cluster_slo.refresh()
        return repaired

    def _fail(self, error: TelemetryError) -> None:
        self._failure = error
        self._failed.set()

    async def failure(self) -> TelemetryError:
        """Wait until telemetry fails for good — Redis refused its credentials — and return
        why; never returns while it works. Whoever runs the service should stop it then."""
        await self._failed.wait()
        assert self._failure is not None
        return self._failure

    @staticmethod
    async def _warm_up(store: RedisTelemetryStore) -> None:
        """Mirror the stored completions in the background (the first GetAggregates would
        otherwise read them all); a failure only leaves that to the first call."""
        try:
            await store.warm_up()
        except TelemetryError as error:
            _LOG.warning(
                "could not read the completions at start (%s); the first GetAggregates will", error
            )

    async def _set_health(self, serving: bool) -> None:
        if self._health is not None:
            await set_serving(self._health, [TELEMETRY_SERVICE], serving)

    async def stop(self) -> None:
        """Stop serving (watch streams end at once); close the store if this service built it."""
        self._stopped = True
        warm_up, self._warm_up_task = self._warm_up_task, None
        if warm_up is not None:
            await cancel_and_wait([warm_up])
        task, self._upkeep_task = self._upkeep_task, None
        if task is not None:
            assert self._upkeep is not None
            self._upkeep.stop()
            await cancel_and_wait([task])
        books_task, self._books_task = self._books_task, None
        if books_task is not None:
            self._books.stop()
            await cancel_and_wait([books_task])
        metrics_server, self._metrics_server = self._metrics_server, None
        if metrics_server is not None:
            await metrics_server.stop()
        server, self._server = self._server, None
        if server is not None:
            assert self._servicer is not None
            self._servicer.close()
            await stop_grpc_server(
                server, self._settings.shutdown_grace_s, health_servicer=self._health
            )
            self._servicer = self._health = None
            self._port = None
        if self._owns_store:
            await self._store.close()
