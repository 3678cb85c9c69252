"""Settings of the telemetry service (one per cluster)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from voltana.contract.state import SloTarget
from voltana.deploy.ports import TELEMETRY_PORT
from voltana.errors import ConfigError
from voltana.flags import composed, flag, no_flag
from voltana.flags.common import METRICS, SECURITY, SLO, listen_flag
from voltana.flags.values import non_negative_float, positive_float, positive_int
from voltana.observation import DEFAULT_OBSERVATION
from voltana.rpc.security import RpcSecurity
from voltana.services.telemetry.redis_store import DEFAULT_KEY_PREFIX
from voltana.services.telemetry.redis_url import check_redis_url
from voltana.services.telemetry.store import DEFAULT_COMPLETIONS_CAP, DEFAULT_SERIES_CAP

# Where `voltana serve telemetry` finds the Redis URL when --redis-url is not given.
REDIS_URL_ENV = "VOLTANA_REDIS_URL"


@dataclass(frozen=True)
class TelemetrySettings:
    # "host:port"; port 0 = any free port (TelemetryService.address tells which).
    listen_address: str = field(default="127.0.0.1:0", metadata=listen_flag(TELEMETRY_PORT))
    # redis://[:password@]host:port/db, rediss://... or unix://...; None = keep everything in
    # process memory. Not in repr: it may hold a password.
    redis_url: str | None = field(
        default=None,
        repr=False,
        metadata=flag(
            "redis://[:PASSWORD@]host:port/db, rediss://... (TLS) or unix://PATH",
            env=REDIS_URL_ENV,
            default_help="in process memory",
        ),
    )
    # Redis password kept out of the URL (e.g. from $VOLTANA_REDIS_PASSWORD); None = the URL's.
    redis_password: str | None = field(
        default=None, repr=False, metadata=composed("--redis-password-file (security_opts)")
    )
    redis_key_prefix: str = field(
        default=DEFAULT_KEY_PREFIX, metadata=flag("prefix of every Redis key")
    )
    # Points kept per (instance, metric) series, and completions kept in all.
    series_cap: int = field(default=DEFAULT_SERIES_CAP, metadata=no_flag())
    completions_cap: int = field(default=DEFAULT_COMPLETIONS_CAP, metadata=no_flag())
    # Completions this process stored are kept (at most replay_journal_cap of them, for
    # replay_journal_s by finish time) to be written again into a store that restarted and
    # lost them (voltana.services.telemetry.books).
    replay_journal_cap: int = field(
        default=50_000,
        metadata=flag(
            "completions kept to write again into a Redis that restarted and lost them",
            parse=positive_int,
        ),
    )
    replay_journal_s: float = field(
        default=900.0,
        metadata=flag("how long (by finish time) those completions are kept", parse=positive_float),
    )
    # Window of GetAggregates when the request asks for 0 seconds.
    window_s: float = field(
        default=60.0, metadata=flag("default window of aggregates", parse=positive_float)
    )
    # SLO of requests whose completion carries none.
    slo: SloTarget = field(default_factory=SloTarget, metadata=SLO)
    # Window over which the router's placements give each instance's arrival rates (the
    # observation contract's window).
    arrival_rate_window_s: float = field(default=DEFAULT_OBSERVATION.window_s, metadata=no_flag())
    # Active-active routers: a router's in-flight share not renewed for this long is dropped
    # (the router died); routers renew theirs every few tens of milliseconds.
    router_share_ttl_s: float = field(default=2.0, metadata=no_flag())
    # WatchSnapshots: period used when the client asks for 0, the shortest period a client
    # may ask for, and how long an unchanged cluster waits before a snapshot is resent.
    watch_default_interval_ms: int = field(default=500, metadata=no_flag())
    watch_min_interval_ms: int = field(default=50, metadata=no_flag())
    watch_idle_resend_s: float = field(default=5.0, metadata=no_flag())
    # A sample for an instance this process does not know rereads registrations from the
    # store at most this often (another telemetry process may have registered it).
    registry_refresh_s: float = field(default=1.0, metadata=no_flag())
    # An instance that neither registers nor reports load for this long is unregistered
    # (routers stop sending it work); 0 = never expire. Reporters send load every 50-250 ms.
    instance_ttl_s: float = field(
        default=10.0,
        metadata=flag(
            "unregister instances that neither register nor report load this long; 0 = never",
            parse=non_negative_float,
        ),
    )
    # How often the store is pinged (health NOT_SERVING while it fails) and silent instances
    # are looked for.
    upkeep_interval_s: float = field(default=1.0, metadata=no_flag())
    # A store check (PING, then reading every kind of record back) slower than this counts as
    # a failed one: a Redis that hangs turns health NOT_SERVING too.
    store_check_timeout_s: float = field(default=5.0, metadata=no_flag())
    shutdown_grace_s: float = field(default=1.0, metadata=no_flag())
    # Prometheus /metrics ("host:port", port 0 = any free); None = not served.
    metrics_listen_address: str | None = field(default=None, metadata=METRICS)
    # Most instances registered at once: bounds every snapshot well below the gRPC message
    # limit (voltana.rpc.limits bounds each field).
    max_instances: int = field(default=1024, metadata=no_flag())
    # Samples and completions stamped further than this ahead of telemetry's clock are
    # refused (a clock in the future would make every later sample look late).
    max_future_skew_s: float = field(default=10.0, metadata=no_flag())
    # GetAggregates calls a second each caller host may make (and at once: burst). Reads are
    # open (docs/security.md), so this bounds what one stranger can make telemetry compute;
    # 0 = unlimited.
    aggregates_rate_per_s: float = field(
        default=20.0,
        metadata=flag(
            "GetAggregates calls a second each client host may make (40 at once); 0 = unlimited",
            name="--aggregates-rate",
            parse=non_negative_float,
        ),
    )
    aggregates_burst: int = field(default=40, metadata=no_flag())
    # Control-plane token (registration and reports need it) and TLS; voltana.rpc.security.
    security: RpcSecurity = field(default_factory=RpcSecurity, metadata=SECURITY)

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
