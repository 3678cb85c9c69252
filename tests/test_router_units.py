"""Router parts without sockets: request checks, the live cluster view, stream decoding."""

from __future__ import annotations

import math
from typing import Any

import pytest

from voltana import json_codec
from voltana.contract.instances import InstanceInfo
from voltana.contract.state import (
    ClusterSnapshot,
    InstanceState,
    Phase,
    Placement,
    RequestSpec,
    SloTarget,
)
from voltana.services.router.cluster import LiveCluster
from voltana.services.router.convert import placement_to_proto
from voltana.services.router.dispatch import (
    DEFAULT_BOOTSTRAP_PORT,
    ChunkReader,
    PdTarget,
    sglang_payload,
)
from voltana.services.router.errors import InvalidGenerateRequestError, NoInstanceAvailableError
from voltana.services.router.settings import RouterSettings
from voltana.services.router.validation import validate_request
from voltana.v1 import common_pb2, router_pb2

pytestmark = pytest.mark.unit


# ---- validation ------------------------------------------------------------------------------

SETTINGS = RouterSettings(max_prompt_tokens=10, max_new_tokens_limit=100, default_max_new_tokens=7)


def test_defaults_fill_what_the_request_leaves_out() -> None:
    accepted = validate_request(router_pb2.GenerateRequest(text="twelve chars"), SETTINGS)

    assert accepted.text == "twelve chars" and accepted.input_ids is None
    assert accepted.prompt_tokens == 4  # as the simulated engines tokenize: twel+ve, char+s
    assert accepted.max_new_tokens == 7
    assert accepted.temperature is None and accepted.top_p is None
    assert accepted.slo == SETTINGS.slo
    assert len(accepted.request_id) == 32


def test_request_values_are_kept() -> None:
    request = router_pb2.GenerateRequest(
        input_ids=router_pb2.TokenIds(ids=[1, 2, 3]),
        max_new_tokens=100,
        temperature=0.0,
        top_p=0.5,
        ignore_eos=True,
        stop=["\n\n"],
        slo=common_pb2.SloTarget(itl_ms=20.0),
        request_id="mine",
    )
    accepted = validate_request(request, SETTINGS)

    assert accepted.input_ids == (1, 2, 3) and accepted.prompt_tokens == 3
    assert (accepted.max_new_tokens, accepted.temperature, accepted.top_p) == (100, 0.0, 0.5)
    assert accepted.ignore_eos and accepted.stop == ("\n\n",)
    # An SLO target left at 0 falls back to the cluster's.
    assert accepted.slo == SloTarget(ttft_ms=SETTINGS.slo.ttft_ms, itl_ms=20.0)
    assert accepted.request_id == "mine"
    spec = accepted.spec(arrival_s=12.5)
    assert spec == RequestSpec(3, 100, accepted.slo, 12.5)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "needs a prompt"),
        ({"text": ""}, "prompt is empty"),
        ({"input_ids": router_pb2.TokenIds(ids=[])}, "prompt is empty"),
        ({"text": "x" * 41}, "about 11 tokens"),
        ({"input_ids": router_pb2.TokenIds(ids=list(range(11)))}, "11 tokens, the limit is 10"),
        ({"text": "hi", "max_new_tokens": -3}, "max_new_tokens must be > 0"),
        ({"text": "hi", "max_new_tokens": 101}, "over the limit of 100"),
        ({"text": "hi", "top_p": 0.0}, "top_p must be in"),
        ({"text": "hi", "temperature": float("nan")}, "temperature"),
        ({"text": "hi", "stop": [""]}, "stop strings must not be empty"),
        ({"text": "hi", "request_id": "x" * 300}, "request_id"),
        ({"text": "hi", "slo": common_pb2.SloTarget(itl_ms=-1)}, "slo.itl_ms"),
        ({"text": "hi", "presence_penalty": 2.5}, r"presence_penalty must be in \[-2, 2\]"),
        ({"text": "hi", "frequency_penalty": float("inf")}, "frequency_penalty"),
        ({"text": "hi", "stop_token_ids": [-1]}, "negative id"),
        ({"text": "hi", "stop_token_ids": list(range(65))}, "at most 64 stop token ids"),
    ],
)
def test_invalid_requests(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidGenerateRequestError, match=message):
        validate_request(router_pb2.GenerateRequest(**fields), SETTINGS)


def test_token_ids_outside_the_served_vocabulary_are_refused() -> None:
    """Real SGLang 0.5.23 dies on an input id outside its embedding table (the real-engine
    tier saw it): with --vocab-size the router refuses such ids; 0 leaves them unchecked."""
    checked = RouterSettings(vocab_size=512, max_prompt_tokens=10)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input_ids": router_pb2.TokenIds(ids=[5, 512])}, "input_ids holds token id 512"),
        ({"text": "hi", "stop_token_ids": [3, 600]}, "stop_token_ids holds token id 600"),
    ]
    for fields, message in cases:
        with pytest.raises(InvalidGenerateRequestError, match=message):
            validate_request(router_pb2.GenerateRequest(**fields), checked)
    inside = router_pb2.GenerateRequest(
        input_ids=router_pb2.TokenIds(ids=[0, 511]), stop_token_ids=[511]
    )
    assert validate_request(inside, checked).input_ids == (0, 511)
    unchecked = router_pb2.GenerateRequest(input_ids=router_pb2.TokenIds(ids=[100_000]))
    assert validate_request(unchecked, SETTINGS).input_ids == (100_000,)


def test_sglang_payload_carries_only_what_was_set() -> None:
    plain = validate_request(router_pb2.GenerateRequest(text="hi", request_id="r1"), SETTINGS)
    assert sglang_payload(plain) == {
        "text": "hi",
        "rid": "r1",
        "sampling_params": {"max_new_tokens": 7, "ignore_eos": False},
    }
    full = validate_request(
        router_pb2.GenerateRequest(
            input_ids=router_pb2.TokenIds(ids=[4, 5]), temperature=0.7, top_p=0.9, stop=["."]
        ),
        SETTINGS,
    )
    payload = sglang_payload(full)
    assert payload["input_ids"] == [4, 5] and "text" not in payload
    assert payload["sampling_params"]["temperature"] == pytest.approx(0.7)
    assert payload["sampling_params"]["stop"] == ["."]
    honoured = validate_request(
        router_pb2.GenerateRequest(
            text="hi", seed=-5, presence_penalty=0.5, frequency_penalty=-1.0, stop_token_ids=[9]
        ),
        SETTINGS,
    )
    sampling = sglang_payload(honoured)["sampling_params"]
    # SGLang's names of the OpenAI parameters.
    assert sampling["sampling_seed"] == -5 and sampling["stop_token_ids"] == [9]
    assert (sampling["presence_penalty"], sampling["frequency_penalty"]) == (0.5, -1.0)


# ---- stream decoding -------------------------------------------------------------------------


def chunk(text: str, ids: list[int] | None, total: int, finish: Any = None) -> dict[str, Any]:
    meta = {"completion_tokens": total, "prompt_tokens": 4, "finish_reason": finish}
    body: dict[str, Any] = {"text": text, "meta_info": meta}
    if ids is not None:
        body["output_ids"] = ids
    return body


def read_all(chunks: list[dict[str, Any]]) -> tuple[ChunkReader, list[Any]]:
    reader = ChunkReader(clock=lambda: 1.0)
    deltas = [reader.read(c) for c in chunks]
    return reader, [d for d in deltas if d is not None]


def test_cumulative_chunks_become_deltas() -> None:
    reader, deltas = read_all(
        [
            chunk(" a", [1], 1),
            chunk(" a b c", [1, 2, 3], 3),
            chunk(" a b c d", [1, 2, 3, 4], 4, {"type": "length", "length": 4}),
        ]
    )
    assert [(d.text, d.token_ids, d.index) for d in deltas] == [
        (" a", (1,), 0),
        (" b c", (2, 3), 1),
        (" d", (4,), 3),
    ]
    assert reader.totals.completion_tokens == 4 and reader.totals.prompt_tokens == 4
    assert reader.totals.finish_reason == "length"


def test_incremental_chunks_pass_through() -> None:
    reader, deltas = read_all(
        [chunk(" a", [1], 1), chunk(" b c", [2, 3], 3), chunk(" d", [4], 4, "stop")]
    )
    assert [(d.text, d.token_ids, d.index) for d in deltas] == [
        (" a", (1,), 0),
        (" b c", (2, 3), 1),
        (" d", (4,), 3),
    ]
    assert reader.totals.finish_reason == "stop"


def test_text_only_cumulative_stream() -> None:
    reader, deltas = read_all([chunk("Hel", None, 1), chunk("Hello", None, 2)])
    assert [(d.text, d.token_ids, d.count) for d in deltas] == [("Hel", (), 1), ("lo", (), 1)]
    assert reader.totals.completion_tokens == 2


def test_abort_finish_is_recorded_and_empty_chunks_are_skipped() -> None:
    reader, deltas = read_all(
        [chunk(" a", [1], 1), chunk(" a", [1], 1, {"type": "abort", "message": "shutting down"})]
    )
    assert len(deltas) == 1
    assert reader.totals.finish_reason == "abort"
    assert reader.totals.abort_message == "shutting down"


def test_pd_target_uses_the_prefill_bootstrap_endpoint() -> None:
    prefill = InstanceInfo(
        "p", Phase.PREFILL, "a100-80g", engine_url="http://10.0.0.1:30000", bootstrap_port=9000
    )
    decode = InstanceInfo("d", Phase.DECODE, "a100-80g", engine_url="http://10.0.0.2:30000")
    target = PdTarget.for_instances(prefill, decode)
    assert (target.bootstrap_host, target.bootstrap_port) == ("10.0.0.1", 9000)
    assert (target.prefill_url, target.decode_url) == (prefill.engine_url, decode.engine_url)
    assert 0 <= target.bootstrap_room < 2**63
    assert target.bootstrap_room != PdTarget.for_instances(prefill, decode).bootstrap_room
    unset = InstanceInfo("p", Phase.PREFILL, "a100-80g", engine_url="http://h:1")
    assert PdTarget.for_instances(unset, decode).bootstrap_port == DEFAULT_BOOTSTRAP_PORT


# ---- live cluster ----------------------------------------------------------------------------


class ManualClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def state(instance_id: str, phase: Phase, observed_at_s: float = 1.0, **load: Any) -> InstanceState:
    return InstanceState(
        instance_id,
        phase,
        "a100-80g",
        1410,
        observed_at_s=observed_at_s,
        last_activity_s=observed_at_s,
        **load,
    )


def info(instance_id: str, phase: Phase, url: str = "http://h:1") -> InstanceInfo:
    return InstanceInfo(instance_id, phase, "a100-80g", engine_url=url)


def snapshot(now_s: float, *states: InstanceState) -> ClusterSnapshot:
    return ClusterSnapshot(
        now_s,
        {s.instance_id: s for s in states if s.phase is Phase.PREFILL},
        {s.instance_id: s for s in states if s.phase is Phase.DECODE},
    )


INFOS = {"p": info("p", Phase.PREFILL), "d": info("d", Phase.DECODE)}


def test_no_snapshot_or_no_instances_is_unavailable() -> None:
    cluster = LiveCluster()
    with pytest.raises(NoInstanceAvailableError, match="no cluster snapshot"):
        cluster.routable()
    cluster.update(snapshot(1.0, state("p", Phase.PREFILL)), INFOS)
    with pytest.raises(NoInstanceAvailableError, match=r"no decode instance.*lists none"):
        cluster.routable()


def test_a_phase_that_vanishes_from_the_snapshot_is_kept_for_the_grace() -> None:
    clock = ManualClock()
    cluster = LiveCluster(vanished_phase_grace_s=3.0, clock=clock)
    full = snapshot(1.0, state("p", Phase.PREFILL), state("d", Phase.DECODE))
    cluster.update(full, INFOS)
    # Redis restarted empty: telemetry lists nothing, then only the first instance that
    # registered again.
    clock.now_s += 1.0
    cluster.update(snapshot(2.0), {})
    assert set(cluster.routable().decode) == {"d"} and cluster.endpoint("d") == INFOS["d"]
    clock.now_s += 1.0
    cluster.update(snapshot(3.0, state("p", Phase.PREFILL, 3.0)), {"p": INFOS["p"]})
    view = cluster.routable()
    assert view.prefill["p"].observed_at_s == 3.0 and set(view.decode) == {"d"}
    # Every one back: the grace starts over the next time a phase vanishes.
    cluster.update(full, INFOS)
    cluster.update(snapshot(4.0, state("p", Phase.PREFILL)), {"p": INFOS["p"]})
    clock.now_s += 3.0
    # Past the grace, the phase really has no instance.
    cluster.update(snapshot(7.0, state("p", Phase.PREFILL)), {"p": INFOS["p"]})
    with pytest.raises(NoInstanceAvailableError, match=r"no decode instance.*lists none"):
        cluster.routable()


def test_instances_without_endpoint_or_recent_activity_are_not_routable() -> None:
    cluster = LiveCluster(stale_after_s=5.0)
    cluster.update(
        snapshot(
            20.0,
            state("p", Phase.PREFILL, observed_at_s=18.0),
            state("p-old", Phase.PREFILL, observed_at_s=10.0),
            state("d", Phase.DECODE, observed_at_s=19.0),
            state("d-nowhere", Phase.DECODE, observed_at_s=19.0),
        ),
        {
            **INFOS,
            "p-old": info("p-old", Phase.PREFILL),
            "d-nowhere": info("d-nowhere", Phase.DECODE, ""),
        },
    )
    view = cluster.routable()
    assert list(view.prefill) == ["p"] and list(view.decode) == ["d"]
    assert cluster.latest is not None and len(cluster.latest.decode) == 2


def test_placed_requests_count_until_a_report_after_they_arrived_includes_them() -> None:
    clock = ManualClock()
    cluster = LiveCluster(clock=clock)
    cluster.update(snapshot(1.0, state("p", Phase.PREFILL), state("d", Phase.DECODE)), INFOS)

    cluster.record_placement("r1", Placement("p", "d"), RequestSpec(100, 20))
    cluster.record_placement("r2", Placement("p", "d"), RequestSpec(50, 10))
    view = cluster.routable()
    prefill, decode = view.prefill["p"], view.decode["d"]
    # In flight, not in the (unchanged) report: counted once, by the ledger.
    assert (prefill.queue_len, prefill.inflight_requests, prefill.inflight_tokens) == (0, 2, 150)
    assert (decode.running_batch, decode.inflight_requests, decode.inflight_tokens) == (0, 2, 152)
    # Counted at placement: 2 requests over the observation window.
    assert prefill.arrival_rate_rps == pytest.approx(2 / 5.0)
    assert prefill.arrival_tokens_per_s == pytest.approx(150 / 5.0)

    # Both reach the prefill engine at t=1.5; a report taken before that does not show them.
    clock.now_s += 0.5
    cluster.reached("r1", "p")
    cluster.reached("r2", "p")
    cluster.update(snapshot(1.6, state("p", Phase.PREFILL, 1.4), state("d", Phase.DECODE)), INFOS)
    assert cluster.routable().prefill["p"].inflight_requests == 2
    # A report taken after it does (its own queue shows them now): the ledger lets go.
    cluster.update(
        snapshot(1.7, state("p", Phase.PREFILL, 1.6, queue_len=2), state("d", Phase.DECODE)),
        INFOS,
    )
    view = cluster.routable()
    assert (view.prefill["p"].queue_len, view.prefill["p"].inflight_requests) == (2, 0)
    # The decode side still waits for the first tokens.
    assert view.decode["d"].inflight_requests == 2


def test_a_finished_or_replaced_request_leaves_the_ledger() -> None:
    cluster = LiveCluster(clock=ManualClock())
    cluster.update(snapshot(1.0, state("p", Phase.PREFILL), state("d", Phase.DECODE)), INFOS)
    cluster.record_placement("r1", Placement("p", "d"), RequestSpec(10, 5))
    assert cluster.inflight == 2
    cluster.finished("r1")
    assert cluster.inflight == 0
    assert cluster.routable().decode["d"].inflight_requests == 0


# ---- Place answers ---------------------------------------------------------------------------


def test_placement_message_keeps_optional_predictions_optional() -> None:
    bare = placement_to_proto(Placement("p", "d", "round-robin"), "round-robin")
    assert not bare.HasField("predicted_ttft_ms") and not bare.HasField("decode_clock_mhz")
    assert (bare.prefill_id, bare.decode_id, bare.policy_name) == ("p", "d", "round-robin")

    predicted = placement_to_proto(
        Placement("p", "d", "fits", predicted_ttft_ms=120.0, decode_clock_mhz=1005), "eco"
    )
    assert predicted.predicted_ttft_ms == 120.0 and predicted.decode_clock_mhz == 1005


def test_hot_path_json_reads_what_pythons_json_reads() -> None:
    assert json_codec.loads(b'{"ids": [1, 2], "t": "\\u00e9"}') == {"ids": [1, 2], "t": "é"}
    # orjson refuses these; the standard library's reading of them is kept.
    assert math.isnan(json_codec.loads(b'{"x": NaN}')["x"])
    # Integers beyond 64 bits come back as floats (orjson), never as an error.
    assert json_codec.loads(b"[123456789012345678901234567890]") == [1.2345678901234568e29]
    with pytest.raises(ValueError):
        json_codec.loads(b'{"unterminated": ')
    assert json_codec.dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
