"""What a real SGLang server (0.5.23, unified mode, on CPU) answered, recorded by the real-engine
tier (tests/real_engine/record_fixtures.py), read with Voltana's reporter, client and router
code, and compared with the simulated engine: the default test run guards the mapping without
the real engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from voltana.contract.state import Phase
from voltana.engine.prometheus import parse_prometheus_text
from voltana.engine.protocol import meta_info
from voltana.engine.settings import SimEngineSettings
from voltana.engine.sglang_client import _error_message, metrics_by_name
from voltana.engine.sim_engine import SimEngine
from voltana.services.router.dispatch import ChunkReader
from voltana.stack.sglang_reporter import (
    SglangInstanceReporter,
    SglangInstanceSettings,
    missing_families,
)

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures" / "sglang-0.5.23"
# meta_info keys Voltana's router reads (voltana/services/router/dispatch.py).
META_KEYS_READ = ("id", "finish_reason", "prompt_tokens", "completion_tokens")


def _metrics(name: str) -> dict[str, float]:
    return metrics_by_name(parse_prometheus_text((FIXTURES / name).read_text()))


def _json(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def _families(text: str) -> dict[str, str]:
    """Family name -> type, from the # TYPE lines."""
    found = {}
    for line in text.splitlines():
        if line.startswith("# TYPE sglang:"):
            _, _, name, kind = line.split()
            found[name] = kind
    return found


def _label_names(text: str) -> dict[str, set[str]]:
    """Family name -> its label names (bucket 'le' and _sum/_count folded into the family)."""
    names: dict[str, set[str]] = {}
    for sample in parse_prometheus_text(text):
        if not sample.name.startswith("sglang:"):
            continue
        family = sample.name
        for suffix in ("_bucket", "_sum", "_count"):
            family = family.removesuffix(suffix)
        names.setdefault(family, set()).update(set(sample.labels) - {"le"})
    return names


def _reporter() -> SglangInstanceReporter:
    clock = [100.0]
    reporter = SglangInstanceReporter(
        SglangInstanceSettings(
            telemetry_address="127.0.0.1:1",
            instance_id="real-0",
            phase=Phase.DECODE,
            engine_url="http://127.0.0.1:1",
        ),
        clock=lambda: clock[0],
    )
    reporter._clock_value = clock  # type: ignore[attr-defined]
    return reporter


def test_every_family_the_reporter_reads_is_in_the_real_scrape() -> None:
    assert missing_families(_metrics("metrics_after.txt")) == []
    # A fresh server has only its scheduler's gauges: the request families come later.
    assert set(missing_families(_metrics("metrics_fresh.txt"))) == {
        "sglang:num_requests_total",
        "sglang:prompt_tokens_total",
        "sglang:generation_tokens_total",
        "sglang:time_to_first_token_seconds_count",
        "sglang:inter_token_latency_seconds_count",
    }


def test_real_labels_fold_into_one_value_per_family() -> None:
    text = (FIXTURES / "metrics_after.txt").read_text()
    samples = parse_prometheus_text(text)
    # Real SGLang splits request counters by is_streaming; the key sums both series.
    series = [s.value for s in samples if s.name == "sglang:num_requests_total"]
    assert len(series) == 2
    metrics = _metrics("metrics_after.txt")
    assert metrics["sglang:num_requests_total"] == sum(series)
    assert 'sglang:time_to_first_token_seconds_bucket{le="+Inf"}' in metrics
    assert metrics["sglang:max_total_num_tokens"] == 4096


def test_the_reporter_reads_load_and_latency_from_real_scrapes() -> None:
    reporter = _reporter()
    fresh = reporter.state_from_metrics(_metrics("metrics_fresh.txt"))
    assert (fresh.queue_len, fresh.running_batch, fresh.kv_tokens_used) == (0, 0, 0)
    # No server info read: the KV pool's size comes from the gauge.
    assert fresh.kv_tokens_capacity == 4096
    busy = reporter.state_from_metrics(_metrics("metrics_busy.txt"))
    assert busy.running_batch == 1
    assert busy.kv_tokens_used > 0
    reporter._clock_value[0] = 101.0  # type: ignore[attr-defined]
    after = reporter.state_from_metrics(_metrics("metrics_after.txt"))
    assert after.running_batch == 0
    # The long request's tokens between the two scrapes give a recent ITL (in milliseconds;
    # the tiny model on CPU takes a few per token).
    assert after.recent_itl_ms is not None and 0.5 < after.recent_itl_ms < 50
    assert after.last_activity_s == 101.0


def test_server_info_has_what_the_reporter_reads_and_so_does_the_simulated_engine() -> None:
    real = _json("server_info.json")
    sim = SimEngine(SimEngineSettings(mode="null")).server_info()
    for key in ("max_total_num_tokens", "max_running_requests", "disaggregation_mode"):
        assert key in real and key in sim, key
    assert real["disaggregation_mode"] == sim["disaggregation_mode"] == "null"
    assert type(real["max_total_num_tokens"]) is type(sim["max_total_num_tokens"]) is int


def test_model_info_and_models_list_match_the_simulated_engine_shape() -> None:
    real = _json("model_info.json")
    for key in ("model_path", "tokenizer_path", "is_generation", "model_type", "architectures"):
        assert key in real
    models = _json("v1_models.json")
    assert models["object"] == "list"
    assert {"id", "object", "owned_by", "max_model_len"} <= set(models["data"][0])


def test_the_simulated_engine_exposes_real_families_with_real_labels() -> None:
    real_text = (FIXTURES / "metrics_after.txt").read_text()
    real_types = _families(real_text)
    real_labels = _label_names(real_text)
    engine = SimEngine(SimEngineSettings(mode="null"))
    sim_text = engine.metrics_text()
    sim_types = _families(sim_text)
    sim_labels = _label_names(sim_text)
    for family, kind in sim_types.items():
        assert family in real_types, f"{family}: real SGLang 0.5.23 has no such family"
        assert real_types[family] == kind, family
        # The simulated engine keeps one series where SGLang splits by is_streaming.
        assert sim_labels[family] == real_labels[family] - {"is_streaming"}, family
    # And both read alike.
    assert missing_families(metrics_by_name(parse_prometheus_text(sim_text))) == []


def test_real_generate_answers_have_the_meta_info_the_router_reads() -> None:
    plain = _json("generate.json")
    assert plain["status"] == 200
    body = plain["body"]
    assert set(body) == {"text", "output_ids", "meta_info"}
    meta = body["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 12}
    assert meta["completion_tokens"] == len(body["output_ids"]) == 12
    sim_meta = meta_info("rid", 4, 12, {"type": "length", "length": 12}, 0.1, None, 0.05)
    for key in META_KEYS_READ:
        assert key in meta and key in sim_meta
    # Every key the simulated engine sends, real SGLang sends too (plus timestamps).
    assert set(sim_meta) <= set(meta)

    stop = _json("generate_stop_token.json")["body"]
    matched = stop["meta_info"]["finish_reason"]
    assert matched["type"] == "stop" and isinstance(matched["matched"], int)
    # The stop token stays in output_ids and counts; its text is cut.
    assert stop["output_ids"][-1] == matched["matched"]
    assert stop["meta_info"]["completion_tokens"] == len(stop["output_ids"])

    zero = _json("generate_max_tokens_0.json")["body"]
    assert zero["output_ids"] == [] and zero["meta_info"]["finish_reason"]["length"] == 0


def test_real_stream_framing_and_cumulative_chunks_read_by_the_router() -> None:
    raw = (FIXTURES / "generate_stream.sse").read_bytes()
    events = [event for event in raw.split(b"\n\n") if event]
    assert all(event.startswith(b"data: ") for event in events)
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(event[6:]) for event in events[:-1]]
    # Cumulative (incremental_streaming_output is off by default): each chunk has every id.
    assert [len(chunk["output_ids"]) for chunk in chunks] == [1, 2, 3, 4]
    reader = ChunkReader(clock=lambda: 0.0)
    deltas = [reader.read(chunk) for chunk in chunks]
    assert sum(delta.count for delta in deltas if delta is not None) == 4
    assert reader.totals.completion_tokens == 4
    assert reader.totals.finish_reason == "length"
    assert "".join(d.text for d in deltas if d is not None) == chunks[-1]["text"]


def test_error_bodies_of_real_sglang_give_their_message() -> None:
    error = _json("generate_error.json")
    assert error["status"] == 400
    assert "expected i64" in _error_message(json.dumps(error["body"]))
    validation = {"object": "error", "message": "bad field", "type": "Bad Request", "code": 400}
    assert _error_message(json.dumps(validation)) == "bad field"
