"""What one instance can serve within the SLO, from the performance model (at the GPU's default,
highest clock: the planner sizes for the clock laws' headroom, not their savings).

- Prefill: prompt tokens per second, a prompt of the workload's mean size per pass, times a
  utilisation ceiling (``prefill_utilization``) that keeps the queueing delay inside the TTFT
  target.
- Decode: the largest batch whose step still meets ``itl_headroom`` x the ITL target and whose
  KV fits the cache, at the workload's mean context; its tokens per second (batch / step time)
  times ``decode_utilization``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voltana.contract.state import SloTarget
from voltana.errors import ConfigError
from voltana.perf.model import PerformanceModel

# Sizes are rounded up to these steps so that a few estimates serve a whole run.
_PROMPT_STEP_TOKENS = 128
_CONTEXT_STEP_TOKENS = 256


@dataclass(frozen=True)
class CapacityConfig:
    prefill_utilization: float = 0.6
    decode_utilization: float = 0.8
    itl_headroom: float = 0.8
    chunk_tokens: int = 8192
    max_batch: int = 1024

    def __post_init__(self) -> None:
        for name in ("prefill_utilization", "decode_utilization", "itl_headroom"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.chunk_tokens < 1 or self.max_batch < 1:
            raise ConfigError("chunk tokens and max batch must be >= 1")


@dataclass
class InstanceCapacity:
    """Per-instance capacity estimates, memoised by (rounded) request size."""

    perf: PerformanceModel
    slo: SloTarget
    config: CapacityConfig = field(default_factory=CapacityConfig)
    _prefill: dict[int, float] = field(default_factory=dict, repr=False)
    _decode: dict[int, float] = field(default_factory=dict, repr=False)

    @property
    def _clock_mhz(self) -> int:
        return self.perf.gpu.default_sm_clock_mhz

    def prefill_tokens_per_s(self, mean_input_tokens: float) -> float:
        step = _PROMPT_STEP_TOKENS
        tokens = min(self.config.chunk_tokens, max(step, -(-int(mean_input_tokens) // step) * step))
        known = self._prefill.get(tokens)
        if known is None:
            latency_s = self.perf.prefill_iteration(tokens, self._clock_mhz).latency_s
            known = self._prefill[tokens] = self.config.prefill_utilization * tokens / latency_s
        return known

    def decode_tokens_per_s(self, mean_context_tokens: float) -> float:
        step = _CONTEXT_STEP_TOKENS
        context = max(step, -(-int(mean_context_tokens) // step) * step)
        known = self._decode.get(context)
        if known is None:
            batch, step_s = self._largest_batch(context)
            known = self._decode[context] = self.config.decode_utilization * batch / step_s
        return known

    def _largest_batch(self, context_tokens: int) -> tuple[int, float]:
        """(the largest batch meeting the ITL headroom and the KV cache, its step seconds)."""
        budget_s = self.config.itl_headroom * self.slo.itl_ms / 1e3
        limit = min(self.config.max_batch, max(1, self.perf.kv_capacity_tokens() // context_tokens))

        def step_s(batch: int) -> float:
            return self.perf.decode_iteration(
                batch, batch * context_tokens, self._clock_mhz
            ).latency_s

        low, high = 1, limit
        if step_s(low) > budget_s:
            return 1, step_s(1)
        while low < high:  # step time grows with the batch: bisect for the last one in budget
            middle = (low + high + 1) // 2
            if step_s(middle) <= budget_s:
                low = middle
            else:
                high = middle - 1
        return low, step_s(low)
