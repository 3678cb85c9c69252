"""Settings of one simulated SGLang engine."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from voltana.engine.protocol import DEFAULT_BOOTSTRAP_PORT
from voltana.errors import ConfigError
from voltana.flags import composed, flag, no_flag
from voltana.flags.common import GPU, MODEL, TP, drain_flag
from voltana.flags.values import non_negative_int, port_number, positive_float, positive_int

# Host and port come from `voltana serve engine --listen HOST:PORT`.
LISTEN = composed("--listen (serve engine)")


class EngineMode(enum.StrEnum):
    """SGLang's ``--disaggregation-mode``: ``null`` is one instance doing prefill and decode
    (a colocated, "unified" instance: ``UNIFIED`` is the same mode, and ``parse`` takes
    "unified" for it)."""

    PREFILL = "prefill"
    DECODE = "decode"
    NULL = "null"
    UNIFIED = "null"  # an alias: SGLang without disaggregation

    @classmethod
    def parse(cls, value: str | EngineMode) -> EngineMode:
        if isinstance(value, EngineMode):
            return value
        normalized = value.strip().lower()
        if normalized in ("mixed", "none", "unified", "colocated", ""):
            return cls.NULL
        try:
            return cls(normalized)
        except ValueError:
            valid = ", ".join([*(mode.value for mode in cls), "unified", "mixed"])
            raise ConfigError(f"unknown engine mode {value!r}; valid: {valid}") from None


@dataclass(frozen=True)
class SimEngineSettings:
    """Everything a ``SimEngine`` is built from. Ports 0 pick a free port (see ``SimEngine.url``).

    Times called ``*_timeout_s`` / ``*_interval_ms`` are wall-clock; latencies the engine reports
    (meta_info, /metrics, ``InstanceState``) are simulated seconds (wall time x ``speedup``).
    """

    host: str = field(default="127.0.0.1", metadata=LISTEN)
    port: int = field(default=0, metadata=LISTEN)
    mode: EngineMode | str = field(
        default=EngineMode.NULL,
        metadata=flag(
            "SGLang --disaggregation-mode; unified = null, a colocated instance that prefills "
            "and decodes",
            choices=(*(mode.value for mode in EngineMode), "unified"),
        ),
    )
    # Catalog keys; `voltana serve engine` resolves them with --model-config and --profile.
    gpu_key: str = field(default="a100-80g", metadata=flag(GPU))
    model_key: str = field(default="llama-3.1-8b", metadata=flag(MODEL))
    tp: int = field(default=1, metadata=flag(TP))
    # Simulated time runs this many times faster than wall time.
    speedup: float = field(
        default=1.0,
        metadata=flag("simulated time runs X times faster", parse=positive_float),
    )
    # Prefill mode: port of the KV bootstrap endpoint (0 = any free port). Decode mode: the
    # prefill bootstrap port a request without 'bootstrap_port' uses (0 = SGLang's 8998).
    bootstrap_port: int = field(
        default=0,
        metadata=flag(
            "prefill: KV bootstrap port", parse=port_number, default=DEFAULT_BOOTSTRAP_PORT
        ),
    )
    max_running_requests: int = field(
        default=1024, metadata=flag("decode batch limit", parse=positive_int)
    )
    chunked_prefill_size: int = field(
        default=8192, metadata=flag("prefill tokens per batch", parse=positive_int)
    )
    # Most requests one prefill batch takes.
    max_prefill_requests: int = field(default=64, metadata=no_flag())
    # KV-cache capacity in tokens; 0 = what the performance model says fits in GPU memory.
    max_total_num_tokens: int = field(
        default=0,
        metadata=flag("KV capacity in tokens; 0 = what fits in GPU memory", parse=non_negative_int),
    )
    # Id in telemetry; "" = "<mode>@<host>:<port>" once the port is bound.
    instance_id: str = field(
        default="", metadata=flag("id in telemetry", default_help="MODE@HOST:PORT")
    )
    # What /get_server_info and the metrics' model_name label show; "" = "sim/<model_key>".
    model_path: str = field(default="", metadata=no_flag())
    # Decode mode: how long a request waits for its KV cache before failing.
    kv_wait_timeout_s: float = field(default=30.0, metadata=no_flag())
    # On stop: how long in-flight requests may run before they are aborted.
    drain_timeout_s: float = field(
        default=5.0, metadata=drain_flag("requests still running after it end with an error")
    )
    # Period of the InstanceState reporter (when a sink is given).
    report_interval_ms: float = field(
        default=250.0, metadata=flag("load report period", parse=positive_float)
    )
    # Window of the recent TTFT/ITL medians and rates in InstanceState (simulated seconds).
    recent_window_s: float = field(default=5.0, metadata=no_flag())
    # SGLang's --incremental-streaming-output: stream deltas instead of cumulative text/ids
    # (SGLang's default, which resends the whole output in every chunk: quadratic in its
    # length for the engine and every reader).
    incremental_streaming_output: bool = field(default=True, metadata=no_flag())
    # When the event loop runs late (a busy host), iterations still follow each other back to
    # back in simulated time for up to this many wall seconds; beyond, the engine idles for
    # the lost time. Larger keeps simulated latency and energy exact under host stalls.
    catch_up_wall_s: float = field(default=0.02, metadata=no_flag())
    # Voltana's extension: the last chunk's meta_info carries the GPU energy attributed to the
    # request (voltana_energy). Off: like real SGLang, which reports none (the router
    # estimates it then).
    report_request_energy: bool = field(default=True, metadata=no_flag())

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", EngineMode.parse(self.mode))
        for name in ("port", "bootstrap_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise ConfigError(f"{name} must be in 0..65535, got {value}")
        for name in (
            "tp",
            "max_running_requests",
            "chunked_prefill_size",
            "max_prefill_requests",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_total_num_tokens < 0:
            raise ConfigError(f"max_total_num_tokens must be >= 0, got {self.max_total_num_tokens}")
        for name in (
            "speedup",
            "kv_wait_timeout_s",
            "report_interval_ms",
            "recent_window_s",
            "catch_up_wall_s",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.drain_timeout_s >= 0:
            raise ConfigError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")

    @property
    def engine_mode(self) -> EngineMode:
        """``mode`` as an ``EngineMode`` (``__post_init__`` normalises it)."""
        return EngineMode.parse(self.mode)

    @property
    def served_model_path(self) -> str:
        return self.model_path or f"sim/{self.model_key}"
