"""Colocated (unified) instances: one engine prefills and decodes, one clock holds both targets.

Most SGLang deployments are not disaggregated: an engine runs chunked prefill and continuous
decode on the same GPU. SGLang's scheduler gives prefill priority (a pass over waiting prompts
runs before the next decode step), so the running batch's tokens wait for every prefill pass:
a decode step of ``s`` ms with the GPU prefilling a share ``p`` of its time gives tokens every
``s / (1 - p)`` ms. The published laws cover one phase each; the unified law composes them:

- the prefill law decides on the instance's prompt side (its queue, running prompt tokens and
  TTFT, with the decode batch left out), giving the lowest clock that holds TTFT;
- the prefill share ``p`` at that clock is the instance's arriving prompt tokens per second
  times the predicted prefill seconds per token (at a higher clock it is smaller, so the
  figure errs on the safe side);
- the decode law decides on the decode side (the running batch, plus the queued and placed
  prompts, which join it within a prefill) against the ITL target shrunk to ``(1 - p)`` of
  itself; its measured ITL, which counts the prefill stalls, is scaled back by the share at
  the clock it ran so that its feedback sees the decode step alone;
- the instance runs at the higher of the two clocks.

Any pair of phase laws composes so (static clocks give the higher of the pair), so every
policy, baseline or not, runs colocated instances with its own laws.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from voltana.contract.state import (
    ClockDecision,
    ClusterSnapshot,
    InstanceState,
    Placement,
    RequestSpec,
    SloTarget,
)
from voltana.perf.model import PerformanceModel
from voltana.policy.base import FrequencyPolicy, RoutingPolicy

# The decode law keeps at least this share of the ITL target (a prefill share near 1 means
# the instance is overloaded; the decode law then asks for the highest clock anyway).
MIN_DECODE_SHARE = 0.2
# Below this many tokens per prompt, the per-token prefill cost is taken at this size (a
# pass's fixed overhead spread over a handful of tokens is not what a stream costs).
MIN_PROMPT_TOKENS = 64


def prefill_view(state: InstanceState) -> InstanceState:
    """The instance as its prefill law sees it: the prompt side alone."""
    return dataclasses.replace(state, running_batch=0, kv_tokens_used=0, recent_itl_ms=None)


def decode_view(state: InstanceState, measured_prefill_share: float) -> InstanceState:
    """The instance as its decode law sees it: the running batch, joined soon by the prompts
    waiting, running and placed; its measured ITL without the prefill stalls."""
    itl_ms = state.recent_itl_ms
    if itl_ms is not None:
        itl_ms *= max(MIN_DECODE_SHARE, 1.0 - measured_prefill_share)
    return dataclasses.replace(
        state,
        queue_len=0,
        queued_tokens=0,
        oldest_wait_ms=0.0,
        running_prefill_tokens=0,
        recent_ttft_ms=None,
        recent_itl_ms=itl_ms,
        inflight_requests=state.inflight_requests + state.queue_len,
        inflight_tokens=state.inflight_tokens + state.queued_tokens + state.running_prefill_tokens,
    )


@dataclass
class UnifiedLaw:
    """The clock of a colocated instance: the higher of its prefill and decode laws' clocks,
    the decode law held to the ITL left over by prefill passes (see the module doc)."""

    prefill: FrequencyPolicy
    decode: FrequencyPolicy
    perf: PerformanceModel  # the physics the policy believes (not the simulated truth)
    chunk_tokens: int = 8192
    name: str = field(default="")
    _per_token_s: dict[tuple[int, int], float] = field(default_factory=dict, init=False)
    # The clock this law last chose per instance.
    _chosen: dict[str, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"unified({self.prefill.name},{self.decode.name})"

    @property
    def is_static(self) -> bool:
        return self.prefill.is_static and self.decode.is_static

    def prefill_seconds_per_token(self, prompt_tokens: float, clock_mhz: int) -> float:
        tokens = int(min(self.chunk_tokens, max(MIN_PROMPT_TOKENS, prompt_tokens)))
        key = (tokens, clock_mhz)
        cached = self._per_token_s.get(key)
        if cached is None:
            if len(self._per_token_s) > 65_536:
                self._per_token_s.clear()
            latency_s = self.perf.prefill_iteration(tokens, clock_mhz).latency_s
            cached = self._per_token_s[key] = latency_s / tokens
        return cached

    def prefill_share(self, state: InstanceState, clock_mhz: int) -> float:
        """The share of the GPU's time prefill takes at ``clock_mhz`` for the prompts arriving."""
        if state.arrival_rate_rps <= 0 or state.arrival_tokens_per_s <= 0 or clock_mhz <= 0:
            return 0.0
        prompt_tokens = state.arrival_tokens_per_s / state.arrival_rate_rps
        return state.arrival_tokens_per_s * self.prefill_seconds_per_token(prompt_tokens, clock_mhz)

    def decide(self, state: InstanceState, slo: SloTarget, now_s: float) -> ClockDecision:
        prompts = prefill_view(state)
        prefill = self.prefill.decide(prompts, slo, now_s)
        share = self.prefill_share(state, prefill.sm_clock_mhz)
        itl_budget_ms = slo.itl_ms * max(MIN_DECODE_SHARE, 1.0 - share)
        measured_share = self.prefill_share(state, state.sm_clock_mhz)
        decode = self.decode.decide(
            decode_view(state, measured_share),
            dataclasses.replace(slo, itl_ms=itl_budget_ms),
            now_s,
        )
        if _no_prompt_work(prompts):
            decision = self._between_prompts(state, slo, decode)
        elif decode.sm_clock_mhz > prefill.sm_clock_mhz:
            decision = ClockDecision(decode.sm_clock_mhz, f"decode: {decode.reason}")
        else:
            decision = ClockDecision(prefill.sm_clock_mhz, f"prefill: {prefill.reason}")
        self._chosen[state.instance_id] = decision.sm_clock_mhz
        return decision

    def _between_prompts(
        self, state: InstanceState, slo: SloTarget, decode: ClockDecision
    ) -> ClockDecision:
        """No prompt queued, running or placed: the decode batch sets the clock (a prefill
        law's idle rule is about an idle GPU, and this one decodes), not below the prefill
        law's parking clock (the next prompt may start before a raised clock lands); a lower
        clock is taken only when what it saves until the next prompt outweighs its two
        changes (down now, up with the prompt)."""
        park = getattr(self.prefill, "park_clock_mhz", None)
        floor_mhz = int(park(slo)) if callable(park) else 0
        wanted_mhz = max(decode.sm_clock_mhz, floor_mhz)
        held_mhz = self._chosen.get(state.instance_id)
        if (
            held_mhz is not None
            and held_mhz > wanted_mhz
            and not self._dropping_pays(state, held_mhz, wanted_mhz)
        ):
            return ClockDecision(
                held_mhz, "between prompts: hold (a drop saves less than it costs)"
            )
        return ClockDecision(wanted_mhz, f"between prompts: decode: {decode.reason}")

    def _draw_w(self, state: InstanceState, clock_mhz: int) -> float:
        if state.running_batch > 0:
            return self.perf.decode_iteration(
                state.running_batch, state.kv_tokens_used, clock_mhz
            ).power_w
        return self.perf.idle_power_w(clock_mhz)

    def _dropping_pays(self, state: InstanceState, held_mhz: int, wanted_mhz: int) -> bool:
        if state.arrival_rate_rps <= 0:
            return True
        gap_s = 1.0 / state.arrival_rate_rps
        held_w = self._draw_w(state, held_mhz)
        saving_j = (held_w - self._draw_w(state, wanted_mhz)) * gap_s
        cost_j = 2.0 * self.perf.gpu.clock_change_delay_ms / 1000.0 * held_w
        return saving_j > cost_j


def _no_prompt_work(prompts: InstanceState) -> bool:
    return (
        prompts.queue_len == 0
        and prompts.running_prefill_tokens == 0
        and prompts.inflight_tokens == 0
        and prompts.queued_tokens == 0
    )


def unified_load(state: InstanceState) -> tuple[int, int]:
    """Requests a colocated instance holds or will hold, then the prompt tokens it must still
    prefill (fewest first)."""
    return (
        state.running_batch + state.queue_len + state.inflight_requests,
        state.queued_tokens + state.running_prefill_tokens + state.inflight_tokens,
    )


class ColocatedRouting:
    """Places on colocated instances beside a PD router: a cluster without them is placed by
    ``inner`` alone. Each request goes to the least loaded colocated instance (fewest requests,
    then fewest prompt tokens to prefill) - the same for every policy, so their clock laws are
    compared with one router; in a mixed cluster, the side (PD or colocated) that has taken
    the fewest requests per GPU so far gets it (a request's work is about the same on
    either)."""

    def __init__(self, inner: RoutingPolicy) -> None:
        self.inner = inner
        self._placed_pd = 0
        self._placed_unified = 0

    @property
    def name(self) -> str:
        return self.inner.name

    def place(self, request: RequestSpec, snapshot: ClusterSnapshot) -> Placement:
        if not snapshot.unified:
            return self.inner.place(request, snapshot)
        pd_instances = len(snapshot.prefill) + len(snapshot.decode)
        if snapshot.prefill and snapshot.decode:
            unified_turn = self._placed_unified * pd_instances <= self._placed_pd * len(
                snapshot.unified
            )
            if not unified_turn:
                self._placed_pd += 1
                return self.inner.place(request, snapshot)
        self._placed_unified += 1
        chosen = min(snapshot.unified.values(), key=unified_load)
        return Placement(chosen.instance_id, chosen.instance_id, "colocated: least loaded")
