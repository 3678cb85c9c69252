"""Settings of the telemetry service (one per cluster)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from voltana.contract.state import SloTarget
from voltana.errors import ConfigError
from voltana.observation import DEFAULT_OBSERVATION
from voltana.rpc.security import RpcSecurity
from voltana.services.telemetry.redis_store import DEFAULT_KEY_PREFIX
from voltana.services.telemetry.redis_url import check_redis_url
from voltana.services.telemetry.store import DEFAULT_COMPLETIONS_CAP, DEFAULT_SERIES_CAP


@dataclass(frozen=True)
class TelemetrySettings:
    # "host:port"; port 0 = any free port (TelemetryService.address tells which).
    listen_address: str = "127.0.0.1:0"
    # redis://[:password@]host:port/db, rediss://... or unix://...; None = keep everything in
    # process memory. Not in repr: it may hold a password.
    redis_url: str | None = field(default=None, repr=False)
    # Redis password kept out of the URL (e.g. from $VOLTANA_REDIS_PASSWORD); None = the URL's.
    redis_password: str | None = field(default=None, repr=False)
    redis_key_prefix: str = DEFAULT_KEY_PREFIX
    # Points kept per (instance, metric) series, and completions kept in all.
    series_cap: int = DEFAULT_SERIES_CAP
    completions_cap: int = DEFAULT_COMPLETIONS_CAP
    # Completions this process stored are kept (at most replay_journal_cap of them, for
    # replay_journal_s by finish time) to be written again into a store that restarted and
    # lost them (voltana.services.telemetry.books).
    replay_journal_cap: int = 50_000
    replay_journal_s: float = 900.0
    # Window of GetAggregates when the request asks for 0 seconds.
    window_s: float = 60.0
    # SLO of requests whose completion carries none.
    slo: SloTarget = field(default_factory=SloTarget)
    # Window over which the router's placements give each instance's arrival rates (the
    # observation contract's window).
    arrival_rate_window_s: float = DEFAULT_OBSERVATION.window_s
    # Active-active routers: a router's in-flight share not renewed for this long is dropped
    # (the router died); routers renew theirs every few tens of milliseconds.
    router_share_ttl_s: float = 2.0
    # WatchSnapshots: period used when the client asks for 0, the shortest period a client
    # may ask for, and how long an unchanged cluster waits before a snapshot is resent.
    watch_default_interval_ms: int = 500
    watch_min_interval_ms: int = 50
    watch_idle_resend_s: float = 5.0
    # A sample for an instance this process does not know rereads registrations from the
    # store at most this often (another telemetry process may have registered it).
    registry_refresh_s: float = 1.0
    # An instance that neither registers nor reports load for this long is unregistered
    # (routers stop sending it work); 0 = never expire. Reporters send load every 50-250 ms.
    instance_ttl_s: float = 10.0
    # How often the store is pinged (health NOT_SERVING while it fails) and silent instances
    # are looked for.
    upkeep_interval_s: float = 1.0
    # A store check (PING, then reading every kind of record back) slower than this counts as
    # a failed one: a Redis that hangs turns health NOT_SERVING too.
    store_check_timeout_s: float = 5.0
    shutdown_grace_s: float = 1.0
    # Prometheus /metrics ("host:port", port 0 = any free); None = not served.
    metrics_listen_address: str | None = None
    # Most instances registered at once: bounds every snapshot well below the gRPC message
    # limit (voltana.rpc.limits bounds each field).
    max_instances: int = 1024
    # Samples and completions stamped further than this ahead of telemetry's clock are
    # refused (a clock in the future would make every later sample look late).
    max_future_skew_s: float = 10.0
    # GetAggregates calls a second each caller host may make (and at once: burst). Reads are
    # open (docs/security.md), so this bounds what one stranger can make telemetry compute;
    # 0 = unlimited.
    aggregates_rate_per_s: float = 20.0
    aggregates_burst: int = 40
    # Control-plane token (registration and reports need it) and TLS; voltana.rpc.security.
    security: RpcSecurity = field(default_factory=RpcSecurity)

    def __post_init__(self) -> None:
        for name in (
            "series_cap",
            "completions_cap",
            "watch_min_interval_ms",
            "max_instances",
            "replay_journal_cap",
            "aggregates_burst",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"telemetry {name} must be >= 1, got {getattr(self, name)}")
        if self.watch_default_interval_ms < self.watch_min_interval_ms:
            raise ConfigError(
                "telemetry watch_default_interval_ms must be >= watch_min_interval_ms, got "
                f"{self.watch_default_interval_ms} < {self.watch_min_interval_ms}"
            )
        for name in (
            "window_s",
            "replay_journal_s",
            "arrival_rate_window_s",
            "router_share_ttl_s",
            "watch_idle_resend_s",
            "upkeep_interval_s",
            "store_check_timeout_s",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"telemetry {name} must be a finite number > 0, got {value}")
        for name in (
            "registry_refresh_s",
            "shutdown_grace_s",
            "instance_ttl_s",
            "max_future_skew_s",
            "aggregates_rate_per_s",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"telemetry {name} must be a finite number >= 0, got {value}")
        if self.slo.ttft_ms <= 0 or self.slo.itl_ms <= 0:
            raise ConfigError(f"telemetry slo targets must be > 0, got {self.slo}")
        if self.redis_url is not None:
            check_redis_url(self.redis_url, password=self.redis_password)
        elif self.redis_password is not None:
            raise ConfigError("a Redis password without a Redis URL")
        if ":" not in self.listen_address:
            raise ConfigError(
                f"telemetry listen_address must be host:port, got {self.listen_address!r}"
            )
        if self.metrics_listen_address is not None and ":" not in self.metrics_listen_address:
            raise ConfigError(
                "telemetry metrics_listen_address must be host:port, got "
                f"{self.metrics_listen_address!r}"
            )
