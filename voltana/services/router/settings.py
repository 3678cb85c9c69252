"""Settings of the router service (one or more per cluster; they share nothing but telemetry)."""

from __future__ import annotations

import math
import os
import secrets
import socket
from dataclasses import dataclass, field

from voltana.contract.state import SloTarget
from voltana.deploy.ports import ROUTER_PORT, TELEMETRY_PORT
from voltana.errors import ConfigError
from voltana.flags import composed, flag, no_flag
from voltana.flags.common import (
    GPU,
    METRICS,
    MODEL,
    MODEL_CONFIG,
    PROFILE,
    SECURITY,
    SLO,
    TP,
    drain_flag,
    listen_flag,
)
from voltana.flags.values import (
    host_port,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from voltana.perf.selection import resolve_physics
from voltana.policy.base import PolicyContext
from voltana.policy.flags import POLICY, ROUTER
from voltana.rpc.auth import check_token
from voltana.rpc.limits import check_id
from voltana.rpc.security import RpcSecurity
from voltana.services.router.http_limits import HttpLimits


def default_router_id() -> str:
    """A router id unique among live routers: host name, process id, and a random part (two
    routers of one process, a restart that gets the same process id)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class RouterSettings:
    # "host:port"; port 0 = any free port (RouterService.address tells which).
    listen_address: str = field(default="127.0.0.1:0", metadata=listen_flag(ROUTER_PORT))
    # TelemetryService to watch snapshots from and report completions to ("host:port").
    telemetry_address: str = field(
        default=f"127.0.0.1:{TELEMETRY_PORT}",
        metadata=flag(
            "telemetry service to watch snapshots from and report completions to",
            name="--telemetry",
            parse=host_port,
            metavar="HOST:PORT",
        ),
    )
    # ControllerService to notify of each placement, so the placed instances' clocks are
    # decided at once ("" = no notice: clocks follow at the next tick). A request placed on a
    # possibly parked instance waits for the answer; other notices are queued and coalesced.
    controller_address: str = field(
        default="",
        metadata=flag(
            "controller to notify of each placement, so the placed instances' clocks are "
            "decided at once; a request placed on a possibly parked idle instance waits for "
            "the new clock",
            name="--controller",
            metavar="HOST:PORT",
            default_help="none; clocks follow at its next tick",
        ),
    )
    # Longest wait for the controller's answer (a waiting request is dispatched anyway then).
    placement_notice_timeout_ms: int = field(
        default=100,
        metadata=flag(
            "longest wait for the controller's answer before dispatching anyway",
            parse=positive_int,
        ),
    )
    # Queued notices go at most this often (each covers every placement since the last one).
    placement_notice_interval_ms: int = field(
        default=5,
        metadata=flag(
            "queued placement notices go at most this often, each covering every placement "
            "since the last",
            parse=positive_int,
        ),
    )
    # Placements are reported to telemetry (arrival rates) in batches this often, with this
    # router's in-flight share (active-active routers see each other's through telemetry).
    placement_report_interval_ms: int = field(default=50, metadata=no_flag())
    # This router's name among active-active routers ("" = host name and process id). Two
    # live routers must not share one: each one's report replaces the other's share.
    # (default_router_id gives a fresh one.)
    router_id: str = field(
        default="",
        metadata=flag(
            "this router's name among active-active routers (their in-flight shares in "
            "telemetry are kept apart by it)",
            default_help="host name, process id and a random part",
        ),
    )
    # Operating policy (voltana.policy.registry names, e.g. "static-max"); its router places.
    policy: str = field(default="static-max", metadata=flag(POLICY))
    # Router name that overrides the policy's own router (e.g. "least-loaded"); None = keep it.
    router: str | None = field(default=None, metadata=flag(ROUTER))
    # Hardware the policy reasons about (voltana.hardware catalog keys). The GPU is the one
    # the instances' node agents detect and report through telemetry; gpu_key only stands in
    # until an instance reports a catalogued GPU.
    gpu_key: str = field(default="a100-80g", metadata=flag(GPU))
    model_key: str = field(default="llama-3.1-8b", metadata=flag(MODEL))
    tp: int = field(default=1, metadata=flag(TP))
    # A Hugging Face config.json for a model outside the catalog (replaces model_key), and a
    # measured profile (voltana profile; replaces the GPU, model and tp).
    model_config_path: str | None = field(default=None, metadata=flag(MODEL_CONFIG))
    profile_path: str | None = field(default=None, metadata=flag(PROFILE))
    # Cluster SLO: requests without their own are held to this one.
    slo: SloTarget = field(default_factory=SloTarget, metadata=SLO)
    # max_new_tokens when the request leaves it out, and the most a request may ask for.
    default_max_new_tokens: int = field(
        default=128,
        metadata=flag("max_new_tokens of requests that set none", parse=positive_int),
    )
    max_new_tokens_limit: int = field(
        default=16_384,
        metadata=flag("most tokens a request may ask for", parse=positive_int),
    )
    # Longest prompt accepted, tokens. The router has no tokenizer: text prompts count as the
    # simulated engines tokenize them, each word in pieces of chars_per_token_estimate
    # characters (~4 is typical of English BPE; real tokenizers add BOS and chat templates).
    max_prompt_tokens: int = field(
        default=32_768, metadata=flag("longest prompt accepted", parse=positive_int)
    )
    chars_per_token_estimate: float = field(default=4.0, metadata=no_flag())
    # The served model's vocabulary: a request with a token id at or above it (in input_ids or
    # stop_token_ids) is refused here. Real SGLang (0.5.x) does not check input_ids: one id
    # outside its embedding table kills the whole server. 0 = not checked.
    vocab_size: int = field(
        default=0,
        metadata=flag(
            "the served model's vocabulary size: refuse token ids at or above it (one "
            "outside it crashes a real SGLang server)",
            parse=non_negative_int,
            metavar="N",
            default_help="0: not checked",
        ),
    )
    # Telemetry watch period. The router never asks telemetry per request.
    snapshot_interval_ms: int = field(
        default=100, metadata=flag("telemetry watch period", parse=positive_int)
    )
    # start() waits this long for the first snapshot (requests get UNAVAILABLE until one comes).
    initial_snapshot_timeout_s: float = field(default=5.0, metadata=no_flag())
    # Pause before re-opening a broken watch stream (doubles up to 4x while telemetry is down).
    watch_retry_s: float = field(default=0.5, metadata=no_flag())
    # A snapshot older than this is marked stale (metric voltana_router_snapshot_stale, a log
    # line): telemetry is unreachable. Requests are still placed on it as before; telemetry's
    # watch resends at least every 5 s on a quiet cluster, so keep this above that.
    snapshot_stale_after_s: float = field(
        default=10.0,
        metadata=flag(
            "mark the cluster snapshot stale (metric, log) when telemetry sent none this "
            "long; requests are still placed on it",
            parse=positive_float,
        ),
    )
    # When snapshots stop listing any instance of a phase they listed before (Redis restarted
    # empty; instances register again within a report or two), the last ones seen are kept
    # this long, so requests keep going to them; 0 = drop them at once.
    vanished_phase_grace_s: float = field(default=3.0, metadata=no_flag())
    # Instances silent for longer than this (snapshot now_s - last_activity_s) are not routed
    # to; 0 = route to every instance telemetry lists. Only meaningful when reporters stamp
    # samples on telemetry's clock (sped-up simulated engines do not). Telemetry itself
    # expires silent instances (its instance_ttl_s), on its own clock.
    instance_stale_after_s: float = field(
        default=0.0,
        metadata=flag("skip instances silent this long; 0 = never", parse=non_negative_float),
    )
    # Engine calls: connecting, and the whole request when the client sets no shorter deadline.
    engine_connect_timeout_s: float = field(default=5.0, metadata=no_flag())
    engine_request_timeout_s: float = field(
        default=600.0,
        metadata=flag("longest engine call when the client sets no deadline", parse=positive_float),
    )
    # Most open engine connections (a PD request holds two); 0 = no limit. A limit below twice
    # the requests in flight queues requests.
    max_engine_connections: int = field(default=0, metadata=no_flag())
    # Placements per request: one whose engine cannot be reached or aborts it before the
    # first token goes to other instances, up to this many tries in all.
    max_attempts: int = field(
        default=3,
        metadata=flag(
            "placements per request when engines fail before the first token",
            parse=positive_int,
        ),
    )
    # Active health checks: GET /health of every engine this often (0 = only passive checks:
    # a failed call ejects the instance); ejected after `unhealthy_after` failed probes in a
    # row, readmitted after `healthy_after` passed ones.
    health_check_interval_s: float = field(
        default=0.5,
        metadata=flag(
            "probe every engine's /health this often; 0 = only eject on failed calls",
            parse=non_negative_float,
        ),
    )
    # Real SGLang's /health runs a one-token generation and answers no sooner than 1 s (it
    # looks for the scheduler's answer once a second; 0.5.x), so a shorter timeout ejects every
    # healthy server. A dead one refuses the connection at once, whatever the timeout.
    health_check_timeout_s: float = field(
        default=5.0,
        metadata=flag(
            "a health probe that takes longer fails (SGLang's /health takes at least 1 s)",
            parse=positive_float,
        ),
    )
    unhealthy_after: int = field(default=2, metadata=no_flag())
    healthy_after: int = field(default=2, metadata=no_flag())
    # Completions buffered for telemetry (kept and retried while it is down); beyond this
    # many the oldest are dropped (with a log line).
    completion_queue_size: int = field(default=100_000, metadata=no_flag())
    # Completions go to telemetry in one call at most this often (what finished meanwhile goes
    # in the next), so a router under load makes a few calls a second, not one per request.
    completion_report_interval_ms: int = field(default=20, metadata=no_flag())
    telemetry_timeout_s: float = field(default=2.0, metadata=no_flag())
    # stop(): in-flight requests may finish for this long (the drain); the rest are ended
    # with UNAVAILABLE and recorded.
    shutdown_grace_s: float = field(
        default=5.0,
        metadata=drain_flag(
            "health turns NOT_SERVING at once and no new request is taken; those still "
            "running after it end with UNAVAILABLE (a stream that sent its last token finishes)"
        ),
    )
    # stop(): how long buffered completions may take to reach telemetry.
    completion_flush_timeout_s: float = field(default=5.0, metadata=no_flag())
    # Prometheus /metrics ("host:port", port 0 = any free); None = not served.
    metrics_listen_address: str | None = field(default=None, metadata=METRICS)
    # HTTP front door (OpenAI /v1/*, SGLang /generate; "host:port", port 0 = any free); None =
    # gRPC only. It serves one model name: served_model_name ("" = model_key).
    http_listen_address: str | None = field(
        default=None, metadata=composed("--http-port, --no-http (serve router)")
    )
    served_model_name: str = field(
        default="",
        metadata=flag("the model name clients ask for", default_help="--model's key"),
    )
    # Its body size and JSON depth limits, read timeouts and connections per client.
    http_limits: HttpLimits = field(
        default_factory=HttpLimits, metadata=composed("HttpLimits' flags, --http-*")
    )
    # Control-plane token (completion reports to telemetry need it) and TLS.
    security: RpcSecurity = field(default_factory=RpcSecurity, metadata=SECURITY)
    # When not empty, Generate and Place need one of these keys (or the control-plane token)
    # as "authorization: Bearer <key>" metadata; empty = request submission is open.
    api_keys: frozenset[str] = field(
        default_factory=frozenset,
        repr=False,
        metadata=composed("--api-key-file (security_opts)"),
    )

    def __post_init__(self) -> None:
        if ":" not in self.listen_address:
            raise ConfigError(
                f"router listen_address must be host:port, got {self.listen_address!r}"
            )
        if ":" not in self.telemetry_address:
            raise ConfigError(
                f"router telemetry_address must be host:port, got {self.telemetry_address!r}"
            )
        if self.http_listen_address is not None and ":" not in self.http_listen_address:
            raise ConfigError(
                f"router http_listen_address must be host:port, got {self.http_listen_address!r}"
            )
        if self.metrics_listen_address is not None and ":" not in self.metrics_listen_address:
            raise ConfigError(
                "router metrics_listen_address must be host:port, got "
                f"{self.metrics_listen_address!r}"
            )
        if self.router is not None and not self.router:
            raise ConfigError("router name must not be empty (None keeps the policy's router)")
        for name in (
            "tp",
            "default_max_new_tokens",
            "max_new_tokens_limit",
            "max_prompt_tokens",
            "snapshot_interval_ms",
            "placement_notice_timeout_ms",
            "placement_notice_interval_ms",
            "placement_report_interval_ms",
            "completion_queue_size",
            "completion_report_interval_ms",
            "max_attempts",
            "unhealthy_after",
            "healthy_after",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"router {name} must be >= 1, got {getattr(self, name)}")
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            raise ConfigError(
                "router default_max_new_tokens must be <= max_new_tokens_limit, got "
                f"{self.default_max_new_tokens} > {self.max_new_tokens_limit}"
            )
        for name in (
            "chars_per_token_estimate",
            "watch_retry_s",
            "snapshot_stale_after_s",
            "engine_connect_timeout_s",
            "engine_request_timeout_s",
            "telemetry_timeout_s",
            "health_check_timeout_s",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"router {name} must be a finite number > 0, got {value}")
        if self.max_engine_connections < 0:
            raise ConfigError(
                f"router max_engine_connections must be >= 0, got {self.max_engine_connections}"
            )
        for name in (
            "initial_snapshot_timeout_s",
            "instance_stale_after_s",
            "vanished_phase_grace_s",
            "shutdown_grace_s",
            "completion_flush_timeout_s",
            "health_check_interval_s",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"router {name} must be a finite number >= 0, got {value}")
        if not (self.slo.ttft_ms > 0 and self.slo.itl_ms > 0):
            raise ConfigError(f"router slo targets must be > 0, got {self.slo}")
        for key in self.api_keys:
            check_token(key, "an API key")
        if self.router_id:
            check_id(self.router_id, "router_id", error=ConfigError)

    def policy_context(self, gpu_key: str | None = None) -> PolicyContext:
        """The hardware and SLO the policy is built with (same as the simulator's), on the
        ``gpu_key`` GPU (default: ``self.gpu_key``; a profile brings its own)."""
        physics = resolve_physics(
            gpu_key=gpu_key or self.gpu_key,
            model_key=self.model_key,
            tensor_parallel=self.tp,
            model_config_path=self.model_config_path,
            profile_path=self.profile_path,
        )
        return PolicyContext(physics.gpu, physics.perf, self.slo)
