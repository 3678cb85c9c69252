"""Workload layer: trace readers, format detection, synthetic generation, transforms."""

from __future__ import annotations

import gzip
import itertools
import json
import pickle
import statistics
from pathlib import Path

import numpy as np
import pytest

from voltana.errors import ConfigError, VoltanaError
from voltana.workloads import (
    SyntheticSpec,
    TokenLengths,
    TraceFormatError,
    TraceRequest,
    cap_count,
    cap_duration,
    cut_window,
    detect_format,
    format_synthetic_spec,
    generate_synthetic,
    is_synthetic_spec,
    load_default_trace,
    load_trace,
    load_workload,
    parse_synthetic_spec,
    scale_rate,
    summarize_workload,
)

pytestmark = pytest.mark.unit

TRACES_DIR = Path("/work/shared/data/traces")
CONV_TRACE = TRACES_DIR / "azure_llm_2023_conv.csv"
CODE_TRACE = TRACES_DIR / "azure_llm_2023_code.csv"
needs_shared_traces = pytest.mark.skipif(
    not CONV_TRACE.exists(), reason="shared Azure traces not on this machine"
)

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
AZURE_SAMPLE = (
    f"{AZURE_HEADER}\n"
    "2023-11-16 18:15:46.6805900,374,44\n"
    "2023-11-16 18:15:50.9951690,396,109\n"
    "2023-11-16 18:15:51.0000000,1200,0\n"
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def mooncake_text(rows: list[dict[str, object]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


# --- real traces ---------------------------------------------------------------------------


@needs_shared_traces
def test_conv_trace_parses_with_readme_statistics() -> None:
    requests = load_trace(CONV_TRACE)
    summary = summarize_workload(requests)
    assert summary.count == 19366  # data rows (the file has 19,367 lines with the header)
    assert requests[0].arrival_s == 0.0
    assert [r.request_id for r in requests] == list(range(len(requests)))
    assert 57 * 60 < summary.span_s < 59 * 60
    assert summary.mean_rate_rps == pytest.approx(5.5, abs=0.1)
    assert summary.input_tokens_mean == pytest.approx(1155, abs=2)
    assert summary.input_tokens_median == 1020
    assert summary.input_tokens_p90 == pytest.approx(2734, abs=2)
    assert summary.output_tokens_mean == pytest.approx(211, abs=1)
    assert summary.output_tokens_median == 129
    assert summary.output_tokens_p90 == pytest.approx(424, abs=2)


@needs_shared_traces
def test_code_trace_parses_with_readme_statistics() -> None:
    requests = load_trace(CODE_TRACE)
    summary = summarize_workload(requests)
    assert summary.count == 8819
    assert 56 * 60 < summary.span_s < 58 * 60
    assert summary.mean_rate_rps == pytest.approx(2.6, abs=0.1)
    assert summary.input_tokens_mean == pytest.approx(2048, abs=2)
    assert summary.input_tokens_median == 1469
    assert summary.output_tokens_mean == pytest.approx(28, abs=1)
    assert summary.output_tokens_median == 13


@needs_shared_traces
def test_embedded_default_is_the_first_ten_minutes_of_the_conv_trace() -> None:
    full = load_trace(CONV_TRACE)
    default = load_default_trace()
    assert default == [r for r in full if r.arrival_s < 600.0]


def test_embedded_default_loads() -> None:
    requests = load_workload(None)
    assert len(requests) == 2867
    assert requests[0].arrival_s == 0.0
    assert requests[-1].arrival_s < 600.0
    assert all(a.arrival_s <= b.arrival_s for a, b in itertools.pairwise(requests))
    assert requests == load_default_trace()


# --- Azure CSV -------------------------------------------------------------------------------


def test_azure_lf_and_crlf_read_the_same(tmp_path: Path) -> None:
    lf = load_trace(write(tmp_path, "lf.csv", AZURE_SAMPLE))
    crlf = load_trace(write(tmp_path, "crlf.csv", AZURE_SAMPLE.replace("\n", "\r\n")))
    assert lf == crlf
    assert lf == [
        TraceRequest(0, 0.0, 374, 44),
        TraceRequest(1, pytest.approx(4.314579), 396, 109),  # type: ignore[arg-type]
        TraceRequest(2, pytest.approx(4.3194100), 1200, 1),  # type: ignore[arg-type]
    ]


def test_azure_keeps_the_seventh_fractional_digit(tmp_path: Path) -> None:
    text = f"{AZURE_HEADER}\n2023-11-16 18:15:46.0000000,1,1\n2023-11-16 18:15:46.0000001,1,1\n"
    requests = load_trace(write(tmp_path, "t.csv", text))
    assert requests[1].arrival_s == pytest.approx(1e-7, abs=1e-12)


def test_azure_accepts_other_column_order_blank_lines_bom_and_no_fraction(tmp_path: Path) -> None:
    text = (
        "\ufeffGeneratedTokens,TIMESTAMP,ContextTokens,Extra\n\n"
        "5,2023-11-16 23:59:59,10,x\n"
        "6,2023-11-17 00:00:01.5,20,y\n\n"
    )
    requests = load_trace(write(tmp_path, "t.csv", text))
    assert requests == [TraceRequest(0, 0.0, 10, 5), TraceRequest(1, 2.5, 20, 6)]


def test_zero_tokens_count_as_one(tmp_path: Path) -> None:
    text = f"{AZURE_HEADER}\n2023-11-16 18:15:46.0,0,0\n"
    assert load_trace(write(tmp_path, "t.csv", text)) == [TraceRequest(0, 0.0, 1, 1)]


def test_small_backward_jitter_is_reordered_stably(tmp_path: Path) -> None:
    text = (
        f"{AZURE_HEADER}\n"
        "2023-11-16 18:15:46.5,1,1\n"
        "2023-11-16 18:15:46.0,2,2\n"  # 0.5 s back: within the 1 s tolerance
        "2023-11-16 18:15:46.5,3,3\n"
    )
    requests = load_trace(write(tmp_path, "t.csv", text))
    assert [r.input_tokens for r in requests] == [2, 1, 3]
    assert [r.arrival_s for r in requests] == [0.0, 0.5, 0.5]
    assert [r.request_id for r in requests] == [0, 1, 2]


# --- Mooncake JSONL and detection ----------------------------------------------------------------


def test_mooncake_jsonl_parses_and_ignores_extra_keys(tmp_path: Path) -> None:
    text = mooncake_text(
        [
            {"timestamp": 1000, "input_length": 6955, "output_length": 52, "hash_ids": [1, 2]},
            {"timestamp": 1500.5, "input_length": 10, "output_length": 0},
        ]
    )
    requests = load_trace(write(tmp_path, "mooncake.jsonl", text + "\n"))
    assert requests == [TraceRequest(0, 0.0, 6955, 52), TraceRequest(1, 0.5005, 10, 1)]


def test_format_is_detected_from_content_not_extension(tmp_path: Path) -> None:
    jsonl_named_csv = write(
        tmp_path,
        "trace.csv",
        mooncake_text([{"timestamp": 0, "input_length": 3, "output_length": 4}]),
    )
    csv_named_jsonl = write(tmp_path, "trace.jsonl", AZURE_SAMPLE)
    assert load_trace(jsonl_named_csv) == [TraceRequest(0, 0.0, 3, 4)]
    assert len(load_trace(csv_named_jsonl)) == 3
    assert detect_format("\n\n" + AZURE_SAMPLE, "x") == "azure"
    assert detect_format('{"timestamp": 0}', "x") == "mooncake"


def test_gzipped_trace_is_read(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv.gz"
    path.write_bytes(gzip.compress(AZURE_SAMPLE.encode()))
    assert load_trace(path) == load_trace(write(tmp_path, "plain.csv", AZURE_SAMPLE))


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", AZURE_SAMPLE)
    with pytest.raises(TraceFormatError, match=r"t\.csv:1: invalid JSON"):
        load_trace(path, trace_format="mooncake")


# --- malformed input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"{AZURE_HEADER}\n2023-11-16 18:15:46.0,abc,1\n",
            ":2: ContextTokens 'abc' is not an integer",
        ),
        (
            f"{AZURE_HEADER}\n2023-11-16 18:15:46.0,1,2.5\n",
            ":2: GeneratedTokens '2.5' is not an integer",
        ),
        (f"{AZURE_HEADER}\n2023-11-16 18:15:46.0,-3,1\n", ":2: ContextTokens -3 is negative"),
        (f"{AZURE_HEADER}\n\n2023-11-16 18:15:46.0,1\n", ":3: expected 3 fields, got 2"),
        (f"{AZURE_HEADER}\nyesterday,1,1\n", ":2: TIMESTAMP 'yesterday' is not a datetime"),
        (f"{AZURE_HEADER}\n2023-11-16 18:15:46.12x,1,1\n", ":2: TIMESTAMP"),
        (f"{AZURE_HEADER}\n2023-13-16 18:15:46.1,1,1\n", ":2: TIMESTAMP"),
        ("TIMESTAMP,ContextTokens\n", ":1: header lacks column 'GeneratedTokens'"),
        (
            f"{AZURE_HEADER}\n2023-11-16 18:15:50.0,1,1\n2023-11-16 18:15:48.0,1,1\n",
            ":3: timestamp is 2.000 s earlier than line 2",
        ),
        (f"{AZURE_HEADER}\n", ": holds no requests"),
        ("", ": file is empty"),
        (" \n\n", ": file is empty"),
        ("time,prompt,output\n1,2,3\n", ":1: unknown trace format"),
        (
            '{"timestamp": 0, "input_length": 1, "output_length": 1}\n{"timestamp": 1,\n',
            ":2: invalid JSON",
        ),
        ('{"timestamp": 0, "input_length": 1}\n', ":1: missing key 'output_length'"),
        ('{"timestamp": "0", "input_length": 1, "output_length": 1}\n', ":1: timestamp '0' is not"),
        ('{"timestamp": NaN, "input_length": 1, "output_length": 1}\n', ":1: timestamp nan is not"),
        ('{"timestamp": 0, "input_length": 1.5, "output_length": 1}\n', ":1: input_length 1.5 is"),
        ('{"timestamp": 0, "input_length": true, "output_length": 1}\n', ":1: input_length True"),
        ('{"timestamp": 0, "input_length": 1, "output_length": -1}\n', ":1: output_length -1 is"),
        (
            '\n{"timestamp": 0, "input_length": 1, "output_length": 1}\n[1, 2]\n',
            ":3: expected a JSON",
        ),
    ],
)
def test_malformed_trace_names_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "bad.trace", text)
    with pytest.raises(TraceFormatError) as caught:
        load_trace(path)
    message = str(caught.value)
    assert message.startswith(f"{path}{expected}"), message
    assert "\n" not in message
    assert isinstance(caught.value, VoltanaError)


def test_error_carries_its_parts_and_pickles(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", f"{AZURE_HEADER}\n2023-11-16 18:15:46.0,x,1\n")
    with pytest.raises(TraceFormatError) as caught:
        load_trace(path)
    error = caught.value
    assert (error.source, error.line) == (str(path), 2)
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_missing_file_directory_and_binary_are_trace_format_errors(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match=r"nope\.csv: no such file \(traces shipped"):
        load_trace(tmp_path / "nope.csv")
    with pytest.raises(TraceFormatError, match="is a directory"):
        load_trace(tmp_path)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(AZURE_HEADER.encode() + b"\n\xff\xfe,1,1\n")
    with pytest.raises(TraceFormatError, match=r"binary\.csv:2: not UTF-8 text"):
        load_trace(binary)
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(TraceFormatError, match="corrupt gzip data"):
        load_trace(corrupt)


def test_backwards_tolerance_is_adjustable(tmp_path: Path) -> None:
    text = f"{AZURE_HEADER}\n2023-11-16 18:15:50.0,1,1\n2023-11-16 18:15:48.0,2,2\n"
    path = write(tmp_path, "t.csv", text)
    requests = load_trace(path, backwards_tolerance_s=5.0)
    assert [r.input_tokens for r in requests] == [2, 1]
    with pytest.raises(TraceFormatError, match=":3: timestamp"):
        load_trace(path, backwards_tolerance_s=0.0)


# --- synthetic ---------------------------------------------------------------------------------


def gaps_s(requests: list[TraceRequest]) -> np.ndarray:
    return np.diff([r.arrival_s for r in requests])


def test_synthetic_is_deterministic_under_a_seed() -> None:
    spec = SyntheticSpec("bursty", rate_rps=20.0, duration_s=30.0, cv=3.0, seed=7)
    first = generate_synthetic(spec)
    assert first == generate_synthetic(spec)
    assert first != generate_synthetic(SyntheticSpec("bursty", 20.0, 30.0, cv=3.0, seed=8))
    assert first[0].arrival_s == 0.0
    assert [r.request_id for r in first] == list(range(len(first)))


def test_poisson_rate_and_variability() -> None:
    requests = generate_synthetic(SyntheticSpec("poisson", rate_rps=50.0, duration_s=200.0, seed=1))
    assert abs(len(requests) - 10_000) < 400  # 4 sigma of a Poisson count
    assert requests[-1].arrival_s < 200.0
    gaps = gaps_s(requests)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)


def test_bursty_keeps_the_rate_and_raises_variability() -> None:
    spec = SyntheticSpec("bursty", rate_rps=10.0, count=20_000, cv=3.0, seed=2)
    gaps = gaps_s(generate_synthetic(spec))
    assert 1.0 / gaps.mean() == pytest.approx(10.0, rel=0.1)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.1)


def test_constant_arrivals_are_exact() -> None:
    requests = generate_synthetic(SyntheticSpec("constant", rate_rps=10.0, duration_s=1.0))
    assert [r.arrival_s for r in requests] == pytest.approx([i / 10 for i in range(10)])
    assert len(generate_synthetic(SyntheticSpec("constant", rate_rps=4.0, count=7))) == 7


def test_count_and_duration_first_bound_wins() -> None:
    assert len(generate_synthetic(SyntheticSpec("poisson", 100.0, duration_s=60.0, count=5))) == 5
    by_duration = generate_synthetic(SyntheticSpec("poisson", 1.0, duration_s=10.0, count=1000))
    assert 0 < len(by_duration) < 40


def test_token_lengths_fixed_lognormal_and_clipped() -> None:
    rng = np.random.default_rng(0)
    assert set(TokenLengths(200).sample(rng, 50)) == {200}
    lognormal = TokenLengths(mean=1155, median=1020).sample(rng, 50_000)
    assert lognormal.mean() == pytest.approx(1155, rel=0.03)
    assert float(np.median(lognormal)) == pytest.approx(1020, rel=0.03)
    clipped = TokenLengths(mean=1000, median=100, max_tokens=500).sample(rng, 1000)
    assert clipped.max() == 500
    assert clipped.min() >= 1


def test_lengths_do_not_depend_on_the_rate() -> None:
    slow = generate_synthetic(SyntheticSpec("poisson", 1.0, count=50, seed=3))
    fast = generate_synthetic(SyntheticSpec("poisson", 100.0, count=50, seed=3))
    assert [(r.input_tokens, r.output_tokens) for r in slow] == [
        (r.input_tokens, r.output_tokens) for r in fast
    ]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"rate_rps": 0.0, "duration_s": 1.0}, "rate must be > 0"),
        ({"rate_rps": 1.0}, "give a duration, a count, or both"),
        ({"rate_rps": 1.0, "count": 0}, "count must be >= 1"),
        ({"rate_rps": 1.0, "count": 5, "cv": 2.0}, "cv applies to bursty arrivals only"),
        ({"rate_rps": 1e9, "duration_s": 1e9}, "at most"),
    ],
)
def test_synthetic_spec_validation(kwargs: dict[str, float], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        SyntheticSpec("poisson", **kwargs)  # type: ignore[arg-type]


def test_parse_synthetic_spec() -> None:
    spec = parse_synthetic_spec("poisson:rate=10,duration=60,input=1000,output=200,seed=1")
    assert spec == SyntheticSpec(
        "poisson",
        rate_rps=10.0,
        duration_s=60.0,
        input_tokens=TokenLengths(1000),
        output_tokens=TokenLengths(200),
        seed=1,
    )
    bursty = parse_synthetic_spec(
        "synthetic:bursty: rate=5, count=100, cv=4, input=800, input_median=500, input_max=4096"
    )
    assert bursty.cv == 4.0
    assert bursty.count == 100
    assert bursty.input_tokens == TokenLengths(800, 500, 4096)
    assert bursty.output_tokens.median is not None  # default: Azure-conv-like lognormal
    assert is_synthetic_spec("synthetic:poisson:rate=1,count=1")
    assert not is_synthetic_spec("traces/synthetic.csv")


def test_synthetic_spec_round_trips_through_its_string() -> None:
    spec = parse_synthetic_spec("synthetic:bursty:rate=2.5,count=9,cv=1.5,output_max=64,seed=4")
    assert parse_synthetic_spec(format_synthetic_spec(spec)) == spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("uniform:rate=1,count=1", "unknown arrival process 'uniform'; valid: poisson, bursty"),
        ("poisson:count=1", "missing rate="),
        ("poisson:rate=1,rte=2,count=1", "unknown key 'rte'; valid: count, cv, depth, duration"),
        ("poisson:rate=fast,count=1", "rate 'fast' is not a number"),
        ("poisson:rate=inf,count=1", "rate 'inf' is not a finite number"),
        ("poisson:rate=1,count=1.5", "count '1.5' is not an integer"),
        ("poisson:rate=1,count", "expected KEY=VALUE, got 'count'"),
        ("poisson:rate=1,rate=2,count=1", "key 'rate' given twice"),
        ("poisson:rate=1", "give a duration, a count, or both"),
        ("poisson:rate=1,count=1,cv=2", "cv applies to bursty arrivals only"),
        ("poisson:rate=1,count=1,input_median=5", "input_median needs input=MEAN"),
        ("poisson:rate=1,count=1,input=100,input_median=200", "median must be in"),
    ],
)
def test_bad_synthetic_spec_is_a_clear_config_error(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_synthetic_spec(text)
    message = str(caught.value)
    assert message.startswith(f"synthetic workload {text!r}: ")
    assert expected in message


# --- transforms and summary -------------------------------------------------------------------


def make_requests(*arrivals_s: float) -> list[TraceRequest]:
    return [TraceRequest(index, t, 10 + index, 1 + index) for index, t in enumerate(arrivals_s)]


def test_scale_rate_compresses_time() -> None:
    original = make_requests(0.0, 1.0, 3.0)
    scaled = scale_rate(original, 2.0)
    assert [r.arrival_s for r in scaled] == [0.0, 0.5, 1.5]
    assert [r.input_tokens for r in scaled] == [10, 11, 12]
    assert original == make_requests(0.0, 1.0, 3.0)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="rate_scale must be > 0"):
            scale_rate(original, bad)


def test_cut_window_is_half_open_rebased_and_renumbered() -> None:
    cut = cut_window(make_requests(0.0, 1.0, 2.5, 4.0, 5.0), 1.0, 5.0)
    assert cut == [
        TraceRequest(0, 0.0, 11, 2),
        TraceRequest(1, 1.5, 12, 3),
        TraceRequest(2, 3.0, 13, 4),
    ]
    assert cut_window(make_requests(0.0, 1.0), 2.0) == []
    with pytest.raises(ConfigError, match="must be after its start"):
        cut_window(make_requests(0.0), 3.0, 3.0)
    with pytest.raises(ConfigError, match="window start must be >= 0"):
        cut_window(make_requests(0.0), -1.0)


def test_cap_duration_and_cap_count() -> None:
    requests = make_requests(0.0, 1.0, 2.0, 3.0)
    assert [r.arrival_s for r in cap_duration(requests, 2.0)] == [0.0, 1.0]
    assert cap_count(requests, 3) == requests[:3]
    assert cap_count(requests, 10) == requests
    with pytest.raises(ConfigError, match="duration_s must be > 0"):
        cap_duration(requests, 0.0)
    with pytest.raises(ConfigError, match="max_requests must be an integer >= 1"):
        cap_count(requests, 0)


def test_transforms_sort_and_renumber_unsorted_input() -> None:
    shuffled = [TraceRequest(5, 2.0, 1, 1), TraceRequest(9, 0.0, 2, 2), TraceRequest(7, 1.0, 3, 3)]
    assert cap_count(shuffled, 3) == [
        TraceRequest(0, 0.0, 2, 2),
        TraceRequest(1, 1.0, 3, 3),
        TraceRequest(2, 2.0, 1, 1),
    ]


def test_summary_numbers() -> None:
    requests = [TraceRequest(i, float(i), 100 * (i + 1), i + 1) for i in range(10)]
    summary = summarize_workload(requests)
    assert summary.count == 10
    assert summary.span_s == 9.0
    assert summary.mean_rate_rps == pytest.approx(10 / 9)
    assert summary.input_tokens_mean == 550
    assert summary.input_tokens_median == statistics.median(r.input_tokens for r in requests)
    assert summary.output_tokens_p90 == pytest.approx(9.1)
    assert "10 requests over 9.0 s" in summary.describe()
    assert summarize_workload([]).count == 0


# --- load_workload --------------------------------------------------------------------------------


def test_load_workload_applies_window_then_scale_then_duration_then_count(tmp_path: Path) -> None:
    rows = "".join(f"2023-11-16 18:00:{second:02d}.0,{second + 1},1\n" for second in range(40))
    path = write(tmp_path, "t.csv", f"{AZURE_HEADER}\n{rows}")
    # Trace seconds [10, 30) -> rebased 0..19 s -> x2 -> 0..9.5 s -> [0, 5) -> first 8.
    requests = load_workload(
        path, start_s=10.0, end_s=30.0, rate_scale=2.0, duration_s=5.0, max_requests=8
    )
    assert [r.arrival_s for r in requests] == [i / 2 for i in range(8)]
    assert [r.input_tokens for r in requests] == list(range(11, 19))
    assert [r.request_id for r in requests] == list(range(8))
    assert len(load_workload(path, end_s=10.0)) == 10
    assert len(load_workload(str(path), rate_scale=4.0, duration_s=5.0)) == 20


def test_load_workload_synthetic_string() -> None:
    requests = load_workload(
        "synthetic:constant:rate=2,duration=10,input=50,output=5", rate_scale=2
    )
    assert len(requests) == 20
    assert requests[-1].arrival_s == pytest.approx(4.75)
    assert {(r.input_tokens, r.output_tokens) for r in requests} == {(50, 5)}


def test_load_workload_rejects_bad_arguments_before_reading(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    with pytest.raises(ConfigError, match="rate_scale"):
        load_workload(missing, rate_scale=0)
    with pytest.raises(ConfigError, match="max_requests"):
        load_workload(missing, max_requests=-1)
    with pytest.raises(TraceFormatError, match="no such file"):
        load_workload(missing)


def test_load_workload_refuses_an_empty_result() -> None:
    with pytest.raises(ConfigError, match="holds no requests"):
        load_workload(None, start_s=10_000.0)
