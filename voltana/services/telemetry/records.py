"""Plain values the telemetry store takes in and hands out (besides the contract's
``InstanceState`` and ``InstanceInfo``, voltana.contract)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from voltana.contract.state import SloTarget


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One NVML reading of the GPU behind an instance. ``energy_j`` is a monotonic counter.

    (``voltana.gpu.GpuSample`` is the agent's per-GPU reading; this one names the instance.)
    """

    instance_id: str
    ts_s: float
    sm_clock_mhz: int
    power_w: float
    energy_j: float


@dataclass(frozen=True, slots=True)
class Completion:
    """How one request ended, as the router saw it."""

    request_id: str
    prefill_id: str
    decode_id: str
    input_tokens: int
    output_tokens: int
    # None when no token came back (the request failed before its first token).
    ttft_ms: float | None
    # Mean gap between output tokens after the first; None with fewer than two output tokens.
    mean_itl_ms: float | None
    ok: bool
    finished_at_s: float
    reason: str = ""
    arrival_s: float = 0.0
    # The SLO this request was held to; None = judge it by the SLO the reader asks about.
    slo: SloTarget | None = None
    # gRPC status the client got ("OK", "UNAVAILABLE", ...); "" = derived from ``ok``.
    status: str = ""
    # GPU energy attributed to the request (active plus idle share) and its idle part, joules;
    # None when the engines do not report it (docs/energy.md).
    energy_j: float | None = None
    idle_energy_j: float | None = None
    # Unique per record, kept through retries and replays: the store counts an id once
    # ("" = deduplicated by content only).
    record_id: str = ""

    @property
    def status_name(self) -> str:
        """``status``, or "OK" / "UNKNOWN" from ``ok`` when the reporter gave none."""
        return self.status or ("OK" if self.ok else "UNKNOWN")

    @property
    def instance_ids(self) -> tuple[str, ...]:
        """Instances that served the request (one id when prefill and decode are the same;
        none when it failed before placement)."""
        ids = tuple(dict.fromkeys(i for i in (self.prefill_id, self.decode_id) if i))
        return ids


class Metric(enum.StrEnum):
    """Names of the per-instance time series the store keeps."""

    # From instance load reports.
    QUEUE_LEN = "queue_len"
    QUEUED_TOKENS = "queued_tokens"
    OLDEST_WAIT_MS = "oldest_wait_ms"
    RUNNING_PREFILL_TOKENS = "running_prefill_tokens"
    RUNNING_BATCH = "running_batch"
    KV_TOKENS_USED = "kv_tokens_used"
    ARRIVAL_RATE_RPS = "arrival_rate_rps"
    RECENT_TTFT_MS = "recent_ttft_ms"
    RECENT_ITL_MS = "recent_itl_ms"
    # From GPU samples.
    SM_CLOCK_MHZ = "sm_clock_mhz"
    POWER_W = "power_w"
    ENERGY_J = "energy_j"


LOAD_METRICS: tuple[Metric, ...] = (
    Metric.QUEUE_LEN,
    Metric.QUEUED_TOKENS,
    Metric.OLDEST_WAIT_MS,
    Metric.RUNNING_PREFILL_TOKENS,
    Metric.RUNNING_BATCH,
    Metric.KV_TOKENS_USED,
    Metric.ARRIVAL_RATE_RPS,
    Metric.RECENT_TTFT_MS,
    Metric.RECENT_ITL_MS,
)
GPU_METRICS: tuple[Metric, ...] = (Metric.SM_CLOCK_MHZ, Metric.POWER_W, Metric.ENERGY_J)


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    ts_s: float
    value: float


@dataclass(frozen=True, slots=True)
class Aggregates:
    """Rolling-window view over ``(now_s - window_s, now_s]`` of one instance or the cluster.

    Latency percentiles cover successful requests; attainment counts failed requests as
    missing their SLOs (docs/definitions.md) and judges each request by its own SLO when it
    carries one. ITL figures use each request's mean ITL. A request counts for both its
    prefill and its decode instance.
    """

    instance_id: str | None
    window_s: float
    now_s: float
    # Requests that finished in the window, successfully or not, and the failed ones among them.
    finished: int
    failed: int
    # Finished requests per second over the window (the rate requests left the system).
    request_rate_rps: float
    # Output tokens of the requests that finished in the window.
    output_tokens: int
    ttft_p50_ms: float | None
    ttft_p90_ms: float | None
    itl_p50_ms: float | None
    itl_p90_ms: float | None
    # Fractions in [0, 1]; None when no request finished in the window.
    ttft_attainment: float | None
    itl_attainment: float | None
    slo_attainment: float | None
    # GPU energy drawn in the window (sum of counter increases) and its mean power.
    energy_j: float
    mean_power_w: float
    # Mean of the SM clock samples in the window (of every selected GPU); None without samples.
    mean_sm_clock_mhz: float | None
    # Failed requests by the status their client got (Completion.status_name).
    failed_by_status: Mapping[str, int] = field(default_factory=dict)
    # GPU energy attributed to the requests that finished in the window (those whose engines
    # report it), and its mean per such request (None when none did).
    request_energy_j: float = 0.0
    mean_request_energy_j: float | None = None

    @property
    def completed(self) -> int:
        """Requests that finished successfully."""
        return self.finished - self.failed


@dataclass(frozen=True, slots=True)
class WindowReport:
    """Aggregates of each selected instance and of the selection as a whole, one window."""

    now_s: float
    window_s: float
    instances: Mapping[str, Aggregates]
    cluster: Aggregates


@dataclass(frozen=True, slots=True)
class ReportResult:
    """What telemetry made of one stream of samples."""

    accepted: int
    rejected: int
    # Why the first rejected sample was dropped ("" when none was).
    first_rejection_reason: str = ""
    # Instances telemetry does not know (samples rejected for that): register them again.
    unknown_instance_ids: tuple[str, ...] = ()
    # Impossible measured latencies dropped from samples that were stored without them.
    dropped_fields: int = 0


@dataclass(frozen=True, slots=True)
class PlacementEvent:
    """The router placed a request (arrival rates are counted from these)."""

    request_id: str
    prefill_instance_id: str
    decode_instance_id: str
    input_tokens: int
    placed_at_s: float


@dataclass(frozen=True, slots=True)
class PendingPlacement:
    """One router's request on one instance that the instance's report may not show yet."""

    instance_id: str
    # Prompt tokens on a prefill instance, KV tokens on a decode instance.
    tokens: int
    # When the instance began holding it (telemetry's clock); None = not there yet.
    visible_from_s: float | None = None


@dataclass(frozen=True, slots=True)
class RouterShare:
    """One router's part of one instance's in-flight counts and arrival rates."""

    router_id: str
    instance_id: str
    inflight_requests: int = 0
    inflight_tokens: int = 0
    arrival_rate_rps: float = 0.0
    arrival_tokens_per_s: float = 0.0


def add_shares(first: RouterShare, second: RouterShare) -> RouterShare:
    """Two shares of one instance together (under the first's router id)."""
    return RouterShare(
        first.router_id,
        first.instance_id,
        first.inflight_requests + second.inflight_requests,
        first.inflight_tokens + second.inflight_tokens,
        first.arrival_rate_rps + second.arrival_rate_rps,
        first.arrival_tokens_per_s + second.arrival_tokens_per_s,
    )
