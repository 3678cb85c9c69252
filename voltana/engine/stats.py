"""What the engine measures: SGLang's Prometheus metrics and short rolling windows."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from voltana.engine.prometheus import Histogram, render_counter, render_gauge
from voltana.observation.latency import ITL_BUCKETS_S, TTFT_BUCKETS_S

# TTFT/ITL bucket bounds are the observation contract's (SGLang's defaults), so the recent
# latencies a reporter computes from this engine's histograms match the engine's own.
E2E_BUCKETS_S = (
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0,
    150.0, 200.0, 300.0, 600.0,
)  # fmt: skip


class WindowedSamples:
    """Weighted samples of the last ``window_s`` seconds (times are the caller's clock)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._entries: deque[tuple[float, float, int]] = deque()

    def add(self, at_s: float, value: float, weight: int = 1) -> None:
        if weight > 0:
            self._entries.append((at_s, value, weight))

    def _prune(self, now_s: float) -> None:
        horizon_s = now_s - self.window_s
        while self._entries and self._entries[0][0] < horizon_s:
            self._entries.popleft()

    def median(self, now_s: float) -> float | None:
        """Weighted median of the window's values; None when the window is empty."""
        self._prune(now_s)
        if not self._entries:
            return None
        ordered = sorted((value, weight) for _, value, weight in self._entries)
        half = sum(weight for _, weight in ordered) / 2.0
        cumulative = 0
        for value, weight in ordered:
            cumulative += weight
            if cumulative >= half:
                return value
        return ordered[-1][0]

    def total(self, now_s: float) -> float:
        """Sum of value x weight over the window."""
        self._prune(now_s)
        return sum(value * weight for _, value, weight in self._entries)


# Voltana's own (SGLang has no such counter): time a simulated engine lost to its host.
HOST_STALL_METRIC = "voltana:sim_host_stall_seconds_total"


class EngineMetrics:
    """SGLang-named counters and histograms of one engine; gauges are passed in at render time."""

    def __init__(self) -> None:
        self.ttft = Histogram(
            "sglang:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS_S,
        )
        self.itl = Histogram(
            "sglang:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS_S,
        )
        self.e2e = Histogram(
            "sglang:e2e_request_latency_seconds",
            "Histogram of End-to-end request latency in seconds",
            E2E_BUCKETS_S,
        )
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.requests_total = 0
        self.aborted_requests_total = 0
        # Simulated seconds the GPU sat idle with work waiting because the engine's event loop
        # woke too late to catch up (a host too busy for its speedup): latency a real GPU
        # would not have added.
        self.host_stall_s_total = 0.0

    def render(
        self,
        labels: Mapping[str, str],
        gauges: Mapping[str, tuple[str, float]],
        gauge_labels: Mapping[str, str] | None = None,
    ) -> str:
        """Exposition text; ``gauges`` maps metric name to (help text, value).

        ``labels`` go on the request counters and histograms (SGLang's tokenizer manager's),
        ``gauge_labels`` (default ``labels``) on the gauges (its scheduler's, which add the
        scheduler's ranks).
        """
        lines: list[str] = []
        for name, (help_text, value) in gauges.items():
            lines += render_gauge(
                name, help_text, value, labels if gauge_labels is None else gauge_labels
            )
        counters = (
            (
                "prompt_tokens_total",
                "Number of prefill tokens processed.",
                self.prompt_tokens_total,
            ),
            (
                "generation_tokens_total",
                "Number of generation tokens processed.",
                self.generation_tokens_total,
            ),
            ("num_requests_total", "Number of requests processed.", self.requests_total),
            (
                "num_aborted_requests_total",
                "Number of requests aborted.",
                self.aborted_requests_total,
            ),
        )
        for name, help_text, counter_value in counters:
            lines += render_counter(f"sglang:{name}", help_text, counter_value, labels)
        lines += render_counter(
            HOST_STALL_METRIC,
            "Simulated seconds the GPU sat idle with work waiting because the simulated "
            "engine's host ran late (not GPU time; a real engine would not lose it).",
            self.host_stall_s_total,
            labels,
        )
        for histogram in (self.ttft, self.itl, self.e2e):
            lines += histogram.render(labels)
        return "\n".join(lines) + "\n"
