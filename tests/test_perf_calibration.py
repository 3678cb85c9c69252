"""The analytical model against every measured figure of docs/calibration.md.

Tolerance: +-25 % of the measured value (``TOLERANCE``) unless a test states otherwise. Figures
the model misses by more are marked ``xfail(strict=True)`` with the error measured when this file
was written, so recalibrating the model turns them into XPASS failures that ask for the marker to
go.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from voltana.hardware import ModelSpec, get_gpu, get_model
from voltana.perf.analytical import (
    DEFAULT_CALIBRATIONS,
    SPLITWISE_2023_TP_LAYER_OVERHEAD_MS,
    AnalyticalPerformanceModel,
)

pytestmark = pytest.mark.unit

TOLERANCE = 0.25

# ---- H100, Llama-3.1-8B, TP1 (ML.ENERGY leaderboard v3, chat workload, default clock) ---------

# Mean context per running request of the chat workload (prompt + half the answer, roughly).
CHAT_CONTEXT_TOKENS = 1100
# max batch -> (median ITL ms, average power W)
ML_ENERGY_H100_LLAMA_8B = {
    8: (7.3, 486.0),
    16: (7.9, 513.0),
    32: (8.9, 560.0),
    64: (11.5, 610.0),
    128: (16.5, 669.0),
    256: (26.1, 691.0),
    512: (47.4, 688.0),
}
# Power errors (model / measured - 1) outside +-25 % when the voltage-floor power model was fitted.
# Hopper's decode power is calibrated to decode-only H200 clock sweeps (137-300 W at small batch,
# -47..-90 W from 1980 to 780 MHz, at most ~32 % of decode energy recoverable; tests below). The
# leaderboard's serving runs draw far more at small batch (vLLM mixes chunked prefill into the
# decode iterations, and its power is a whole-run average), so both cannot hold for pure decode.
ML_ENERGY_POWER_MISSES = {8: "-44 %", 16: "-42 %", 32: "-38 %", 64: "-32 %", 128: "-26 %"}
ML_ENERGY_POWER_CAUSE = (
    "pure decode is calibrated to H200 decode-only measurements (137-300 W); the leaderboard's "
    "serving power includes chunked prefill mixed into each iteration"
)


def relative_error(predicted: float, measured: float) -> float:
    return predicted / measured - 1.0


@pytest.fixture(scope="module")
def h100_llama_8b() -> AnalyticalPerformanceModel:
    return AnalyticalPerformanceModel.for_hardware(get_gpu("h100-80g"), get_model("llama-3.1-8b"))


@pytest.mark.parametrize("batch", sorted(ML_ENERGY_H100_LLAMA_8B))
def test_h100_llama_8b_decode_itl_within_25_percent(
    h100_llama_8b: AnalyticalPerformanceModel, batch: int
) -> None:
    # At 512 x 1100 the KV tokens exceed one H100's cache (~454k), so vLLM ran a smaller batch
    # than its maximum there; the figure is compared as is.
    measured_ms, _ = ML_ENERGY_H100_LLAMA_8B[batch]
    estimate = h100_llama_8b.decode_iteration(batch, batch * CHAT_CONTEXT_TOKENS, 1980)
    error = relative_error(estimate.latency_s * 1e3, measured_ms)
    assert abs(error) <= TOLERANCE, f"ITL {estimate.latency_s * 1e3:.2f} ms vs {measured_ms} ms"


@pytest.mark.parametrize(
    "batch",
    [
        pytest.param(
            batch,
            marks=[
                pytest.mark.xfail(
                    strict=True,
                    reason=f"model is {ML_ENERGY_POWER_MISSES[batch]} off the leaderboard's "
                    f"{ML_ENERGY_H100_LLAMA_8B[batch][1]} W at batch {batch}: "
                    f"{ML_ENERGY_POWER_CAUSE}",
                )
            ]
            if batch in ML_ENERGY_POWER_MISSES
            else [],
        )
        for batch in sorted(ML_ENERGY_H100_LLAMA_8B)
    ],
)
def test_h100_llama_8b_decode_power_within_25_percent(
    h100_llama_8b: AnalyticalPerformanceModel, batch: int
) -> None:
    _, measured_w = ML_ENERGY_H100_LLAMA_8B[batch]
    estimate = h100_llama_8b.decode_iteration(batch, batch * CHAT_CONTEXT_TOKENS, 1980)
    error = relative_error(estimate.power_w, measured_w)
    assert abs(error) <= TOLERANCE, f"power {estimate.power_w:.0f} W vs {measured_w} W"


def test_h100_llama_8b_itl_and_power_rise_with_batch_like_the_measurements(
    h100_llama_8b: AnalyticalPerformanceModel,
) -> None:
    batches = sorted(ML_ENERGY_H100_LLAMA_8B)
    estimates = [h100_llama_8b.decode_iteration(b, b * CHAT_CONTEXT_TOKENS, 1980) for b in batches]
    latencies = [e.latency_s for e in estimates]
    powers = [e.power_w for e in estimates]
    assert latencies == sorted(latencies)
    assert powers == sorted(powers)


@pytest.mark.xfail(
    strict=True,
    reason=f"0.251 J/token at batch 8 is -45 % off 0.455 (and 0.046 at 512 is -35 %): "
    f"{ML_ENERGY_POWER_CAUSE}",
)
def test_h100_llama_8b_energy_per_token_spans_the_measured_range(
    h100_llama_8b: AnalyticalPerformanceModel,
) -> None:
    # Measured 0.455 J/token at batch 8 down to 0.070 at 512 (whole-iteration energy per token;
    # the serving figures include prefill, so only +-35 % is asked of pure decode).
    small = h100_llama_8b.decode_iteration(8, 8 * CHAT_CONTEXT_TOKENS, 1980)
    large = h100_llama_8b.decode_iteration(512, 512 * CHAT_CONTEXT_TOKENS, 1980)
    assert abs(relative_error(small.energy_j / 8, 0.455)) <= 0.35
    assert abs(relative_error(large.energy_j / 512, 0.070)) <= 0.35


def test_h100_llama_8b_energy_per_token_falls_with_batch_like_the_measurements(
    h100_llama_8b: AnalyticalPerformanceModel,
) -> None:
    # Measured 0.455 -> 0.070 J/token from batch 8 to 512: a 6.5x drop; decode alone drops
    # 5.5x in the model (serving adds prefill energy that batching amortises less).
    per_token = [
        h100_llama_8b.decode_iteration(b, b * CHAT_CONTEXT_TOKENS, 1980).energy_j / b
        for b in sorted(ML_ENERGY_H100_LLAMA_8B)
    ]
    assert per_token == sorted(per_token, reverse=True)
    assert per_token[0] / per_token[-1] == pytest.approx(0.455 / 0.070, rel=0.25)


# ---- Power below the voltage knee (Perseus A100 clock sweep; decode-only H200 sweeps) --------

# Perseus (ml-energy/zeus, sosp24_data/emulation/stage_profile/gpt3-175b+a100_sxm_bf16.csv): one
# compute-bound GPT-3 stage forward in bf16, energy relative to 1410 MHz at each locked clock.
PERSEUS_A100_ENERGY_RATIO = {1305: 0.93, 1215: 0.83, 1080: 0.74, 1005: 0.75, 945: 0.75, 855: 0.77}
COMPUTE_BOUND_PROMPT_TOKENS = 4096


@pytest.fixture(scope="module")
def a100_llama_8b() -> AnalyticalPerformanceModel:
    return AnalyticalPerformanceModel.for_hardware(get_gpu("a100-80g"), get_model("llama-3.1-8b"))


@pytest.mark.parametrize("clock_mhz", sorted(PERSEUS_A100_ENERGY_RATIO))
def test_a100_compute_bound_energy_ratio_within_0_05_of_perseus(
    a100_llama_8b: AnalyticalPerformanceModel, clock_mhz: int
) -> None:
    base = a100_llama_8b.prefill_iteration(COMPUTE_BOUND_PROMPT_TOKENS, 1410).energy_j
    ratio = a100_llama_8b.prefill_iteration(COMPUTE_BOUND_PROMPT_TOKENS, clock_mhz).energy_j / base
    assert ratio == pytest.approx(PERSEUS_A100_ENERGY_RATIO[clock_mhz], abs=0.05)


@pytest.mark.parametrize("tokens", [1024, 4096, 8192])
def test_a100_compute_bound_energy_optimum_sits_near_the_knee(
    a100_llama_8b: AnalyticalPerformanceModel, tokens: int
) -> None:
    # Perseus: lowest energy per unit of work near 1065-1080 MHz; never at the bottom clock.
    clocks = a100_llama_8b.gpu.supported_sm_clocks_mhz
    best = min(clocks, key=lambda c: a100_llama_8b.prefill_iteration(tokens, c).energy_j)
    assert 945 <= best <= 1215


def test_a100_power_falls_only_linearly_below_the_knee(
    a100_llama_8b: AnalyticalPerformanceModel,
) -> None:
    # Perseus: ~0.65 W/MHz above ~1080 MHz, ~0.2 W/MHz below (the voltage floor).
    def power_w(clock: int) -> float:
        return a100_llama_8b.prefill_iteration(COMPUTE_BOUND_PROMPT_TOKENS, clock).power_w

    below = [(power_w(c) - power_w(c - 150)) / 150 for c in (510, 705, 855, 1005)]
    above = (power_w(1305) - power_w(1155)) / 150
    assert max(below) - min(below) < 0.02  # a straight line below the knee
    assert above > 2.5 * max(below)


@pytest.mark.parametrize("model_key", ["llama-3.1-8b", "ministral-3b"])
@pytest.mark.parametrize("batch", [1, 4, 8])
def test_h200_decode_only_power_and_clock_savings_match_the_measurements(
    model_key: str, batch: int
) -> None:
    # Decode-only on H200 (small models): 137-300 W; 1980 -> 780 MHz saved 47-90 W with <1 %
    # throughput loss; clock locking recovers at most ~32 % of decode energy.
    perf = AnalyticalPerformanceModel.for_hardware(get_gpu("h200"), get_model(model_key))
    kv_tokens = batch * 1024
    at_max = perf.decode_iteration(batch, kv_tokens, 1980)
    at_780 = perf.decode_iteration(batch, kv_tokens, 780)
    assert 137 <= at_max.power_w <= 300
    assert 47 <= at_max.power_w - at_780.power_w <= 90
    assert at_780.latency_s / at_max.latency_s - 1 < 0.01
    best_j = min(
        perf.decode_iteration(batch, kv_tokens, c).energy_j
        for c in perf.gpu.supported_sm_clocks_mhz
    )
    assert 0.20 <= 1 - best_j / at_max.energy_j <= 0.33


# ---- Llama-2-70B FP16 TP8 (Splitwise's measured performance model) --------------------------

LLAMA_2_70B_TP8 = ModelSpec(
    key="llama-2-70b",
    num_layers=80,
    hidden_size=8192,
    num_attention_heads=64,
    num_kv_heads=8,
    intermediate_size=28672,
    vocab_size=32000,
    tensor_parallel=8,
    max_context_tokens=4096,
)
# Splitwise gives decode token time without its context; a mid-size chat context is assumed.
SPLITWISE_DECODE_CONTEXT_TOKENS = 1024

# Relative errors measured when this file was written (model / measured - 1), for the reasons.
SPLITWISE_PREFILL: list[tuple[str, int, float, str | None]] = [
    # (gpu, prompt tokens, measured ms, error outside +-25 % or None)
    ("a100-80g", 512, 96.0, None),  # +11.9 %
    ("a100-80g", 2048, 274.0, None),  # +0.1 %
    ("a100-80g", 4096, 651.0, None),  # -21.8 %
    ("a100-80g", 8192, 1544.0, "-33.7 %"),
    ("h100-80g", 512, 57.0, None),  # +3.1 %
    ("h100-80g", 2048, 137.0, None),  # -0.5 %
    ("h100-80g", 4096, 379.0, "-35.5 %"),
    ("h100-80g", 8192, 848.0, "-43.7 %"),
]
SPLITWISE_DECODE: list[tuple[str, int, float, str | None]] = [
    # (gpu, batch, measured ms, error outside +-25 % or None)
    ("a100-80g", 1, 44.9, None),  # -0.2 %
    ("a100-80g", 16, 50.4, None),  # -9.8 %
    ("a100-80g", 64, 71.3, "-33.1 %"),
    ("h100-80g", 1, 29.7, None),  # +3.0 %
    ("h100-80g", 16, 34.2, None),  # -9.3 %
    ("h100-80g", 64, 50.0, "-34.9 %"),
]


PREFILL_CAUSE = (
    "too fast for long prompts: Splitwise's 2023 stack ran attention far below the FlashAttention "
    "efficiency the model is fitted to (the measured time grows superlinearly from 4k tokens)"
)
DECODE_CAUSE = (
    "too fast at batch 64: Splitwise's 2023 stack (paged attention v1, no CUDA graphs) added "
    "~0.4 ms per request per step that modern SGLang does not; the per-layer TP overhead "
    "(tp_layer_overhead_ms) reproduces batch 1 and 16"
)


def _params(rows: list[tuple[str, int, float, str | None]], what: str, cause: str) -> list[Any]:
    params: list[Any] = []
    for gpu_key, size, measured_ms, error in rows:
        marks = []
        if error is not None:
            reason = (
                f"model is {error} off Splitwise's {measured_ms} ms ({what} {size}, {gpu_key} "
                f"TP8); {cause} - recalibrate"
            )
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        params.append(
            pytest.param(gpu_key, size, measured_ms, marks=marks, id=f"{gpu_key}-{what}{size}")
        )
    return params


def llama_2_70b_tp8(gpu_key: str) -> AnalyticalPerformanceModel:
    """The model as calibrated for Splitwise's 2023 serving stack (its per-layer TP overhead)."""
    calibration = replace(
        DEFAULT_CALIBRATIONS[gpu_key],
        tp_layer_overhead_ms=SPLITWISE_2023_TP_LAYER_OVERHEAD_MS[gpu_key],
    )
    return AnalyticalPerformanceModel(get_gpu(gpu_key), LLAMA_2_70B_TP8, calibration)


def test_llama_2_70b_spec_has_its_published_size() -> None:
    assert LLAMA_2_70B_TP8.param_count == pytest.approx(69.0e9, rel=0.01)


@pytest.mark.parametrize(
    ("gpu_key", "tokens", "measured_ms"), _params(SPLITWISE_PREFILL, "prompt", PREFILL_CAUSE)
)
def test_splitwise_llama_2_70b_tp8_prefill_within_25_percent(
    gpu_key: str, tokens: int, measured_ms: float
) -> None:
    perf = llama_2_70b_tp8(gpu_key)
    latency_ms = perf.prefill_iteration(tokens, perf.gpu.max_sm_clock_mhz).latency_s * 1e3
    error = relative_error(latency_ms, measured_ms)
    assert abs(error) <= TOLERANCE, f"{latency_ms:.0f} ms vs {measured_ms} ms ({error:+.1%})"


@pytest.mark.parametrize(
    ("gpu_key", "batch", "measured_ms"), _params(SPLITWISE_DECODE, "batch", DECODE_CAUSE)
)
def test_splitwise_llama_2_70b_tp8_decode_within_25_percent(
    gpu_key: str, batch: int, measured_ms: float
) -> None:
    perf = llama_2_70b_tp8(gpu_key)
    kv_tokens = batch * SPLITWISE_DECODE_CONTEXT_TOKENS
    latency_ms = perf.decode_iteration(batch, kv_tokens, perf.gpu.max_sm_clock_mhz).latency_s * 1e3
    error = relative_error(latency_ms, measured_ms)
    assert abs(error) <= TOLERANCE, f"{latency_ms:.1f} ms vs {measured_ms} ms ({error:+.1%})"


@pytest.mark.parametrize("gpu_key", ["a100-80g", "h100-80g"])
def test_splitwise_prefill_grows_superlinearly_with_prompt_like_the_measurements(
    gpu_key: str,
) -> None:
    # Measured: a token costs more the longer the prompt (attention): 4096 -> 8192 adds 893 ms
    # (A100) where 2048 -> 4096 adds 377 ms. The model's marginal cost must grow the same way.
    perf = llama_2_70b_tp8(gpu_key)
    clock = perf.gpu.max_sm_clock_mhz

    def latency_s(tokens: int) -> float:
        return perf.prefill_iteration(tokens, clock).latency_s

    assert latency_s(8192) - latency_s(4096) > 2.0 * (latency_s(4096) - latency_s(2048))


def test_splitwise_h100_is_faster_than_a100() -> None:
    a100, h100 = llama_2_70b_tp8("a100-80g"), llama_2_70b_tp8("h100-80g")
    assert (
        h100.prefill_iteration(2048, 1980).latency_s < a100.prefill_iteration(2048, 1410).latency_s
    )
    assert (
        h100.decode_iteration(16, 16 * 1024, 1980).latency_s
        < a100.decode_iteration(16, 16 * 1024, 1410).latency_s
    )


# ---- A100 power envelope of the paper's figure (docs/calibration.md: ~320 W at 1410, ~200 W at 1005) --


def test_a100_busy_decode_power_near_the_paper_averages() -> None:
    perf = AnalyticalPerformanceModel.for_hardware(get_gpu("a100-80g"), get_model("llama-3.1-8b"))
    batch, kv_tokens = 64, 64 * 300  # LMSYS-like: short prompts, ~215-token answers
    at_max = perf.decode_iteration(batch, kv_tokens, 1410).power_w
    at_1005 = perf.decode_iteration(batch, kv_tokens, 1005).power_w
    assert abs(relative_error(at_max, 320.0)) <= TOLERANCE
    assert abs(relative_error(at_1005, 200.0)) <= TOLERANCE
    assert at_1005 < at_max
