"""Pure parts of the simulated engine: tokenizer, /generate parsing, Prometheus text, windows."""

from __future__ import annotations

import asyncio
import math

import pytest

from voltana.engine.errors import EngineRequestError, EngineTimeoutError, EngineUnavailableError
from voltana.engine.prometheus import Histogram, format_labels, parse_prometheus_text
from voltana.engine.protocol import (
    DEFAULT_MAX_NEW_TOKENS,
    BootstrapTarget,
    GenerateRequest,
    parse_generate_request,
)
from voltana.engine.settings import EngineMode, SimEngineSettings
from voltana.engine.sglang_client import error_for_status, metrics_by_name
from voltana.engine.sim_engine import SimEngine
from voltana.engine.stats import WindowedSamples
from voltana.engine.stopping import StopCriteria, check_stop, visible_text
from voltana.engine.tokenizer import FIRST_ORDINARY_ID, ToyTokenizer
from voltana.errors import ConfigError, InvalidArgumentError

pytestmark = pytest.mark.unit

VOCAB = 128256


def test_tokenizer_counts_about_four_characters_per_token() -> None:
    tokenizer = ToyTokenizer(VOCAB)
    assert len(tokenizer.encode("hello world")) == 4  # "hell" "o" "worl" "d"
    assert len(tokenizer.encode("abcd " * 25)) == 25
    assert tokenizer.encode("   ") == []
    ids = tokenizer.encode("the quick brown fox")
    assert all(FIRST_ORDINARY_ID <= token < VOCAB for token in ids)
    assert ids == ToyTokenizer(VOCAB).encode("the quick brown fox")


def test_outputs_depend_only_on_the_prompt() -> None:
    tokenizer = ToyTokenizer(VOCAB)
    seed = tokenizer.prompt_seed([1000, 1001, 1002])
    outputs = [tokenizer.output_token_id(seed, position) for position in range(50)]
    assert outputs == [ToyTokenizer(VOCAB).output_token_id(seed, p) for p in range(50)]
    assert len(set(outputs)) > 45  # looks random, not constant
    assert all(FIRST_ORDINARY_ID <= token < VOCAB for token in outputs)
    assert tokenizer.prompt_seed([1000, 1001]) != seed
    text = tokenizer.decode(outputs[:3])
    assert text == "".join(tokenizer.decode_token(t) for t in outputs[:3])
    assert text.startswith(" ") and len(text.split()) == 3


def test_parse_generate_request_reads_sglang_fields() -> None:
    tokenizer = ToyTokenizer(VOCAB)
    request = parse_generate_request(
        {
            "text": "abcdefgh ij",
            "sampling_params": {"max_new_tokens": 7, "temperature": 0.0, "stop": ["x"]},
            "stream": True,
            "rid": "r-1",
            "bootstrap_host": "10.0.0.1",
            "bootstrap_port": 8998,
            "bootstrap_room": 2**63 - 1,
        },
        tokenizer,
    )
    assert request.rid == "r-1"
    assert request.prompt_tokens == 3
    assert request.max_new_tokens == 7
    assert request.stream is True
    assert request.bootstrap is not None
    assert (request.bootstrap.host, request.bootstrap.port) == ("10.0.0.1", 8998)
    assert request.bootstrap.room == 2**63 - 1

    defaults = parse_generate_request({"input_ids": [1000, 1001]}, tokenizer)
    assert defaults.max_new_tokens == DEFAULT_MAX_NEW_TOKENS
    assert defaults.stream is False and defaults.bootstrap is None
    assert defaults.input_ids == (1000, 1001)
    assert defaults.rid  # generated


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({}, "either 'text' or 'input_ids'"),
        ({"text": "a", "input_ids": [1000]}, "not both"),
        ({"text": " \n "}, "prompt is empty"),
        ({"input_ids": []}, "prompt is empty"),
        ({"input_ids": [[1000]]}, "batched"),
        ({"input_ids": [1000, "x"]}, "list of integers"),
        ({"input_ids": [VOCAB]}, "outside the vocabulary"),
        ({"text": "a", "sampling_params": {"max_new_tokens": -1}}, "max_new_tokens must be >= 0"),
        ({"text": "a", "sampling_params": {"max_new_tokens": 1.5}}, "must be an integer"),
        ({"text": "a", "sampling_params": []}, "'sampling_params' must be an object"),
        ({"text": "a", "stream": "yes"}, "'stream' must be a boolean"),
        ({"text": "a", "bootstrap_host": "h", "bootstrap_port": 1}, "'bootstrap_room' is required"),
        ({"text": "a", "bootstrap_room": -1}, "bootstrap_room"),
        ({"text": "a", "bootstrap_room": 2**63}, "bootstrap_room"),
        ({"text": "a", "sampling_params": {"stop": ""}}, "'stop' must be a non-empty string"),
        ({"text": "a", "sampling_params": {"stop": [1]}}, "'stop' must be"),
        ({"text": "a", "sampling_params": {"stop_token_ids": ["x"]}}, "list of integers"),
        ({"text": "a", "sampling_params": {"stop_token_ids": [VOCAB]}}, "outside the vocab"),
        ({"text": "a", "sampling_params": {"ignore_eos": 1}}, "'ignore_eos' must be a boolean"),
    ],
)
def test_parse_generate_request_refuses_bad_input(body: object, message: str) -> None:
    with pytest.raises(EngineRequestError, match=message) as caught:
        parse_generate_request(body, ToyTokenizer(VOCAB))
    assert caught.value.status == 400
    assert isinstance(caught.value, InvalidArgumentError)


def test_settings_normalise_mode_and_refuse_bad_values() -> None:
    assert SimEngineSettings(mode="mixed").engine_mode is EngineMode.NULL
    assert SimEngineSettings(mode="PREFILL").mode is EngineMode.PREFILL
    assert SimEngineSettings().served_model_path == "sim/llama-3.1-8b"
    with pytest.raises(ConfigError, match="unknown engine mode"):
        SimEngineSettings(mode="both")
    with pytest.raises(ConfigError, match="speedup"):
        SimEngineSettings(speedup=0)
    with pytest.raises(ConfigError, match="port"):
        SimEngineSettings(port=70000)


def test_histogram_renders_cumulative_buckets_that_parse_back() -> None:
    histogram = Histogram("sglang:x_seconds", "help", (0.1, 1.0))
    histogram.observe(0.05)
    histogram.observe(0.5, count=3)
    histogram.observe(7.0)
    text = "\n".join(histogram.render({"model_name": 'we"ird\\name'}))
    samples = parse_prometheus_text(text)
    by_key = {s.name + format_labels({k: v for k, v in s.labels.items()}): s.value for s in samples}
    label = 'model_name="we\\"ird\\\\name"'
    assert by_key[f'sglang:x_seconds_bucket{{le="0.1",{label}}}'] == 1
    assert by_key[f'sglang:x_seconds_bucket{{le="1.0",{label}}}'] == 4
    assert by_key[f'sglang:x_seconds_bucket{{le="+Inf",{label}}}'] == 5
    assert by_key[f"sglang:x_seconds_count{{{label}}}"] == 5
    assert math.isclose(by_key[f"sglang:x_seconds_sum{{{label}}}"], 0.05 + 1.5 + 7.0)
    assert samples[0].labels["model_name"] == 'we"ird\\name'


def test_metrics_by_name_drops_model_label_and_foreign_metrics() -> None:
    text = (
        "# HELP sglang:num_running_reqs r\n# TYPE sglang:num_running_reqs gauge\n"
        'sglang:num_running_reqs{model_name="m"} 3.0\n'
        'sglang:itl_bucket{model_name="m",le="0.1"} 2\n'
        "python_gc_objects_collected_total 12\n"
        "sglang:bare 1e3 1700000000000\n"
    )
    result = metrics_by_name(parse_prometheus_text(text))
    assert result == {
        "sglang:num_running_reqs": 3.0,
        'sglang:itl_bucket{le="0.1"}': 2.0,
        "sglang:bare": 1000.0,
    }


def test_windowed_samples_weighted_median_and_expiry() -> None:
    window = WindowedSamples(window_s=10.0)
    assert window.median(0.0) is None
    window.add(0.0, 100.0, weight=1)
    window.add(1.0, 5.0, weight=10)
    window.add(2.0, 7.0, weight=1)
    assert window.median(2.0) == 5.0
    assert window.total(2.0) == 100.0 + 50.0 + 7.0
    assert window.median(10.5) == 5.0  # the first sample left the window
    assert window.median(20.0) is None


def test_error_for_status_maps_to_typed_errors() -> None:
    assert isinstance(error_for_status(503, "m", "u"), EngineUnavailableError)
    assert isinstance(error_for_status(504, "m", "u"), EngineTimeoutError)
    assert isinstance(error_for_status(422, "m", "u"), EngineRequestError)
    generic = error_for_status(500, "boom", "http://x/generate")
    assert type(generic).__name__ == "EngineError"
    assert generic.status == 500 and "boom" in str(generic) and "http://x" in str(generic)


def test_stop_strings_and_token_ids_end_the_output_as_sglang_reports_it() -> None:
    tokenizer = ToyTokenizer(VOCAB)
    output = [tokenizer.output_token_id(7, position) for position in range(12)]
    text = tokenizer.decode(output)
    # A stop string across the boundary of tokens 4 and 5: found once token 5 is out.
    boundary = len(tokenizer.decode(output[:5]))
    stop = text[boundary - 2 : boundary + 2]
    criteria = StopCriteria(strings=(stop,))
    first_stop = next(n for n in range(1, 13) if check_stop(criteria, output[:n], tokenizer))
    # Only the tail is decoded, yet the first match is the one the whole text shows.
    assert first_stop == next(n for n in range(1, 13) if stop in tokenizer.decode(output[:n]))
    assert first_stop <= 6
    reason = check_stop(criteria, output[:first_stop], tokenizer)
    assert reason == {"type": "stop", "matched": stop}
    shown = visible_text(tokenizer, output[:first_stop], reason)
    assert shown == text[: text.find(stop)] and stop not in shown
    # Streamed: what was sent before is never taken back; the rest stops before the match.
    assert shown.startswith(tokenizer.decode(output[:1]))
    assert (
        visible_text(tokenizer, output[:first_stop], reason, start=1)
        == shown[len(tokenizer.decode(output[:1])) :]
    )

    by_id = StopCriteria(token_ids=frozenset({output[3]}))
    assert [check_stop(by_id, output[:n], tokenizer) for n in (3, 4)] == [
        None,
        {"type": "stop", "matched": output[3]},
    ]
    # The stop token counts as output but not as text.
    assert visible_text(tokenizer, output[:4], {"type": "stop", "matched": output[3]}) == (
        tokenizer.decode(output[:3])
    )
    assert check_stop(StopCriteria(), output, tokenizer) is None


def test_ignore_eos_drops_stop_token_ids_but_keeps_stop_strings() -> None:
    tokenizer = ToyTokenizer(VOCAB)
    request = parse_generate_request(
        {
            "text": "hello",
            "sampling_params": {"stop": "ka", "stop_token_ids": [1001], "ignore_eos": True},
        },
        tokenizer,
    )
    assert request.stop == StopCriteria(strings=("ka",))
    plain = parse_generate_request(
        {"text": "hello", "sampling_params": {"stop": ["ka", "lo"], "stop_token_ids": [1001]}},
        tokenizer,
    )
    assert plain.stop == StopCriteria(strings=("ka", "lo"), token_ids=frozenset({1001}))


class _ManualClock:
    """Simulated time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


async def test_a_decode_request_joining_a_catching_up_loop_never_sees_a_negative_gap() -> None:
    """A loop that wakes late catches up with back-to-back iterations in simulated time; a
    request whose KV cache arrived meanwhile joins the next one. That iteration must start no
    earlier than the request's first token (it once started at the previous iteration's end,
    seconds before, and reported inter-token gaps of minus that much)."""
    clock = _ManualClock()
    # A catch-up window of 1000 simulated seconds: every late wake-up is caught up.
    settings = SimEngineSettings(mode="decode", speedup=1000.0, catch_up_wall_s=1.0)
    engine = SimEngine(settings, clock=clock)
    core = engine.core

    def request(rid: str) -> GenerateRequest:
        return GenerateRequest(rid, (1000,) * 64, 10_000, True, BootstrapTarget("h", 1, 0))

    core.start()
    try:
        first = core.admit(request("a"))
        core.start_decode(first, 7)
        for _ in range(200):  # let a few decode iterations finish
            clock.now_s += 0.01
            await asyncio.sleep(0.001)
            if core.metrics.itl.count >= 3:
                break
        assert core.metrics.itl.count >= 3
        clock.now_s += 5.0  # the host stalls 5 simulated seconds: the loop is behind
        second = core.admit(request("b"))
        core.start_decode(second, 7)
        observed_before = core.metrics.itl.count
        for _ in range(500):
            clock.now_s += 0.01
            await asyncio.sleep(0.001)
            if len(second.output_ids) >= 3:
                break
        assert len(second.output_ids) >= 3
        assert core.metrics.itl.count > observed_before
        # Every gap since the second request joined is an ordinary decode step.
        assert core.metrics.itl.sum / core.metrics.itl.count > 0
        state = core.instance_state("d0")
        assert state.recent_itl_ms is not None and state.recent_itl_ms >= 0
        assert second.last_token_s is not None and second.first_token_s is not None
        assert second.last_token_s > second.first_token_s
    finally:
        await core.stop()
