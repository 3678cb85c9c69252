"""What policies see and what they decide: plain, immutable values, no I/O.

The offline simulator, the simulated cluster and the live services all build these same
objects (the services from telemetry snapshots) and hand them to the same policy objects.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from voltana.rpc.limits import MAX_SLO_MS, slo_target_problem


class Phase(enum.Enum):
    PREFILL = "prefill"
    DECODE = "decode"
    # Colocated: one engine prefills and decodes (SGLang without disaggregation). Its state
    # carries both sides' fields: the prompt queue and the running decode batch.
    UNIFIED = "unified"


@dataclass(frozen=True, slots=True)
class SloTarget:
    ttft_ms: float = 800.0
    itl_ms: float = 50.0
    # A TTFT allowance growing with the prompt (a long prompt cannot start sooner): a request's
    # TTFT target is ttft_ms + ttft_ms_per_1k_tokens * its input tokens / 1000.
    ttft_ms_per_1k_tokens: float = 0.0

    def ttft_target_ms(self, input_tokens: float) -> float:
        return self.ttft_ms + self.ttft_ms_per_1k_tokens * input_tokens / 1000.0


def tightest_slo(first: SloTarget, *others: SloTarget) -> SloTarget:
    """Each target at its tightest over the given SLOs (what a clock law serving requests of
    several classes at once must meet)."""
    if not others:
        return first
    every = (first, *others)
    return SloTarget(
        ttft_ms=min(s.ttft_ms for s in every),
        itl_ms=min(s.itl_ms for s in every),
        ttft_ms_per_1k_tokens=min(s.ttft_ms_per_1k_tokens for s in every),
    )


def slo_problem(slo: SloTarget) -> str | None:
    """Why ``slo`` is unusable (a target that is not a finite positive number of at most
    voltana.rpc.limits.MAX_SLO_MS, a negative per-1k allowance), or None."""
    for name in ("ttft_ms", "itl_ms"):
        problem = slo_target_problem(name, getattr(slo, name))
        if problem is not None:
            return problem
    per_1k_ms = slo.ttft_ms_per_1k_tokens
    if not (math.isfinite(per_1k_ms) and 0 <= per_1k_ms <= MAX_SLO_MS):
        return f"ttft_ms_per_1k_tokens must be in [0, {MAX_SLO_MS:g}] ms, got {per_1k_ms:g}"
    return None


@dataclass(frozen=True, slots=True)
class InstanceState:
    """Load and clock of one serving instance (one GPU or one TP group) at ``observed_at_s``:
    everything a policy may see, and nothing a real deployment could not observe. Producers
    build it through voltana.observation; this field list is the one every conversion (proto,
    Redis, validation) iterates, so a field is added here and nowhere else."""

    instance_id: str
    phase: Phase
    gpu_key: str
    sm_clock_mhz: int
    # Prefill side: waiting requests and their tokens; age of the oldest one.
    queue_len: int = 0
    queued_tokens: int = 0
    oldest_wait_ms: float = 0.0
    # Tokens in the prefill batch now running (0 when idle).
    running_prefill_tokens: int = 0
    # Decode side: requests in the running batch and KV tokens they hold.
    running_batch: int = 0
    kv_tokens_used: int = 0
    kv_tokens_capacity: int = 0
    max_running_requests: int = 0
    # Measured latencies over a recent window (None when nothing was measured).
    recent_ttft_ms: float | None = None
    recent_itl_ms: float | None = None
    # Requests and prompt tokens per second placed on this instance over a recent window
    # (counted at placement by the router).
    arrival_rate_rps: float = 0.0
    arrival_tokens_per_s: float = 0.0
    power_w: float = 0.0
    energy_j: float = 0.0
    observed_at_s: float = 0.0
    # When the instance last reported anything (for "no metrics for 5 s" rules).
    last_activity_s: float = 0.0
    # Placed on the instance but not yet visible in its report (the in-flight ledger): prefill
    # counts their prompt tokens, decode the KV tokens they will bring.
    inflight_requests: int = 0
    inflight_tokens: int = 0

    def prefill_backlog(self, batch_tokens: int) -> bool:
        """Prompts wait that the next batch (``batch_tokens``, the chunked-prefill budget)
        cannot take. A report taken mid-iteration counts the prompts that arrived since the
        batch was formed; they join the next one and are no backlog - SGLang's own queue
        gauge, set as it forms a batch, would not show them."""
        return self.queue_len > 0 and (
            self.queued_tokens + self.running_prefill_tokens > batch_tokens
        )

    def decode_backlog(self, step_ms: float) -> bool:
        """Requests wait to join the decode batch beyond the next step: it is full, or the
        oldest has already waited longer than a step (``step_ms``) - not merely arrived
        during the running one."""
        return self.queue_len > 0 and (
            self.running_batch + self.queue_len > (self.max_running_requests or 1 << 30)
            or self.oldest_wait_ms > step_ms
        )

    @property
    def is_idle(self) -> bool:
        return self.queue_len == 0 and self.running_batch == 0 and self.running_prefill_tokens == 0


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """Every instance's state at one moment. Maps keep a stable (insertion) order."""

    now_s: float
    prefill: Mapping[str, InstanceState]
    decode: Mapping[str, InstanceState]
    # The cluster SLO in force when the snapshot was taken (None: its source did not say).
    cluster_slo: SloTarget | None = None
    # Instances serving requests of their own SLO class (voltana.control.serving): the
    # tightest targets each one serves. Empty when every request is at the cluster SLO; an
    # instance left out serves nothing of a class (idle or cluster-SLO requests only).
    serving: Mapping[str, SloTarget] = field(default_factory=dict)
    # Colocated instances: a request placed on one is prefilled and decoded there.
    unified: Mapping[str, InstanceState] = field(default_factory=dict)

    def instance(self, instance_id: str) -> InstanceState | None:
        return (
            self.prefill.get(instance_id)
            or self.decode.get(instance_id)
            or self.unified.get(instance_id)
        )

    def states(self) -> tuple[InstanceState, ...]:
        """Every instance: prefill, decode, then colocated."""
        return (*self.prefill.values(), *self.decode.values(), *self.unified.values())

    @property
    def placeable(self) -> bool:
        """Whether a request has somewhere to go: a prefill and a decode instance, or a
        colocated one."""
        return bool(self.unified) or (bool(self.prefill) and bool(self.decode))


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """A request as the router sees it before placement."""

    input_tokens: int
    max_output_tokens: int
    slo: SloTarget = field(default_factory=SloTarget)
    arrival_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ClockDecision:
    sm_clock_mhz: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a request runs: a prefill and a decode instance, or one colocated instance named
    twice (``prefill_id == decode_id``, see ``is_unified``)."""

    prefill_id: str
    decode_id: str
    reason: str = ""
    # What the policy expected, for `Place` answers and traces (None when it did not predict).
    predicted_ttft_ms: float | None = None
    predicted_itl_ms: float | None = None
    prefill_clock_mhz: int | None = None
    decode_clock_mhz: int | None = None

    @property
    def is_unified(self) -> bool:
        return self.prefill_id == self.decode_id


def optional_state_fields() -> frozenset[str]:
    """Fields of InstanceState that may be None (unmeasured), by their annotations."""
    return frozenset(f.name for f in fields(InstanceState) if "None" in str(f.type))
