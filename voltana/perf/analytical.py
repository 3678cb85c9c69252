"""Analytical (roofline) performance model of a GPU serving a dense transformer.

Latency: every iteration streams the weights once and the KV cache it attends over (memory
time, nearly clock-independent) and does its matmuls (compute time, scales with 1/clock). The two
overlap as a soft roofline. Decode batches are padded up to the CUDA-graph capture sizes, so
latency steps at those boundaries.

Power: bare idle + the CUDA context's draw (partly clock-dependent) + a memory part proportional to
memory-busy time + a core part ∝ f·V(f)² (voltage floor below the knee, power.py) scaled by
switching activity (compute-busy time). A draw above TDP is not simply capped: the GPU's power
limiter lowers the effective clock until the draw fits, so the iteration also takes longer.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from voltana.hardware.gpus import GpuSpec
from voltana.hardware.models import ModelSpec
from voltana.perf.model import IterationEstimate
from voltana.perf.power import VoltageFrequencyCurve

# Splitwise's 2023 stack (no CUDA graphs at TP8) paid far more per layer; its measurements are
# reproduced with these overheads (tests/test_perf_calibration.py), the default is a modern stack.
SPLITWISE_2023_TP_LAYER_OVERHEAD_MS = {"a100-80g": 0.42, "h100-80g": 0.29}


# Enough halvings to find the power-limited clock to well under 1 MHz.
_THROTTLE_BISECTIONS = 14
# Clocks whose per-clock terms are memoised per model (supported clocks are far fewer).
_CLOCK_MEMO_SIZE = 4096
# (decode batch, clock) pairs whose KV-independent terms are memoised.
_DECODE_MEMO_SIZE = 1 << 16
# Prefill iterations (tokens, clock, attention pairs) whose estimates are memoised.
_PREFILL_MEMO_SIZE = 1 << 16


def cuda_graph_batch_sizes(max_batch: int = 512) -> tuple[int, ...]:
    """SGLang-style capture sizes: 1, 2, 4, 8, then steps of 8."""
    sizes = [1, 2, 4, *range(8, max_batch + 1, 8)]
    return tuple(sizes)


@dataclass(frozen=True)
class Calibration:
    """Efficiency and power constants of one GPU running one software stack."""

    memory_efficiency: float = 0.85  # achieved fraction of peak HBM bandwidth
    compute_efficiency: float = 0.62  # achieved fraction of peak bf16 on large (prefill) matmuls
    decode_compute_efficiency: float = 0.65  # skinny decode matmuls reach less of the peak
    # Matmul efficiency halves at this many rows (wave/tile quantisation for small batches).
    compute_half_rows: float = 192.0
    attention_efficiency: float = 0.30  # achieved fraction of peak in attention kernels
    roofline_sharpness: float = 4.0  # soft-max exponent combining memory and compute time
    prefill_overhead_ms: float = 3.0  # scheduler + launch per prefill iteration
    decode_overhead_ms: float = 1.2  # per decode step with CUDA graphs
    decode_per_request_overhead_ms: float = 0.004  # sampling, bookkeeping per running request
    # Per-layer all-reduce + launch latency at TP8 (two all-reduces per layer under CUDA graphs).
    tp_layer_overhead_ms: float = 0.05
    # Power.
    core_dynamic_w: float = 330.0  # SM power at max clock and full switching activity
    memory_dynamic_w: float = 60.0  # HBM power at full bandwidth
    # Voltage/frequency curve: the knee (as a fraction of the max clock) below which the core
    # voltage sits at its floor, and that floor relative to the voltage at the max clock.
    voltage_knee_fraction: float = 1080 / 1410
    floor_voltage_ratio: float = 0.75
    # Share of the CUDA context's idle draw that follows f·V² (clock tree, leakage at V); the
    # rest (memory clocks held in P0) does not depend on the SM clock.
    context_clock_share: float = 0.5
    min_activity: float = 0.35  # switching activity of SMs stalled on memory
    kv_memory_fraction: float = 0.88  # fraction of GPU memory SGLang gives weights + KV
    max_cuda_graph_batch: int = 512
    # The SM clocks the constants were fitted over (docs/power-model.md); outside it the model
    # extrapolates. None: the GPU's whole range (a calibration given without one).
    calibrated_clock_range_mhz: tuple[int, int] | None = None


# Hopper GPUs (H100, H200) share SMs, clocks and power behaviour; only bandwidth and memory
# differ, and those come from the GPU catalog.
_HOPPER_CALIBRATION = Calibration(
    compute_efficiency=0.45,
    decode_compute_efficiency=0.30,
    attention_efficiency=0.25,
    decode_overhead_ms=1.3,
    core_dynamic_w=580.0,
    memory_dynamic_w=90.0,
    # Hopper gates idle SMs far better: decode-only H200 runs draw 137-300 W and lose only
    # 47-90 W from 1980 to 780 MHz (docs/calibration.md), so SMs stalled on memory switch little.
    min_activity=0.10,
    # The H200 decode sweeps ran 780-1980 MHz (arXiv 2605.11999, docs/power-model.md); H100
    # shares the SMs and clocks.
    calibrated_clock_range_mhz=(780, 1980),
)

# Constants fitted to docs/calibration.md (see tests/test_perf_calibration.py for each figure).
DEFAULT_CALIBRATIONS: dict[str, Calibration] = {
    # Perseus' A100 measurements span 855-1410 MHz; nothing public below (docs/power-model.md).
    "a100-80g": Calibration(calibrated_clock_range_mhz=(855, 1410)),
    "h100-80g": _HOPPER_CALIBRATION,
    "h200": _HOPPER_CALIBRATION,
}


@dataclass(frozen=True)
class AnalyticalPerformanceModel:
    """Roofline latency and clock-dependent power of ``model`` on ``gpu`` (per TP group)."""

    gpu: GpuSpec
    model: ModelSpec
    calibration: Calibration = field(default_factory=Calibration)

    @classmethod
    def for_hardware(
        cls, gpu: GpuSpec, model: ModelSpec, calibration: Calibration | None = None
    ) -> AnalyticalPerformanceModel:
        return cls(gpu, model, calibration or DEFAULT_CALIBRATIONS.get(gpu.key, Calibration()))

    @property
    def calibrated_clock_range_mhz(self) -> tuple[int, int]:
        """The clocks (lowest, highest MHz) where the constants were fitted to measurements."""
        fitted = self.calibration.calibrated_clock_range_mhz
        return fitted or (self.gpu.min_sm_clock_mhz, self.gpu.max_sm_clock_mhz)

    # ---- derived constants -------------------------------------------------------------
    @cached_property
    def _memory_bytes_per_s(self) -> float:
        return self.gpu.memory_bandwidth_gb_s * 1e9 * self.calibration.memory_efficiency

    @cached_property
    def _weights_time_s(self) -> float:
        return self.model.weight_bytes_per_gpu / self._memory_bytes_per_s

    @cached_property
    def _linear_flops_per_token_per_gpu(self) -> float:
        return self.model.linear_flops_per_token / self.model.tensor_parallel

    @cached_property
    def voltage_curve(self) -> VoltageFrequencyCurve:
        max_mhz = float(self.gpu.max_sm_clock_mhz)
        return VoltageFrequencyCurve(
            max_mhz,
            max_mhz * self.calibration.voltage_knee_fraction,
            self.calibration.floor_voltage_ratio,
        )

    @cached_property
    def _graph_sizes(self) -> tuple[int, ...]:
        return cuda_graph_batch_sizes(self.calibration.max_cuda_graph_batch)

    @cached_property
    def _tp_overhead_s(self) -> float:
        if self.model.tensor_parallel == 1:
            return 0.0
        # Fitted at TP8; all-reduce latency grows with the ring's (tp - 1) steps.
        ring_steps_vs_tp8 = (self.model.tensor_parallel - 1) / 7.0
        return (
            self.model.num_layers * self.calibration.tp_layer_overhead_ms * ring_steps_vs_tp8 / 1e3
        )

    @cached_property
    def _kv_bytes_per_token(self) -> float:
        return self.model.kv_bytes_per_token_per_gpu

    @cached_property
    def _attention_flops_per_pair(self) -> float:
        return self.model.attention_flops(1, 1)

    @cached_property
    def _by_clock(self) -> dict[float, tuple[float, float, float]]:
        """Memo of the pure per-clock terms (peak FLOP/s, idle draw, relative f·V²): the
        simulator evaluates thousands of iterations per second at a handful of clocks."""
        return {}

    def _clock_terms(self, sm_clock_mhz: float) -> tuple[float, float, float]:
        terms = self._by_clock.get(sm_clock_mhz)
        if terms is None:
            relative = self.voltage_curve.relative_dynamic_power(sm_clock_mhz)
            share = self.calibration.context_clock_share
            terms = (
                self.gpu.peak_bf16_tflops * 1e12 * (sm_clock_mhz / self.gpu.max_sm_clock_mhz),
                self.gpu.idle_w + self.gpu.context_w * ((1.0 - share) + share * relative),
                relative,
            )
            # Bounded: the power limiter's bisection visits fractional clocks.
            if len(self._by_clock) < _CLOCK_MEMO_SIZE:
                self._by_clock[sm_clock_mhz] = terms
        return terms

    def _peak_flops(self, sm_clock_mhz: float) -> float:
        return self._clock_terms(sm_clock_mhz)[0]

    def _allreduce_time_s(self, rows: int) -> float:
        tp = self.model.tensor_parallel
        if tp == 1:
            return 0.0
        bytes_per_allreduce = rows * self.model.hidden_size * self.model.dtype_bytes
        ring_bytes = 2.0 * bytes_per_allreduce * (tp - 1) / tp
        return 2 * self.model.num_layers * ring_bytes / (self.gpu.nvlink_gb_s * 1e9)

    def padded_batch(self, batch_size: int) -> int:
        """The CUDA-graph size a decode batch runs as (eager beyond the largest graph)."""
        index = bisect.bisect_left(self._graph_sizes, batch_size)
        return self._graph_sizes[index] if index < len(self._graph_sizes) else batch_size

    def _combine(self, memory_s: float, compute_s: float) -> float:
        k = self.calibration.roofline_sharpness
        return float((memory_s**k + compute_s**k) ** (1.0 / k))

    def _power_w(self, sm_clock_mhz: float, memory_busy: float, compute_busy: float) -> float:
        """Draw at ``sm_clock_mhz`` before the power limiter (may exceed TDP)."""
        _, idle_w, relative = self._clock_terms(sm_clock_mhz)
        return self._draw_w(idle_w, relative, memory_busy, compute_busy)

    def _draw_w(
        self, idle_w: float, relative: float, memory_busy: float, compute_busy: float
    ) -> float:
        """`_power_w` from a clock's idle draw and relative f·V² (`_clock_terms`)."""
        cal = self.calibration
        activity = cal.min_activity + (1.0 - cal.min_activity) * min(1.0, compute_busy)
        return (
            idle_w
            + cal.memory_dynamic_w * min(1.0, memory_busy)
            + cal.core_dynamic_w * relative * activity
        )

    def _estimate(
        self, timing: Callable[[float], tuple[float, float, float]], sm_clock_mhz: float
    ) -> IterationEstimate:
        """Latency and draw of an iteration whose (latency, memory, compute) seconds at a clock
        ``timing`` gives; above TDP the power limiter slows the clock until the draw fits."""

        latency_s, memory_s, compute_s = timing(sm_clock_mhz)
        power_w = self._power_w(sm_clock_mhz, memory_s / latency_s, compute_s / latency_s)
        tdp_w = self.gpu.tdp_w
        if power_w <= tdp_w:
            return IterationEstimate(latency_s, power_w)

        def at(clock_mhz: float) -> tuple[float, float]:
            latency_s, memory_s, compute_s = timing(clock_mhz)
            return latency_s, self._power_w(clock_mhz, memory_s / latency_s, compute_s / latency_s)

        # The limiter settles at the highest clock whose draw fits, whatever clock was locked
        # above it (draw rises monotonically with clock), so bisect over the whole range.
        low_mhz, high_mhz = 1.0, float(self.gpu.max_sm_clock_mhz)
        for _ in range(_THROTTLE_BISECTIONS):
            middle_mhz = 0.5 * (low_mhz + high_mhz)
            if at(middle_mhz)[1] <= tdp_w:
                low_mhz = middle_mhz
            else:
                high_mhz = middle_mhz
        return IterationEstimate(at(min(low_mhz, sm_clock_mhz))[0], tdp_w)

    # ---- PerformanceModel ------------------------------------------------------------------
    @cached_property
    def _by_prefill(self) -> dict[tuple[int, float, float | None], IterationEstimate]:
        return {}

    def prefill_iteration(
        self, new_tokens: int, sm_clock_mhz: float, attention_pairs: float | None = None
    ) -> IterationEstimate:
        # Memoised, bounded: a served trace repeats its prompt lengths, and a prefill above the
        # TDP pays for the power limiter's bisection (a dozen evaluations) each time.
        key = (new_tokens, sm_clock_mhz, attention_pairs)
        estimate = self._by_prefill.get(key)
        if estimate is None:
            estimate = self._prefill_iteration(new_tokens, sm_clock_mhz, attention_pairs)
            if len(self._by_prefill) < _PREFILL_MEMO_SIZE:
                self._by_prefill[key] = estimate
        return estimate

    def _prefill_iteration(
        self, new_tokens: int, sm_clock_mhz: float, attention_pairs: float | None
    ) -> IterationEstimate:
        cal = self.calibration
        tokens = max(1, new_tokens)
        pairs = tokens * tokens / 2.0 if attention_pairs is None else attention_pairs
        row_efficiency = cal.compute_efficiency * tokens / (tokens + cal.compute_half_rows)
        attention_flops = self._attention_flops_per_pair * pairs / self.model.tensor_parallel
        kv_write_s = tokens * self._kv_bytes_per_token / self._memory_bytes_per_s
        memory_s = self._weights_time_s + kv_write_s
        fixed_s = (
            cal.prefill_overhead_ms / 1000.0 + self._allreduce_time_s(tokens) + self._tp_overhead_s
        )

        def timing(clock_mhz: float) -> tuple[float, float, float]:
            peak = self._peak_flops(clock_mhz)
            linear_s = self._linear_flops_per_token_per_gpu * tokens / (peak * row_efficiency)
            compute_s = linear_s + attention_flops / (peak * cal.attention_efficiency)
            return self._combine(memory_s, compute_s) + fixed_s, memory_s, compute_s

        return self._estimate(timing, sm_clock_mhz)

    def decode_iteration(
        self, batch_size: int, kv_tokens: int, sm_clock_mhz: float
    ) -> IterationEstimate:
        if batch_size <= 0:
            return IterationEstimate(0.0, self.idle_power_w(sm_clock_mhz))
        attention_flops = self._attention_flops_per_pair * kv_tokens / self.model.tensor_parallel
        kv_read_s = kv_tokens * self._kv_bytes_per_token / self._memory_bytes_per_s
        memory_s = self._weights_time_s + kv_read_s

        # The simulator's commonest call: `_estimate`'s arithmetic at the locked clock, done
        # here without its closure and with the clock's terms memoised alongside the batch's,
        # while the draw fits the TDP (decode nearly always).
        fixed_s, linear_s, attention_flops_per_s, idle_w, relative = self._decode_terms(
            batch_size, sm_clock_mhz
        )
        compute_s = linear_s + attention_flops / attention_flops_per_s
        latency_s = self._combine(memory_s, compute_s) + fixed_s
        power_w = self._draw_w(idle_w, relative, memory_s / latency_s, compute_s / latency_s)
        if power_w <= self.gpu.tdp_w:
            return IterationEstimate(latency_s, power_w)

        def timing(clock_mhz: float) -> tuple[float, float, float]:
            fixed_s, linear_s, attention_flops_per_s, _, _ = self._decode_terms(
                batch_size, clock_mhz
            )
            compute_s = linear_s + attention_flops / attention_flops_per_s
            return self._combine(memory_s, compute_s) + fixed_s, memory_s, compute_s

        return self._estimate(timing, sm_clock_mhz)

    @cached_property
    def _by_batch_and_clock(
        self,
    ) -> dict[tuple[int, float], tuple[float, float, float, float, float]]:
        return {}

    def _decode_terms(
        self, batch_size: int, sm_clock_mhz: float
    ) -> tuple[float, float, float, float, float]:
        """A decode step's terms that do not depend on its KV tokens: fixed seconds (overheads,
        all-reduce), the weights' matmul seconds, the attention FLOP/s, and the clock's idle draw
        and relative f·V² (memoised, bounded: the batch and the clock repeat from step to
        step)."""
        key = (batch_size, sm_clock_mhz)
        terms = self._by_batch_and_clock.get(key)
        if terms is None:
            cal = self.calibration
            rows = self.padded_batch(batch_size)
            fixed_s = (
                cal.decode_overhead_ms / 1000.0
                + cal.decode_per_request_overhead_ms * batch_size / 1000.0
                + self._allreduce_time_s(rows)
                + self._tp_overhead_s
            )
            peak, idle_w, relative = self._clock_terms(sm_clock_mhz)
            linear_s = (
                self._linear_flops_per_token_per_gpu * rows / (peak * cal.decode_compute_efficiency)
            )
            terms = (fixed_s, linear_s, peak * cal.attention_efficiency, idle_w, relative)
            if len(self._by_batch_and_clock) < _DECODE_MEMO_SIZE:
                self._by_batch_and_clock[key] = terms
        return terms

    def idle_power_w(self, sm_clock_mhz: float) -> float:
        """Bare idle plus the CUDA context, whose clock-dependent share follows f·V²."""
        return self._clock_terms(sm_clock_mhz)[1]

    def kv_capacity_tokens(self) -> int:
        return self._kv_capacity_tokens

    @cached_property
    def _kv_capacity_tokens(self) -> int:
        usable = self.gpu.memory_gib * 2**30 * self.calibration.kv_memory_fraction
        free_for_kv = usable - self.model.weight_bytes_per_gpu
        return max(0, math.floor(free_for_kv / self.model.kv_bytes_per_token_per_gpu))
