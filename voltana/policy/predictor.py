"""EcoPred-style latency and power predictors, fitted from a profile table.

Per profiled clock: decode ITL = a*batch + b*kv_tokens + c within each CUDA-graph batch segment,
prefill time = a*tokens + c within each token segment; power is fitted the same way. Predictions
come out for every profiled clock at once (one numpy expression), which keeps a policy decision in
the microseconds even when it scans the GPU's whole clock range.

Fits are robust: points whose residual exceeds 3 median absolute deviations are dropped and the
fit is redone (measured profiles have outliers; the paper used RANSAC for the same reason).

The predictor knows its range: a decode batch beyond the largest profiled batch predicts an
infinite latency (and power), so every policy treats each clock as infeasible there instead of
extrapolating flat - the profile must cover the engine's `max_running_requests`.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from voltana.errors import ConfigError
from voltana.perf.profile import ProfilePoint, ProfileTable, decode_batch_segments


def robust_linear_fit(features: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Least squares, refit once without points beyond 3 MADs of residual."""
    coef, *_ = np.linalg.lstsq(features, targets, rcond=None)
    residual = np.abs(features @ coef - targets)
    mad = float(np.median(residual))
    if mad > 0 and len(targets) > features.shape[1] + 1:
        keep = residual <= 3.0 * mad + 1e-9
        if keep.sum() >= features.shape[1] and not keep.all():
            coef, *_ = np.linalg.lstsq(features[keep], targets[keep], rcond=None)
    return np.asarray(coef, dtype=float)


@dataclass(frozen=True)
class LatencyPredictor:
    clocks_mhz: np.ndarray  # (C,) ascending
    batch_segments: tuple[int, ...]  # upper bound of each decode segment (graph sizes)
    token_segments: tuple[float, ...]  # upper bound of each prefill segment
    decode_latency: np.ndarray  # (C, S, 3): batch, kv, intercept -> ms
    decode_power: np.ndarray  # (C, S, 3) -> W
    prefill_latency: np.ndarray  # (C, T, 2): tokens, intercept -> ms
    prefill_power: np.ndarray  # (C, T, 2) -> W
    idle_power: np.ndarray  # (C,) W

    @property
    def max_batch(self) -> int:
        """The largest decode batch the profile covers; beyond it nothing is predicted."""
        return self.batch_segments[-1]

    @classmethod
    def fit(
        cls,
        table: ProfileTable,
        idle_power_w: Callable[[float], float],
        *,
        max_cuda_graph_batch: int = 512,
        token_breakpoints: Sequence[float] = (),
    ) -> LatencyPredictor:
        """Fit ``table``; decode segments follow the CUDA-graph sizes up to
        ``max_cuda_graph_batch`` and one eager segment beyond, up to the largest profiled batch."""
        clocks = table.clocks_mhz("decode")
        if not clocks or clocks != table.clocks_mhz("prefill"):
            raise ConfigError("profile needs prefill and decode points at the same clocks")
        profiled_batch = max(p.batch_size for p in table.phase("decode"))
        batch_segments = decode_batch_segments(max_cuda_graph_batch, profiled_batch)
        token_segments = (*sorted(token_breakpoints), float("inf"))
        by_clock: dict[tuple[str, int], list[ProfilePoint]] = {}
        for point in table.points:
            by_clock.setdefault((point.phase, point.sm_clock_mhz), []).append(point)
        n_clocks, n_seg, n_tok = len(clocks), len(batch_segments), len(token_segments)
        decode_latency = np.zeros((n_clocks, n_seg, 3))
        decode_power = np.zeros((n_clocks, n_seg, 3))
        prefill_latency = np.zeros((n_clocks, n_tok, 2))
        prefill_power = np.zeros((n_clocks, n_tok, 2))
        for ci, clock in enumerate(clocks):
            # Each segment's points in profile order (one pass, not one scan per segment).
            by_segment: dict[int, list[ProfilePoint]] = {}
            for point in by_clock[("decode", clock)]:
                segment = bisect.bisect_left(batch_segments, point.batch_size)
                by_segment.setdefault(segment, []).append(point)
            for si in range(n_seg):
                members = by_segment.get(si, [])
                if not members:  # no data (beyond the profile): reuse the segment below
                    decode_latency[ci, si] = decode_latency[ci, si - 1]
                    decode_power[ci, si] = decode_power[ci, si - 1]
                    continue
                x = np.array([[p.batch_size, p.tokens, 1.0] for p in members])
                decode_latency[ci, si] = robust_linear_fit(
                    x, np.array([p.latency_ms for p in members])
                )
                decode_power[ci, si] = robust_linear_fit(x, np.array([p.power_w for p in members]))
            prefill_points = by_clock[("prefill", clock)]
            for ti in range(n_tok):
                lower = token_segments[ti - 1] if ti else 0.0
                members = [p for p in prefill_points if lower < p.tokens <= token_segments[ti]]
                # Segments share their boundary points so the pieces join up.
                members += [p for p in prefill_points if p.tokens == lower]
                if len(members) < 2:
                    members = prefill_points
                x = np.array([[p.tokens, 1.0] for p in members])
                prefill_latency[ci, ti] = robust_linear_fit(
                    x, np.array([p.latency_ms for p in members])
                )
                prefill_power[ci, ti] = robust_linear_fit(x, np.array([p.power_w for p in members]))
        idle = np.array([idle_power_w(c) for c in clocks])
        return cls(
            np.array(clocks, dtype=float),
            tuple(batch_segments),
            token_segments,
            decode_latency,
            decode_power,
            prefill_latency,
            prefill_power,
            idle,
        )

    def _segment(self, batch_size: int) -> int:
        return min(
            bisect.bisect_left(self.batch_segments, batch_size), len(self.batch_segments) - 1
        )

    def _out_of_range(self, values: np.ndarray, batches: np.ndarray | int) -> np.ndarray:
        return np.where(np.asarray(batches) > self.max_batch, np.inf, values)

    def decode_latency_ms(self, batch_size: int, kv_tokens: float) -> np.ndarray:
        """Predicted ITL at every profiled clock (inf beyond the profiled batch range)."""
        coef = self.decode_latency[:, self._segment(batch_size)]
        latency = coef[:, 0] * batch_size + coef[:, 1] * kv_tokens + coef[:, 2]
        return self._out_of_range(latency, batch_size)

    def decode_power_w(self, batch_size: int, kv_tokens: float) -> np.ndarray:
        coef = self.decode_power[:, self._segment(batch_size)]
        power = coef[:, 0] * batch_size + coef[:, 1] * kv_tokens + coef[:, 2]
        return self._out_of_range(power, batch_size)

    def _segments(self, batches: np.ndarray) -> np.ndarray:
        indices = self._batch_bounds.searchsorted(batches, side="left")
        return np.minimum(indices, len(self.batch_segments) - 1)

    def decode_latency_ms_many(self, batches: np.ndarray, kv_tokens: np.ndarray) -> np.ndarray:
        """Predicted ITL, shape (clocks, len(batches)): one column per (batch, kv) pair."""
        coef = self.decode_latency[:, self._segments(batches)]
        latency = coef[..., 0] * batches + coef[..., 1] * kv_tokens + coef[..., 2]
        return self._out_of_range(latency, batches)

    def decode_power_w_many(self, batches: np.ndarray, kv_tokens: np.ndarray) -> np.ndarray:
        coef = self.decode_power[:, self._segments(batches)]
        power = coef[..., 0] * batches + coef[..., 1] * kv_tokens + coef[..., 2]
        return self._out_of_range(power, batches)

    def _token_segment(self, tokens: float) -> int:
        return min(bisect.bisect_left(self.token_segments, tokens), len(self.token_segments) - 1)

    def prefill_latency_ms(self, tokens: float) -> np.ndarray:
        """Predicted time to prefill ``tokens`` (one batch) at every profiled clock."""
        coef = self.prefill_latency[:, self._token_segment(tokens)]
        return coef[:, 0] * tokens + coef[:, 1]

    def prefill_power_w(self, tokens: float) -> np.ndarray:
        coef = self.prefill_power[:, self._token_segment(tokens)]
        return coef[:, 0] * tokens + coef[:, 1]

    # Arrays built once, not at every prediction (a policy predicts at every tick); their
    # methods are called directly, without numpy's module-level dispatch.
    @functools.cached_property
    def _batch_bounds(self) -> np.ndarray:
        return np.asarray(self.batch_segments)

    @functools.cached_property
    def _token_bounds(self) -> np.ndarray:
        return np.asarray(self.token_segments)

    @functools.cached_property
    def _clock_rows(self) -> np.ndarray:
        return np.arange(len(self.clocks_mhz))

    def _prefill_at(self, table: np.ndarray, tokens_per_clock: np.ndarray) -> np.ndarray:
        segments = np.minimum(
            self._token_bounds.searchsorted(tokens_per_clock, side="left"),
            len(self.token_segments) - 1,
        )
        coef = table[self._clock_rows, segments]
        return coef[:, 0] * tokens_per_clock + coef[:, 1]

    def prefill_latency_ms_each(self, tokens_per_clock: np.ndarray) -> np.ndarray:
        """Prefill time at each clock for that clock's own token count (shape (clocks,))."""
        return self._prefill_at(self.prefill_latency, tokens_per_clock)

    def prefill_power_w_each(self, tokens_per_clock: np.ndarray) -> np.ndarray:
        return self._prefill_at(self.prefill_power, tokens_per_clock)

    def at_clock(self, values: np.ndarray, clock_mhz: float) -> float:
        """Interpolate a per-clock prediction at any clock."""
        return float(np.interp(clock_mhz, self.clocks_mhz, values))
