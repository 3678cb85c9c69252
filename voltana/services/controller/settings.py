"""Settings of the frequency controller (one per cluster)."""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass, field
from typing import Literal

from voltana.contract.state import SloTarget, slo_problem
from voltana.control import DEFAULT_PLACEMENT_HOLD_MS
from voltana.deploy.ports import CONTROLLER_PORT, TELEMETRY_PORT
from voltana.errors import ConfigError
from voltana.flags import flag, no_flag
from voltana.flags.common import (
    GPU,
    METRICS,
    MODEL,
    MODEL_CONFIG,
    PROFILE,
    SECURITY,
    SLO,
    TP,
    listen_flag,
)
from voltana.flags.values import host_port, positive_int
from voltana.hardware import get_gpu, get_model
from voltana.policy.flags import POLICY
from voltana.rpc.security import RpcSecurity

# "watch": one WatchSnapshots stream (telemetry pushes changes); "poll": GetSnapshot per tick.
SnapshotMode = Literal["watch", "poll"]


def default_controller_id() -> str:
    """Lease holder name agents record, e.g. "controller@gpu-host-1"."""
    return f"controller@{socket.gethostname()}"


@dataclass(frozen=True)
class ControllerSettings:
    # TelemetryService to read instance states and endpoints from (host:port).
    telemetry_address: str = field(
        metadata=flag(
            "telemetry service to read instance states from",
            name="--telemetry",
            parse=host_port,
            metavar="HOST:PORT",
            default=f"127.0.0.1:{TELEMETRY_PORT}",
        )
    )
    # "host:port" of the ControllerService; port 0 = any free port (ControllerService.address).
    listen_address: str = field(default="127.0.0.1:0", metadata=listen_flag(CONTROLLER_PORT))
    # Policy for both phases at start: any name voltana.policy.registry.build_suite accepts.
    policy: str = field(default="static-max", metadata=flag(POLICY))
    slo: SloTarget = field(default_factory=SloTarget, metadata=SLO)
    # The hardware and model policies predict for (voltana.hardware catalog keys). Instances
    # reporting another catalogued GPU get a policy built for their own GPU.
    gpu_key: str = field(default="a100-80g", metadata=flag(GPU))
    model_key: str = field(default="llama-3.1-8b", metadata=flag(MODEL))
    tensor_parallel: int = field(default=1, metadata=flag(TP))
    # A Hugging Face config.json for a model outside the catalog (replaces model_key), and a
    # measured profile (voltana profile; replaces gpu_key, model_key and tensor_parallel for
    # instances on the profiled GPU).
    model_config_path: str | None = field(default=None, metadata=flag(MODEL_CONFIG))
    profile_path: str | None = field(default=None, metadata=flag(PROFILE))
    # Decide at least this often (and whenever a new snapshot arrives).
    control_interval_ms: int = field(
        default=50, metadata=flag("decide at least this often", parse=positive_int)
    )
    # The router's view sent with a placement stands until a later report shows work on the
    # instance, or for at most this long: a report taken between the notice and the
    # request's arrival at the engine shows an idle instance, and must not park the clock
    # the notice just raised.
    placement_hold_ms: int = field(default=DEFAULT_PLACEMENT_HOLD_MS, metadata=no_flag())
    snapshot_mode: SnapshotMode = field(
        default="watch",
        metadata=flag("follow telemetry by watch stream or by polling", choices=("watch", "poll")),
    )
    # Lease asked for on every SetClocks; renewed every ttl/3, so a controller that dies
    # leaves its clocks locked for at most this long before agents reset them.
    lease_ttl_ms: int = field(
        default=3000,
        metadata=flag(
            "clock lease asked of agents; a dead controller's clocks reset after it",
            parse=positive_int,
        ),
    )
    # Deadline of each agent/telemetry unary call.
    rpc_timeout_ms: int = field(default=1000, metadata=no_flag())
    # A failed SetClocks is retried on the next tick, then with doubling pauses up to this.
    retry_backoff_max_ms: int = field(default=2000, metadata=no_flag())
    # With telemetry unreachable this long the controller stops deciding and stops renewing
    # leases, so agents fall back to default clocks (the latency-safe state).
    telemetry_stale_after_ms: int = field(default=5000, metadata=no_flag())
    # Decisions kept per instance, and how many GetStatus returns when asked for 0.
    decision_history: int = field(default=100, metadata=no_flag())
    status_decisions: int = field(default=10, metadata=no_flag())
    # Lease holder identity sent to agents; empty = "controller@<hostname>".
    controller_id: str = field(
        default="", metadata=flag("lease holder name", default_help="controller@HOST")
    )
    # Control-plane token (SetSlo/SetPolicy need it; sent to agents and telemetry) and TLS.
    security: RpcSecurity = field(default_factory=RpcSecurity, metadata=SECURITY)
    # On stop, ask agents to reset the clocks this controller holds (best effort; agents reset
    # on lease expiry anyway).
    reset_clocks_on_stop: bool = field(
        default=True,
        metadata=flag(
            "do not ask agents to reset clocks on stop (leases still lapse)",
            name="--keep-clocks-on-stop",
        ),
    )
    shutdown_grace_s: float = field(default=1.0, metadata=no_flag())
    # Prometheus /metrics ("host:port", port 0 = any free); None = not served.
    metrics_listen_address: str | None = field(default=None, metadata=METRICS)

    def __post_init__(self) -> None:
        for name in ("listen_address", "telemetry_address"):
            if ":" not in getattr(self, name):
                raise ConfigError(
                    f"controller {name} must be host:port, got {getattr(self, name)!r}"
                )
        if self.metrics_listen_address is not None and ":" not in self.metrics_listen_address:
            raise ConfigError(
                "controller metrics_listen_address must be host:port, got "
                f"{self.metrics_listen_address!r}"
            )
        if self.snapshot_mode not in ("watch", "poll"):
            raise ConfigError(
                f"controller snapshot_mode must be 'watch' or 'poll', got {self.snapshot_mode!r}"
            )
        problem = slo_problem(self.slo)
        if problem is not None:
            raise ConfigError(f"controller slo: {problem}")
        if not self.profile_path:
            get_gpu(self.gpu_key)  # UnknownNameError (a ConfigError) lists the valid keys
            if not self.model_config_path:
                get_model(self.model_key)
        for name in (
            "tensor_parallel",
            "control_interval_ms",
            "placement_hold_ms",
            "lease_ttl_ms",
            "rpc_timeout_ms",
            "retry_backoff_max_ms",
            "telemetry_stale_after_ms",
            "decision_history",
            "status_decisions",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"controller {name} must be >= 1, got {getattr(self, name)}")
        if self.lease_ttl_ms < 3 * self.control_interval_ms:
            raise ConfigError(
                "controller lease_ttl_ms must be >= 3 * control_interval_ms, got "
                f"{self.lease_ttl_ms} < 3 * {self.control_interval_ms}"
            )
        if not (math.isfinite(self.shutdown_grace_s) and self.shutdown_grace_s >= 0):
            raise ConfigError(f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s}")

    @property
    def holder(self) -> str:
        return self.controller_id or default_controller_id()

    @property
    def control_interval_s(self) -> float:
        return self.control_interval_ms / 1000.0

    @property
    def lease_renew_interval_s(self) -> float:
        return self.lease_ttl_ms / 3000.0

    @property
    def rpc_timeout_s(self) -> float:
        return self.rpc_timeout_ms / 1000.0
