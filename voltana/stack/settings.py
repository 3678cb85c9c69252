"""Settings of a whole simulated Voltana stack run in one process (`voltana up --sim`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from voltana.contract.state import SloTarget
from voltana.errors import ConfigError
from voltana.hardware import get_gpu, get_model
from voltana.rpc import RpcSecurity
from voltana.services.telemetry.redis_store import DEFAULT_KEY_PREFIX

# Metrics ports in order: router, telemetry, controller, then one per instance's agent.
METRICS_PORTS_BEFORE_AGENTS = 3


@dataclass(frozen=True)
class SimStackSettings:
    prefill: int = 2
    decode: int = 2
    # Colocated instances (SGLang without disaggregation: each prefills and decodes), alone
    # (prefill = decode = 0) or beside the PD pair.
    unified: int = 0
    gpu_key: str = "a100-80g"
    model_key: str = "llama-3.1-8b"
    tp: int = 1
    # A Hugging Face config.json for a model outside the catalog (replaces model_key), and a
    # measured profile (voltana profile): the simulated GPUs follow it and the policies use it
    # (its GPU, model and TP replace gpu_key, model_key and tp).
    model_config_path: str | None = None
    profile_path: str | None = None
    # Operating policy for the controller and the router (voltana.policy.registry names).
    policy: str = "static-max"
    # Router name overriding the policy's own router; None keeps it.
    router: str | None = None
    slo: SloTarget = field(default_factory=SloTarget)
    # Simulated time runs this many times faster than wall time (engines and GPUs only).
    speedup: float = 1.0
    # redis://host:port/db for telemetry; None keeps telemetry in process memory. Not in repr:
    # it may hold a password.
    redis_url: str | None = field(default=None, repr=False)
    redis_password: str | None = field(default=None, repr=False)
    redis_key_prefix: str = DEFAULT_KEY_PREFIX
    # Every server listens on this host; ports 0 pick free ones.
    host: str = "127.0.0.1"
    router_port: int = 0
    # Active-active routers (ids router-0, router-1, ...): router i on router_port + i (and
    # the HTTP door on http_port + i) when those are set and not another service's port
    # (`router_port_of`); extra routers' /metrics on free ports.
    routers: int = 1
    telemetry_port: int = 0
    controller_port: int = 0
    # Prometheus /metrics of each service on this host: None = not served; 0 = free ports;
    # N = router on N, telemetry N+1, controller N+2, then each instance's node agent.
    metrics_port: int | None = None
    # The router's HTTP front door (OpenAI /v1/*, SGLang /generate): None = not served; 0 =
    # a free port.
    http_port: int | None = None
    # Engine load reports, GPU samples, controller ticks and router snapshots (wall ms).
    report_interval_ms: float = 50.0  # engines report load this often (loopback: cheap)
    sample_interval_ms: int = 250
    control_interval_ms: int = 50
    snapshot_interval_ms: int = 100
    lease_ttl_ms: int = 3000
    # Delay before a clock change takes effect (simulated ms); None = the GPU catalog's.
    clock_change_delay_ms: float | None = None
    # The router asks the controller to decide the placed instances' clocks before dispatching
    # (off: clocks follow at the next control tick, as a deployment without the notice would).
    placement_notices: bool = True
    # Longest the router waits for the controller's answer before dispatching anyway.
    placement_notice_timeout_ms: int = 100
    max_running_requests: int = 1024
    # Engines report each request's energy (Voltana's extension); off: like real SGLang, and
    # the router estimates it from the GPUs' energy counters.
    engines_report_energy: bool = True
    # stop(): how long engines let in-flight requests finish before aborting them (wall s).
    drain_timeout_s: float = 2.0
    # start() fails when the router does not see every instance within this (wall s).
    ready_timeout_s: float = 15.0
    # What every service of the stack uses: by default a fresh random control-plane token
    # (so authentication is on) and no TLS.
    security: RpcSecurity = field(default_factory=RpcSecurity.generated)

    def __post_init__(self) -> None:
        for name in ("prefill", "decode", "unified"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if (self.prefill < 1) != (self.decode < 1):
            raise ConfigError(
                "PD serving needs at least one prefill and one decode instance "
                f"(got {self.prefill} prefill, {self.decode} decode)"
            )
        if self.prefill + self.unified < 1:
            raise ConfigError("the stack needs a prefill and a decode instance, or a unified one")
        for name in (
            "routers",
            "tp",
            "sample_interval_ms",
            "control_interval_ms",
            "snapshot_interval_ms",
            "lease_ttl_ms",
            "max_running_requests",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("router_port", "telemetry_port", "controller_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{name} must be in 0..65535, got {getattr(self, name)}")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ConfigError(f"http_port must be in 0..65535, got {self.http_port}")
        for name in ("router_port", "http_port"):
            port = getattr(self, name)
            if port and port + self.routers - 1 > 65535:
                raise ConfigError(
                    f"{name} must leave room for {self.routers} routers below 65536, got {port}"
                )
        if self.metrics_port is not None:
            last_port = self.metrics_port + METRICS_PORTS_BEFORE_AGENTS + self.num_instances
            if self.metrics_port < 0 or (self.metrics_port and last_port - 1 > 65535):
                raise ConfigError(
                    f"metrics_port must leave room for {last_port - self.metrics_port} ports "
                    f"below 65536, got {self.metrics_port}"
                )
        for name in ("speedup", "report_interval_ms", "ready_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value}")
        if not (math.isfinite(self.drain_timeout_s) and self.drain_timeout_s >= 0):
            raise ConfigError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")
        if self.clock_change_delay_ms is not None and not self.clock_change_delay_ms >= 0:
            raise ConfigError(
                f"clock_change_delay_ms must be >= 0, got {self.clock_change_delay_ms}"
            )
        if not (self.slo.ttft_ms > 0 and self.slo.itl_ms > 0):
            raise ConfigError(f"SLO targets must be > 0, got {self.slo}")
        if not self.host:
            raise ConfigError("host must not be empty")
        if not self.profile_path:
            get_gpu(self.gpu_key)  # UnknownNameError lists the valid keys
            if not self.model_config_path:
                get_model(self.model_key)

    def fixed_ports(self) -> dict[str, int]:
        """Every port this stack was asked to take by number (name as printed -> port)."""
        ports = {
            "router": self.router_port,
            "router.http": self.http_port or 0,
            "telemetry": self.telemetry_port,
            "controller": self.controller_port,
        }
        for index in range(1, self.routers):
            ports[f"router-{index}"] = self.router_port_of(index, self.router_port)
            ports[f"router-{index}.http"] = self.router_port_of(index, self.http_port or 0)
        if self.metrics_port:
            services = ["router", "telemetry", "controller"]
            services += [f"prefill-{i}.agent" for i in range(self.prefill)]
            services += [f"decode-{i}.agent" for i in range(self.decode)]
            services += [f"unified-{i}.agent" for i in range(self.unified)]
            for offset, service in enumerate(services):
                ports[f"{service}.metrics"] = self.metrics_port + offset
        return {name: port for name, port in ports.items() if port}

    @property
    def num_instances(self) -> int:
        return self.prefill + self.decode + self.unified

    @property
    def shape(self) -> str:
        """E.g. 2P2D, 2U, 1P1D+1U."""
        parts = [f"{self.prefill}P{self.decode}D"] if self.prefill else []
        if self.unified:
            parts.append(f"{self.unified}U")
        return "+".join(parts)

    def router_port_of(self, index: int, first: int) -> int:
        """Router ``index``'s port counted from ``first`` (the router or HTTP port): first + index,
        or any free port (0) when ``first`` is 0 or that port belongs to another service (the
        well-known ports sit side by side: router 50051, telemetry 50052)."""
        if not first:
            return 0
        others = {self.telemetry_port, self.controller_port} - {0}
        candidate = first + index
        return 0 if index and candidate in others else candidate

    def metrics_address(self, offset: int) -> str | None:
        """Where the ``offset``-th service serves /metrics (None when metrics are off)."""
        if self.metrics_port is None:
            return None
        return self.address(self.metrics_port + offset if self.metrics_port else 0)

    def address(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{port}"
