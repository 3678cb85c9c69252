"""Physical properties of the analytical performance model (docs/calibration.md).

Each property is one the policies rely on: prefill is compute-bound (scales with the clock),
decode is memory-bound (barely does), decode latency steps at CUDA-graph sizes, power falls with
the clock and never passes TDP, and decode energy per token is U-shaped in the clock.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voltana.errors import ConfigError
from voltana.hardware import GPU_CATALOG, GpuSpec, ModelSpec, get_gpu, get_model, load_hf_config
from voltana.perf.analytical import (
    DEFAULT_CALIBRATIONS,
    AnalyticalPerformanceModel,
    cuda_graph_batch_sizes,
)
from voltana.perf.power import VoltageFrequencyCurve

pytestmark = pytest.mark.unit

GPU_KEYS = sorted(GPU_CATALOG)
MODEL_KEYS = ("llama-3.1-8b", "ministral-3b")
PREFILL_TOKENS = (64, 512, 2048, 8192)
DECODE_BATCHES = (1, 8, 64, 256)
CONTEXT_TOKENS = 1024


def perf_for(gpu_key: str, model_key: str, tp: int = 1) -> AnalyticalPerformanceModel:
    model = get_model(model_key).with_tensor_parallel(tp)
    return AnalyticalPerformanceModel.for_hardware(get_gpu(gpu_key), model)


@pytest.fixture(params=[(g, m) for g in GPU_KEYS for m in MODEL_KEYS], ids=lambda p: "-".join(p))
def perf(request: pytest.FixtureRequest) -> AnalyticalPerformanceModel:
    gpu_key, model_key = request.param
    return perf_for(gpu_key, model_key)


# ---- clock dependence -----------------------------------------------------------------------


@pytest.mark.parametrize("tokens", PREFILL_TOKENS)
def test_lower_clock_means_longer_prefill_and_lower_power(
    perf: AnalyticalPerformanceModel, tokens: int
) -> None:
    clocks = perf.gpu.supported_sm_clocks_mhz
    estimates = [perf.prefill_iteration(tokens, clock) for clock in clocks]
    latency_s = np.array([e.latency_s for e in estimates])
    power_w = np.array([e.power_w for e in estimates])
    # Clocks ascend, so latency must strictly fall and power strictly rise - until the draw
    # reaches TDP: above that clock the power limiter holds the GPU at one effective clock, so
    # latency and power stay flat (at TDP) however high the locked clock.
    limited = power_w >= perf.gpu.tdp_w
    free = ~limited
    assert np.all(np.diff(latency_s[free]) < 0), "prefill latency must grow as the clock drops"
    assert np.all(np.diff(power_w[free]) > 0), "prefill power must fall as the clock drops"
    if limited.any():
        first = int(np.argmax(limited))
        assert np.all(limited[first:]), "once power-limited, every higher clock is too"
        assert np.allclose(latency_s[first:], latency_s[first]), "the limiter sets one pace"
        assert np.all(latency_s[first] < latency_s[:first])


@pytest.mark.parametrize("batch", DECODE_BATCHES)
def test_lower_clock_never_speeds_up_decode_and_lowers_its_power(
    perf: AnalyticalPerformanceModel, batch: int
) -> None:
    clocks = perf.gpu.supported_sm_clocks_mhz
    estimates = [perf.decode_iteration(batch, batch * CONTEXT_TOKENS, c) for c in clocks]
    latency_s = np.array([e.latency_s for e in estimates])
    power_w = np.array([e.power_w for e in estimates])
    assert np.all(np.diff(latency_s) <= 0)
    assert np.all(np.diff(power_w) > 0)


def test_decode_is_far_less_clock_sensitive_than_prefill(perf: AnalyticalPerformanceModel) -> None:
    gpu = perf.gpu
    low, high = gpu.min_sm_clock_mhz, gpu.max_sm_clock_mhz
    prefill_slowdown = (
        perf.prefill_iteration(2048, low).latency_s / perf.prefill_iteration(2048, high).latency_s
        - 1.0
    )
    batch = 4
    kv_tokens = batch * CONTEXT_TOKENS
    decode_slowdown = (
        perf.decode_iteration(batch, kv_tokens, low).latency_s
        / perf.decode_iteration(batch, kv_tokens, high).latency_s
        - 1.0
    )
    # Prefill is compute-bound: dropping to the lowest clock costs several times its latency.
    assert prefill_slowdown > 2.0
    # Decode at small batch is memory-bound (docs/calibration.md: +1-6% for a ~16x clock drop).
    assert decode_slowdown < prefill_slowdown / 3
    assert decode_slowdown < 0.10


# ---- CUDA-graph boundaries ----------------------------------------------------------------


def test_cuda_graph_sizes_follow_sglang() -> None:
    sizes = cuda_graph_batch_sizes(64)
    assert sizes == (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64)


@pytest.mark.parametrize("gpu_key", GPU_KEYS)
def test_decode_latency_is_flat_inside_a_graph_bucket_and_steps_at_its_edge(gpu_key: str) -> None:
    gpu = get_gpu(gpu_key)
    # Without the small per-request bookkeeping cost the padded batch alone sets the latency.
    calibration = replace(DEFAULT_CALIBRATIONS[gpu_key], decode_per_request_overhead_ms=0.0)
    perf = AnalyticalPerformanceModel(gpu, get_model("llama-3.1-8b"), calibration)
    kv_tokens = 16 * CONTEXT_TOKENS  # the same KV tokens for every batch size
    clock = gpu.min_sm_clock_mhz  # where compute matters, so the padding shows
    latency_s = {b: perf.decode_iteration(b, kv_tokens, clock).latency_s for b in range(8, 18)}
    assert [perf.padded_batch(b) for b in range(9, 17)] == [16] * 8
    assert len({latency_s[b] for b in range(9, 17)}) == 1, "batch 9..16 all run as 16"
    assert latency_s[9] > latency_s[8] * 1.01, "8 -> 9 crosses a capture size"
    assert latency_s[17] > latency_s[16], "16 -> 17 crosses the next one"


@pytest.mark.parametrize("gpu_key", GPU_KEYS)
def test_boundary_step_exceeds_per_request_cost_with_default_calibration(gpu_key: str) -> None:
    perf = perf_for(gpu_key, "llama-3.1-8b")
    clock = perf.gpu.max_sm_clock_mhz
    kv_tokens = 128 * CONTEXT_TOKENS
    latency_s = [perf.decode_iteration(b, kv_tokens, clock).latency_s for b in (127, 128, 129, 130)]
    within_bucket = [latency_s[1] - latency_s[0], latency_s[3] - latency_s[2]]
    step = latency_s[2] - latency_s[1]
    assert step > 5 * max(within_bucket), "crossing 128 must cost more than adding a request"


def test_batches_beyond_the_largest_graph_run_unpadded() -> None:
    perf = perf_for("a100-80g", "llama-3.1-8b")
    largest = cuda_graph_batch_sizes(perf.calibration.max_cuda_graph_batch)[-1]
    assert perf.padded_batch(largest) == largest
    assert perf.padded_batch(largest + 3) == largest + 3


# ---- power -----------------------------------------------------------------------------------


def test_power_never_exceeds_tdp(perf: AnalyticalPerformanceModel) -> None:
    gpu = perf.gpu
    for clock in (*gpu.supported_sm_clocks_mhz[::5], gpu.max_sm_clock_mhz):
        for tokens in (1, 2048, 65536):
            assert perf.prefill_iteration(tokens, clock).power_w <= gpu.tdp_w
        for batch in (1, 512, 2048):
            assert perf.decode_iteration(batch, batch * 4096, clock).power_w <= gpu.tdp_w
        assert perf.idle_power_w(clock) <= gpu.tdp_w


@pytest.mark.parametrize("gpu_key", GPU_KEYS)
def test_power_is_capped_at_tdp_when_the_draw_would_exceed_it(gpu_key: str) -> None:
    gpu = get_gpu(gpu_key)
    hot = replace(DEFAULT_CALIBRATIONS[gpu_key], core_dynamic_w=10 * gpu.tdp_w)
    perf = AnalyticalPerformanceModel(gpu, get_model("llama-3.1-8b"), hot)
    assert perf.prefill_iteration(8192, gpu.max_sm_clock_mhz).power_w == gpu.tdp_w
    assert perf.decode_iteration(256, 256 * 1024, gpu.max_sm_clock_mhz).power_w == gpu.tdp_w


def test_idle_power_rises_with_clock_and_stays_near_datasheet_idle(
    perf: AnalyticalPerformanceModel,
) -> None:
    gpu = perf.gpu
    idle_w = np.array([perf.idle_power_w(clock) for clock in gpu.supported_sm_clocks_mhz])
    assert np.all(np.diff(idle_w) > 0)
    # Floor: bare idle plus an open CUDA context (docs/calibration.md: +26-50 W); never a busy GPU's draw.
    assert idle_w[0] >= gpu.idle_w
    assert idle_w[-1] < 0.3 * gpu.tdp_w


def test_busy_gpu_draws_more_than_an_idle_one_at_the_same_clock(
    perf: AnalyticalPerformanceModel,
) -> None:
    for clock in perf.gpu.supported_sm_clocks_mhz[::10]:
        idle_w = perf.idle_power_w(clock)
        assert perf.prefill_iteration(512, clock).power_w > idle_w
        assert perf.decode_iteration(1, CONTEXT_TOKENS, clock).power_w > idle_w


def test_empty_decode_batch_is_free_and_draws_idle_power() -> None:
    perf = perf_for("h100-80g", "llama-3.1-8b")
    estimate = perf.decode_iteration(0, 0, 1005)
    assert estimate.latency_s == 0.0
    assert estimate.power_w == perf.idle_power_w(1005)


# ---- energy ----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [64, 256])
def test_decode_energy_per_token_is_u_shaped_on_h100(batch: int) -> None:
    perf = perf_for("h100-80g", "llama-3.1-8b")
    clocks = perf.gpu.supported_sm_clocks_mhz
    energy_j = np.array(
        [perf.decode_iteration(batch, batch * CONTEXT_TOKENS, c).energy_j / batch for c in clocks]
    )
    best = int(np.argmin(energy_j))
    assert 0 < best < len(clocks) - 1, f"optimum at {clocks[best]} MHz is on the range's edge"
    # One valley: falling up to the optimum, rising after it.
    assert np.all(np.diff(energy_j[: best + 1]) < 0)
    assert np.all(np.diff(energy_j[best:]) > 0)
    # The valley is deep enough to matter for a controller.
    assert energy_j[0] > 1.05 * energy_j[best]
    assert energy_j[-1] > 1.05 * energy_j[best]


def test_iteration_energy_is_latency_times_power() -> None:
    estimate = perf_for("a100-80g", "llama-3.1-8b").prefill_iteration(1024, 1005)
    assert estimate.energy_j == pytest.approx(estimate.latency_s * estimate.power_w)


# ---- memory ----------------------------------------------------------------------------------


def test_catalog_models_have_their_published_sizes() -> None:
    assert get_model("llama-3.1-8b").param_count == pytest.approx(8.03e9, rel=0.01)
    assert get_model("llama-3.1-70b").param_count == pytest.approx(70.6e9, rel=0.01)
    # Llama-3.1-8B: 2 (K,V) x 32 layers x 8 KV heads x 128 dims x 2 bytes.
    assert get_model("llama-3.1-8b").kv_bytes_per_token_per_gpu == 131072


@pytest.mark.parametrize("gpu_key", GPU_KEYS)
def test_kv_capacity_is_what_is_left_after_weights(gpu_key: str) -> None:
    gpu = get_gpu(gpu_key)
    perf = perf_for(gpu_key, "llama-3.1-8b")
    model = perf.model
    usable_bytes = gpu.memory_gib * 2**30 * perf.calibration.kv_memory_fraction
    expected = (usable_bytes - model.weight_bytes_per_gpu) / model.kv_bytes_per_token_per_gpu
    capacity = perf.kv_capacity_tokens()
    assert capacity == pytest.approx(expected, abs=1)
    # An 80 GB GPU holds a few hundred thousand Llama-8B KV tokens (SGLang reports ~450k).
    assert 200_000 < capacity < 2_000_000


def test_kv_capacity_grows_with_memory_and_is_zero_when_weights_do_not_fit() -> None:
    assert (
        perf_for("h200", "llama-3.1-8b").kv_capacity_tokens()
        > perf_for("h100-80g", "llama-3.1-8b").kv_capacity_tokens()
    )
    assert perf_for("a100-80g", "llama-3.1-70b").kv_capacity_tokens() == 0  # 141 GB of weights
    assert perf_for("a100-80g", "llama-3.1-70b", tp=2).kv_capacity_tokens() > 0


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_tensor_parallel_splits_weights_and_kv_per_gpu(tp: int) -> None:
    single = get_model("llama-3.1-70b")
    split = single.with_tensor_parallel(tp)
    assert split.weight_bytes_per_gpu == pytest.approx(single.weight_bytes_per_gpu / tp)
    assert split.kv_bytes_per_token_per_gpu == single.kv_bytes_per_token_per_gpu / tp
    assert split.param_count == single.param_count  # the model itself is unchanged


def test_kv_heads_are_replicated_when_tp_exceeds_them() -> None:
    model = get_model("llama-3.1-8b")  # 8 KV heads
    one_head = model.with_tensor_parallel(8).kv_bytes_per_token_per_gpu
    assert model.with_tensor_parallel(16).kv_bytes_per_token_per_gpu == one_head


def test_tensor_parallel_speeds_up_decode_of_a_large_model() -> None:
    gpu = get_gpu("h100-80g")
    model = get_model("llama-3.1-70b")
    tp2 = AnalyticalPerformanceModel.for_hardware(gpu, model.with_tensor_parallel(2))
    tp8 = AnalyticalPerformanceModel.for_hardware(gpu, model.with_tensor_parallel(8))
    clock = gpu.max_sm_clock_mhz
    assert (
        tp8.decode_iteration(8, 8192, clock).latency_s
        < tp2.decode_iteration(8, 8192, clock).latency_s
    )


def test_invalid_tensor_parallel_degree_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        get_model("llama-3.1-8b").with_tensor_parallel(0)


# ---- GPU catalog -----------------------------------------------------------------------------


@pytest.mark.parametrize("gpu_key", GPU_KEYS)
def test_supported_clocks_span_the_datasheet_range(gpu_key: str) -> None:
    gpu: GpuSpec = get_gpu(gpu_key)
    clocks = gpu.supported_sm_clocks_mhz
    assert clocks[0] == gpu.min_sm_clock_mhz
    assert clocks[-1] == gpu.max_sm_clock_mhz
    assert gpu.default_sm_clock_mhz in clocks
    assert list(clocks) == sorted(set(clocks))
    assert gpu.clamp_sm_clock_mhz(gpu.min_sm_clock_mhz + 1) == clocks[1]
    assert gpu.clamp_sm_clock_mhz(1e9) == gpu.max_sm_clock_mhz


def test_a100_has_the_paper_clocks() -> None:
    clocks = get_gpu("a100-80g").supported_sm_clocks_mhz
    assert {1005, 1095, 1200, 1305, 1410} <= set(clocks)


# ---- Hugging Face config.json ---------------------------------------------------------------

LLAMA_31_8B_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}


def write_config(tmp_path: Path, config: object, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def test_hf_config_of_llama_8b_matches_the_catalog(tmp_path: Path) -> None:
    loaded = load_hf_config(write_config(tmp_path, LLAMA_31_8B_CONFIG), key="llama-3.1-8b")
    assert loaded == get_model("llama-3.1-8b")


def test_hf_config_nested_text_config_and_explicit_head_dim(tmp_path: Path) -> None:
    text_config = {**LLAMA_31_8B_CONFIG, "head_dim": 256, "torch_dtype": "float32"}
    loaded = load_hf_config(write_config(tmp_path, {"text_config": text_config}))
    assert loaded.head_dim_ == 256
    assert loaded.dtype_bytes == 4
    assert loaded.key == tmp_path.name  # no name in the file: the folder names it


def test_hf_config_without_kv_heads_means_multi_head_attention(tmp_path: Path) -> None:
    config = {k: v for k, v in LLAMA_31_8B_CONFIG.items() if k != "num_key_value_heads"}
    assert load_hf_config(write_config(tmp_path, config)).num_kv_heads == 32


@pytest.mark.parametrize(
    "field", ["num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size"]
)
def test_hf_config_missing_field_is_a_config_error(tmp_path: Path, field: str) -> None:
    config = {k: v for k, v in LLAMA_31_8B_CONFIG.items() if k != field}
    path = write_config(tmp_path, config)
    with pytest.raises(ConfigError, match=field) as error:
        load_hf_config(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({**LLAMA_31_8B_CONFIG, "hidden_size": "wide"}), "invalid value"),
    ],
)
def test_hf_config_malformed_is_a_config_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_hf_config(path)


def test_hf_config_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_hf_config(tmp_path / "absent.json")


def test_hf_loaded_model_drives_the_performance_model(tmp_path: Path) -> None:
    model: ModelSpec = load_hf_config(write_config(tmp_path, LLAMA_31_8B_CONFIG))
    perf = AnalyticalPerformanceModel.for_hardware(get_gpu("a100-80g"), model)
    reference = perf_for("a100-80g", "llama-3.1-8b")
    assert perf.decode_iteration(16, 16_000, 1410) == reference.decode_iteration(16, 16_000, 1410)


# ---- voltage/frequency curve -------------------------------------------------------------------


def test_voltage_curve_is_flat_below_the_knee_and_continuous_at_it() -> None:
    curve = VoltageFrequencyCurve(1410.0, 1080.0, 0.75)
    assert curve.voltage_ratio(210) == curve.voltage_ratio(1080) == 0.75
    assert curve.voltage_ratio(1410) == 1.0
    assert curve.voltage_ratio(1081) == pytest.approx(0.75, abs=1e-3)
    assert curve.relative_dynamic_power(1410) == 1.0
    # Linear in the clock below the knee: halving the clock halves the dynamic power.
    assert curve.relative_dynamic_power(500) == pytest.approx(2 * curve.relative_dynamic_power(250))


@pytest.mark.parametrize(
    ("knee", "floor"), [(0.0, 0.75), (1500.0, 0.75), (1080.0, 0.0), (1080.0, 1.2)]
)
def test_voltage_curve_rejects_impossible_shapes(knee: float, floor: float) -> None:
    with pytest.raises(ConfigError):
        VoltageFrequencyCurve(1410.0, knee, floor)


@pytest.mark.parametrize("hot", [False, True], ids=["below-tdp", "power-limited"])
def test_memoised_clock_terms_give_exactly_a_fresh_models_figures(hot: bool) -> None:
    """The model memoises its per-clock terms (the simulator asks at a handful of clocks, the
    power limiter at fractional ones), its decode terms and its prefill estimates: a warm model
    must answer bit for bit what a fresh one does."""
    gpu = get_gpu("a100-80g")
    calibration = DEFAULT_CALIBRATIONS[gpu.key]
    if hot:
        calibration = replace(calibration, core_dynamic_w=3 * gpu.tdp_w)
    warm = AnalyticalPerformanceModel(gpu, get_model("llama-3.1-8b"), calibration)
    for _ in range(2):  # the second pass answers from the memo
        for clock in (gpu.min_sm_clock_mhz, 1005, 1187.5, gpu.max_sm_clock_mhz):
            fresh = AnalyticalPerformanceModel(gpu, get_model("llama-3.1-8b"), calibration)
            assert warm.decode_iteration(37, 41_000, clock) == fresh.decode_iteration(
                37, 41_000, clock
            )
            assert warm.prefill_iteration(3000, clock, 2.2e6) == fresh.prefill_iteration(
                3000, clock, 2.2e6
            )
            assert warm.idle_power_w(clock) == fresh.idle_power_w(clock)
