"""Settings of one node agent (one per GPU host)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from voltana.deploy.ports import AGENT_PORT
from voltana.errors import ConfigError
from voltana.flags import flag, no_flag
from voltana.flags.common import METRICS, SECURITY, listen_flag
from voltana.flags.values import host_port, instance_binding, non_negative_int, positive_int
from voltana.rpc.security import RpcSecurity

# "sim-shared": simulated GPUs whose state lives in files under sim_state_dir, shared with
# the simulated engines (and this agent's fail-safe watchdog) in other processes.
AgentBackend = Literal["nvml", "sim", "sim-shared"]
BACKENDS: tuple[AgentBackend, ...] = ("nvml", "sim", "sim-shared")


@dataclass(frozen=True)
class AgentSettings:
    # Loopback by default: the agent changes clocks, so exposing it is a deliberate choice.
    listen_address: str = field(default="127.0.0.1:0", metadata=listen_flag(AGENT_PORT))
    # host:port the agent reports in ListGpus and samples; empty = 127.0.0.1:<bound port>.
    advertise_address: str = field(
        default="",
        metadata=flag(
            "address the controller dials, reported in samples",
            name="--advertise",
            parse=host_port,
            metavar="HOST:PORT",
            default_help="the bound address",
        ),
    )
    backend: AgentBackend = field(
        default="sim",
        metadata=flag(
            "GPU backend; sim-shared: simulated GPUs shared with `serve engine "
            "--gpu-state-dir` processes",
            choices=BACKENDS,
            default="nvml",  # a deployed agent drives real GPUs
        ),
    )
    # GPUs this agent controls; empty = every GPU NVML sees (nvml) or one GPU, index 0 (sim).
    gpu_indices: tuple[int, ...] = field(
        default=(),
        metadata=flag(
            "GPU to control, repeatable",
            name="--gpu-index",
            parse=non_negative_int,
            convert=tuple,
            repeat=True,
            metavar="N",
            default_help="every GPU; sim: GPU 0",
        ),
    )
    # Catalog key (voltana.hardware) of the simulated GPUs; also reported as gpu_key.
    sim_gpu_key: str = field(
        default="a100-80g", metadata=flag("GPU type of the sim backend", name="--sim-gpu")
    )
    # Catalog key to report for NVML GPUs; empty = match NVML's device name against the catalog.
    gpu_key: str = field(
        default="",
        metadata=flag("catalog GPU type to report", default_help="from NVML's name"),
    )
    # Serving instance → its GPU index, or the indices of a tensor-parallel instance's GPUs,
    # so selectors and samples can name instances (see ``instance_gpu_groups``).
    instance_gpu_indices: Mapping[str, int | Sequence[int]] = field(
        default_factory=dict,
        metadata=flag(
            "serving instance ID runs on GPU index GPU (a tensor-parallel one on several), "
            "repeatable",
            name="--instance",
            parse=instance_binding,
            convert=dict,
            repeat=True,
            metavar="ID=GPU[,GPU...]",
        ),
    )
    node_name: str = field(default="", metadata=flag("name of this host in logs"))
    # A SetClocks lease lasts this long unless the caller asks otherwise; requests are capped
    # at max_lease_ttl_ms so a forgotten (or hostile) lease cannot pin a low clock for long.
    default_lease_ttl_ms: int = field(
        default=10_000, metadata=flag("default clock lease", parse=positive_int)
    )
    max_lease_ttl_ms: int = field(
        default=30_000,
        metadata=flag("longest clock lease; longer requests are cut to it", parse=positive_int),
    )
    # After a clock change, poll the device until it reports the new clock, for at most this.
    readback_timeout_ms: float = field(default=200.0, metadata=no_flag())
    readback_poll_ms: float = field(default=10.0, metadata=no_flag())
    # Put every GPU back to default clocks at start (a previous agent may have crashed).
    reset_on_start: bool = field(
        default=True,
        metadata=flag(
            "do not reset every GPU to default clocks at start", name="--no-reset-on-start"
        ),
    )
    # sim-shared backend: directory of the shared GPU state files (voltana.gpu.shared_sim).
    sim_state_dir: str = field(
        default="",
        metadata=flag("sim-shared: directory of the shared GPU state files", metavar="DIR"),
    )
    # Run the fail-safe watchdog process (services/agent/failsafe_main.py) for GPUs that
    # outlive the agent (nvml, sim-shared): it resets them when the agent dies, or when a
    # lease has been over for failsafe_grace_s without the agent resetting it.
    failsafe_watchdog: bool = field(
        default=True,
        metadata=flag(
            "run no watchdog process that resets the GPUs if the agent dies (nvml, sim-shared)",
            name="--no-failsafe-watchdog",
        ),
    )
    failsafe_grace_s: float = field(default=1.0, metadata=no_flag())
    # Telemetry service to stream GPU samples to (host:port); None = no streaming.
    telemetry_address: str | None = field(
        default=None,
        metadata=flag(
            "telemetry to stream GPU samples to",
            name="--telemetry",
            parse=host_port,
            metavar="HOST:PORT",
            default_help="none",
        ),
    )
    sample_interval_ms: int = field(
        default=500, metadata=flag("GPU sampling period", parse=positive_int)
    )
    # Control-plane token (SetClocks/ResetClocks/RenewLease require it; GPU samples to
    # telemetry carry it) and TLS files; voltana.rpc.security.
    security: RpcSecurity = field(default_factory=RpcSecurity, metadata=SECURITY)
    shutdown_grace_s: float = field(default=2.0, metadata=no_flag())
    # Prometheus /metrics ("host:port", port 0 = any free); None = not served.
    metrics_listen_address: str | None = field(default=None, metadata=METRICS)

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
