"""What the SDK hands back: plain, immutable values (no protobuf in the public API)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """Newly generated tokens. ``index`` is the position of the first one in the output."""

    text: str
    token_ids: tuple[int, ...]
    index: int


@dataclass(frozen=True, slots=True)
class GenerationSummary:
    """How a request ended (always the last item of a stream)."""

    request_id: str
    # "stop", "length" or "abort".
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    # Router arrival to first output token, and the mean gap after it (0 with < 2 tokens).
    ttft_ms: float
    mean_itl_ms: float
    e2e_latency_ms: float
    prefill_instance: str
    decode_instance: str
    # KV-transfer room shared by the prefill and decode instances.
    bootstrap_room: int
    # GPU energy attributed to the request (its share of every iteration it ran in and of
    # the GPUs' idle time) and the idle part, joules; None when the engines do not report it.
    energy_j: float | None = None
    idle_energy_j: float | None = None


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """A whole generation: its text, its token ids (when the engine sent them) and summary."""

    text: str
    token_ids: tuple[int, ...]
    summary: GenerationSummary


@dataclass(frozen=True, slots=True)
class CandidateInfo:
    """How the routing policy rated one instance (lower score is better)."""

    instance_id: str
    # "prefill", "decode" or "" when the policy did not say.
    phase: str
    score: float
    feasible: bool
    required_sm_clock_mhz: int | None
    predicted_latency_ms: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class PlacementInfo:
    """Where the router would send a request, and what its policy expected."""

    prefill_id: str
    decode_id: str
    reason: str
    policy_name: str
    predicted_ttft_ms: float | None = None
    predicted_itl_ms: float | None = None
    prefill_clock_mhz: int | None = None
    decode_clock_mhz: int | None = None
    candidates: tuple[CandidateInfo, ...] = ()
