"""Settings of one node agent (one per GPU host)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from voltana.errors import ConfigError
from voltana.rpc.security import RpcSecurity

# "sim-shared": simulated GPUs whose state lives in files under sim_state_dir, shared with
# the simulated engines (and this agent's fail-safe watchdog) in other processes.
AgentBackend = Literal["nvml", "sim", "sim-shared"]
BACKENDS: tuple[AgentBackend, ...] = ("nvml", "sim", "sim-shared")


@dataclass(frozen=True)
class AgentSettings:
    # Loopback by default: the agent changes clocks, so exposing it is a deliberate choice.
    listen_address: str = "127.0.0.1:0"
    # host:port the agent reports in ListGpus and samples; empty = 127.0.0.1:<bound port>.
    advertise_address: str = ""
    backend: AgentBackend = "sim"
    # GPUs this agent controls; empty = every GPU NVML sees (nvml) or one GPU, index 0 (sim).
    gpu_indices: tuple[int, ...] = ()
    # Catalog key (voltana.hardware) of the simulated GPUs; also reported as gpu_key.
    sim_gpu_key: str = "a100-80g"
    # Catalog key to report for NVML GPUs; empty = match NVML's device name against the catalog.
    gpu_key: str = ""
    # Serving instance → its GPU index, or the indices of a tensor-parallel instance's GPUs,
    # so selectors and samples can name instances (see ``instance_gpu_groups``).
    instance_gpu_indices: Mapping[str, int | Sequence[int]] = field(default_factory=dict)
    node_name: str = ""
    # A SetClocks lease lasts this long unless the caller asks otherwise; requests are capped
    # at max_lease_ttl_ms so a forgotten (or hostile) lease cannot pin a low clock for long.
    default_lease_ttl_ms: int = 10_000
    max_lease_ttl_ms: int = 30_000
    # After a clock change, poll the device until it reports the new clock, for at most this.
    readback_timeout_ms: float = 200.0
    readback_poll_ms: float = 10.0
    # Put every GPU back to default clocks at start (a previous agent may have crashed).
    reset_on_start: bool = True
    # sim-shared backend: directory of the shared GPU state files (voltana.gpu.shared_sim).
    sim_state_dir: str = ""
    # Run the fail-safe watchdog process (services/agent/failsafe_main.py) for GPUs that
    # outlive the agent (nvml, sim-shared): it resets them when the agent dies, or when a
    # lease has been over for failsafe_grace_s without the agent resetting it.
    failsafe_watchdog: bool = True
    failsafe_grace_s: float = 1.0
    # Telemetry service to stream GPU samples to (host:port); None = no streaming.
    telemetry_address: str | None = None
    sample_interval_ms: int = 500
    # Control-plane token (SetClocks/ResetClocks/RenewLease require it; GPU samples to
    # telemetry carry it) and TLS files; voltana.rpc.security.
    security: RpcSecurity = field(default_factory=RpcSecurity)
    shutdown_grace_s: float = 2.0
    # Prometheus /metrics ("host:port", port 0 = any free); None = not served.
    metrics_listen_address: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"agent backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
            )
        if self.backend == "sim-shared" and not self.sim_state_dir:
            raise ConfigError("the sim-shared backend needs sim_state_dir")
        if any(index < 0 for index in self.gpu_indices):
            raise ConfigError(f"GPU indices must be >= 0, got {self.gpu_indices}")
        if len(set(self.gpu_indices)) != len(self.gpu_indices):
            raise ConfigError(f"GPU indices repeat: {self.gpu_indices}")
        if self.default_lease_ttl_ms <= 0 or self.max_lease_ttl_ms < self.default_lease_ttl_ms:
            raise ConfigError(
                "need 0 < default_lease_ttl_ms <= max_lease_ttl_ms, got "
                f"{self.default_lease_ttl_ms} and {self.max_lease_ttl_ms}"
            )
        for label, value in (
            ("readback_timeout_ms", self.readback_timeout_ms),
            ("readback_poll_ms", self.readback_poll_ms),
            ("shutdown_grace_s", self.shutdown_grace_s),
            ("failsafe_grace_s", self.failsafe_grace_s),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{label} must be a finite number >= 0, got {value}")
        if self.readback_poll_ms <= 0 < self.readback_timeout_ms:
            raise ConfigError("readback_poll_ms must be > 0 when readback_timeout_ms is")
        if self.sample_interval_ms <= 0:
            raise ConfigError(f"sample_interval_ms must be > 0, got {self.sample_interval_ms}")
        if self.metrics_listen_address is not None and ":" not in self.metrics_listen_address:
            raise ConfigError(
                f"metrics_listen_address must be host:port, got {self.metrics_listen_address!r}"
            )
        groups = self.instance_gpu_groups
        for instance, indices in groups.items():
            if not indices or any(index < 0 for index in indices):
                raise ConfigError(f"instance {instance!r} needs GPU indices >= 0, got {indices}")
            if len(set(indices)) != len(indices):
                raise ConfigError(f"instance {instance!r} names a GPU twice: {indices}")
        unknown = {
            instance: indices
            for instance, indices in groups.items()
            if self.gpu_indices and not set(indices) <= set(self.gpu_indices)
        }
        if unknown:
            raise ConfigError(f"instances bound to GPUs this agent does not control: {unknown}")

    @property
    def instance_gpu_groups(self) -> dict[str, tuple[int, ...]]:
        """Every instance's GPU indices (one for a single-GPU instance), in binding order."""
        return gpu_groups(self.instance_gpu_indices)

    @property
    def default_lease_ttl_s(self) -> float:
        return self.default_lease_ttl_ms / 1000.0

    @property
    def max_lease_ttl_s(self) -> float:
        return self.max_lease_ttl_ms / 1000.0


def gpu_groups(bindings: Mapping[str, int | Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Instance → GPU indices, with a single index written as a group of one."""
    return {
        instance: (indices,) if isinstance(indices, int) else tuple(indices)
        for instance, indices in bindings.items()
    }
