"""One instance's observation: the engine's load gauges plus its latency windows."""

from __future__ import annotations

from dataclasses import dataclass, fields

from voltana.contract.state import InstanceState, Phase
from voltana.observation.config import DEFAULT_OBSERVATION, ObservationConfig
from voltana.observation.latency import ITL_BUCKETS_S, TTFT_BUCKETS_S, LatencyWindow


@dataclass(frozen=True, slots=True)
class EngineGauges:
    """What an engine reports about its load at one moment (SGLang's gauges)."""

    queue_len: int = 0
    queued_tokens: int = 0
    oldest_wait_ms: float = 0.0
    running_prefill_tokens: int = 0
    running_batch: int = 0
    kv_tokens_used: int = 0
    kv_tokens_capacity: int = 0
    max_running_requests: int = 0


# What an engine (or the reporter of a real SGLang server) reports: its load gauges, its
# latency windows and its activity. Telemetry adds clock, power and energy from the node agent
# and arrival rates from the router's placements.
ENGINE_REPORT_FIELDS: tuple[str, ...] = (
    *(f.name for f in fields(EngineGauges)),
    "recent_ttft_ms",
    "recent_itl_ms",
    "observed_at_s",
    "last_activity_s",
)


class InstanceObserver:
    """Recent TTFT (prefill-side: receipt to first token) and ITL of one instance, and the
    `InstanceState` built from them with the engine's gauges."""

    def __init__(
        self,
        phase: Phase,
        gpu_key: str,
        config: ObservationConfig = DEFAULT_OBSERVATION,
    ) -> None:
        self.phase = phase
        self.gpu_key = gpu_key
        self.config = config
        self.ttft = LatencyWindow(TTFT_BUCKETS_S, config.window_s)
        self.itl = LatencyWindow(ITL_BUCKETS_S, config.window_s)

    def note_first_token(self, at_s: float, ttft_s: float) -> None:
        self.ttft.add(at_s, ttft_s)

    def note_decode_step(self, at_s: float, gap_s: float, tokens: int) -> None:
        """One decode iteration produced ``tokens`` tokens ``gap_s`` after the previous ones."""
        self.itl.add(at_s, gap_s, tokens)

    def observe(
        self,
        instance_id: str,
        now_s: float,
        gauges: EngineGauges,
        *,
        sm_clock_mhz: int = 0,
        power_w: float = 0.0,
        energy_j: float = 0.0,
        last_activity_s: float = 0.0,
        arrival_rate_rps: float = 0.0,
        arrival_tokens_per_s: float = 0.0,
    ) -> InstanceState:
        return InstanceState(
            instance_id=instance_id,
            phase=self.phase,
            gpu_key=self.gpu_key,
            sm_clock_mhz=sm_clock_mhz,
            queue_len=gauges.queue_len,
            queued_tokens=gauges.queued_tokens,
            oldest_wait_ms=gauges.oldest_wait_ms,
            running_prefill_tokens=gauges.running_prefill_tokens,
            running_batch=gauges.running_batch,
            kv_tokens_used=gauges.kv_tokens_used,
            kv_tokens_capacity=gauges.kv_tokens_capacity,
            max_running_requests=gauges.max_running_requests,
            recent_ttft_ms=self.ttft.quantile_ms(now_s, self.config.ttft_quantile),
            recent_itl_ms=self.itl.mean_ms(now_s),
            arrival_rate_rps=arrival_rate_rps,
            arrival_tokens_per_s=arrival_tokens_per_s,
            power_w=power_w,
            energy_j=energy_j,
            observed_at_s=now_s,
            last_activity_s=last_activity_s,
        )
