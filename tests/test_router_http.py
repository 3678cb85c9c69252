"""The router's HTTP front door, driven by the `openai` package and by SGLang-style requests:
the same pipeline as gRPC (placement, SLO record, metrics), streaming and not, errors, keys."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from test_router_service import Cluster, running_cluster, wait_for

from voltana.services.router.http_fields import HttpRequestError
from voltana.services.router.http_format import parse_chat, parse_sglang, render_chat

pytestmark = pytest.mark.integration

MODEL = "llama-3.1-8b"
API_KEY = "router-api-key-0123456789abcdef"


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with running_cluster(http_listen_address="127.0.0.1:0") as running:
        yield running


def base_url(cluster: Cluster) -> str:
    url = cluster.router.http_url
    assert url is not None
    return url


def openai_client(cluster: Cluster, api_key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url(cluster) + "/v1", api_key=api_key, max_retries=0)


def http_requests(cluster: Cluster, status: str = "OK") -> float:
    value = cluster.router.metrics_registry.get_sample_value(
        "voltana_router_requests_total", {"protocol": "http", "status": status}
    )
    return value or 0.0


async def test_completions_through_the_openai_client(cluster: Cluster) -> None:
    async with openai_client(cluster) as client:
        models = await client.models.list()
        assert [model.id for model in models.data] == [MODEL]
        completion = await client.completions.create(
            model=MODEL, prompt="Say something about GPUs", max_tokens=6
        )
    (choice,) = completion.choices
    assert choice.text and choice.finish_reason == "length"
    usage = completion.usage
    assert usage is not None and usage.completion_tokens == 6
    assert usage.total_tokens == usage.prompt_tokens + 6
    extra = usage.model_extra or {}
    assert extra["energy_j"] > 0 and 0 <= extra["idle_energy_j"] <= extra["energy_j"]
    # The same pipeline as gRPC: a telemetry record and the router's metrics.
    await wait_for(lambda: len(cluster.store.completions) == 1, "the completion record")
    (record,) = cluster.store.completions
    assert record.ok and record.output_tokens == 6 and record.energy_j == extra["energy_j"]
    assert http_requests(cluster) == 1


async def test_streamed_chat_completion_with_usage(cluster: Cluster) -> None:
    async with openai_client(cluster) as client:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hello there"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content.strip()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 5
    assert http_requests(cluster) == 1


async def test_chat_completion_whole(cluster: Cluster) -> None:
    async with openai_client(cluster) as client:
        completion = await client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            ],
            max_tokens=4,
            extra_body={"ttft_slo_ms": 5000, "itl_slo_ms": 500},
        )
    message = completion.choices[0].message
    assert message.role == "assistant" and message.content
    await wait_for(lambda: len(cluster.store.completions) == 1, "the completion record")
    (record,) = cluster.store.completions
    assert record.slo is not None and record.slo.ttft_ms == 5000 and record.slo.itl_ms == 500


async def test_sglang_native_generate_whole_and_streamed(cluster: Cluster) -> None:
    body: dict[str, Any] = {
        "input_ids": list(range(100, 164)),
        "sampling_params": {"max_new_tokens": 4, "ignore_eos": True},
        "rid": "sglang-style-1",
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(base_url(cluster) + "/generate", json=body) as response:
            assert response.status == 200
            whole = await response.json()
        streamed: list[dict[str, Any]] = []
        body = {**body, "rid": "sglang-style-2", "stream": True}
        async with session.post(base_url(cluster) + "/generate", json=body) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            async for raw in response.content:
                line = raw.decode().strip()
                if line.startswith("data: ") and line != "data: [DONE]":
                    streamed.append(json.loads(line.removeprefix("data: ")))
                if line == "data: [DONE]":
                    break
    meta = whole["meta_info"]
    assert meta["id"] == "sglang-style-1"
    assert meta["finish_reason"] == {"type": "length", "length": 4}
    assert meta["completion_tokens"] == 4 and len(whole["output_ids"]) == 4
    assert meta["voltana_energy"]["energy_j"] > 0
    assert meta["voltana"]["prefill_instance"] == "prefill-0"
    # Cumulative text and ids, as SGLang streams them; the last chunk carries the meta_info.
    assert streamed[-1]["text"] and streamed[0]["text"] in streamed[-1]["text"]
    assert len(streamed[-1]["output_ids"]) == 4
    assert streamed[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 4}
    await wait_for(lambda: len(cluster.store.completions) == 2, "the completion records")
    assert {c.request_id for c in cluster.store.completions} == {"sglang-style-1", "sglang-style-2"}


# What SGLang's own bench_serving (sglang 0.5.x, --backend sglang) posts to /generate on every
# request: the sampling parameters plus lora_path, return_logprob, return_routed_experts and
# logprob_start_len at their "ask for nothing" values.
BENCH_SERVING_BODY: dict[str, Any] = {
    "text": "ab cd ef gh " * 16,
    "sampling_params": {"temperature": 0.0, "max_new_tokens": 6, "ignore_eos": True},
    "stream": True,
    "lora_path": None,
    "return_logprob": False,
    "return_routed_experts": False,
    "logprob_start_len": -1,
}


async def sse_events(response: aiohttp.ClientResponse) -> list[Any]:
    """The JSON events of a server-sent-event stream, up to and without ``[DONE]``."""
    events: list[Any] = []
    async for raw in response.content:
        line = raw.decode().strip()
        if line == "data: [DONE]":
            return events
        if line.startswith("data: "):
            events.append(json.loads(line.removeprefix("data: ")))
    raise AssertionError("the stream ended without data: [DONE]")


async def test_sglang_bench_serving_requests_stream_as_it_parses_them(cluster: Cluster) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(base_url(cluster) + "/generate", json=BENCH_SERVING_BODY) as response,
    ):
        assert response.status == 200, await response.text()
        events = await sse_events(response)
    # bench_serving: TTFT at the first event with text, then the gap to each later event
    # spread over its new tokens (the growth of meta_info.completion_tokens; an event with
    # none is skipped); the last event's meta_info has the prompt length.
    counts = [event["meta_info"]["completion_tokens"] for event in events]
    assert counts[0] >= 1 and counts[-1] == 6 and counts == sorted(counts)
    assert len(events[-1]["output_ids"]) == 6
    assert all(event["text"] for event in events)
    assert all(events[i]["text"].startswith(events[i - 1]["text"]) for i in range(1, len(events)))
    assert events[-1]["meta_info"]["prompt_tokens"] == 64
    assert events[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 6}
    assert http_requests(cluster) == 1


async def test_aiperf_style_streamed_completion_has_one_token_per_chunk_and_usage(
    cluster: Cluster,
) -> None:
    # What aiperf 0.13 (--endpoint-type completions --streaming --use-server-token-count
    # --extra-inputs ignore_eos:true) posts to /v1/completions.
    body = {
        "prompt": "ab cd ef gh " * 16,
        "model": MODEL,
        "stream": True,
        "max_tokens": 5,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(base_url(cluster) + "/v1/completions", json=body) as response,
    ):
        assert response.status == 200, await response.text()
        events = await sse_events(response)
    texts = [event["choices"][0]["text"] for event in events if event["choices"]]
    # Token chunks (each a whole number of the simulated engine's words, one per token), then
    # the finish chunk and the usage chunk aiperf counts tokens from.
    assert len("".join(texts).split()) == 5 and all(text.startswith(" ") for text in texts[:-1])
    assert texts[-1] == "" and events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["prompt_tokens"] == 64
    assert events[-1]["usage"]["completion_tokens"] == 5


@pytest.mark.unit
def test_sglang_clients_ask_for_nothing_fields_are_accepted_and_others_refused() -> None:
    parsed = parse_sglang(BENCH_SERVING_BODY, MODEL)
    assert parsed.stream and parsed.request.max_new_tokens == 6 and parsed.request.ignore_eos
    assert parsed.request.text == BENCH_SERVING_BODY["text"]
    for field, value in (
        ("lora_path", ""),
        ("top_logprobs_num", 0),
        ("token_ids_logprob", []),
        ("return_hidden_states", False),
    ):
        parse_sglang({**BENCH_SERVING_BODY, field: value}, MODEL)
    for field, value in (
        ("lora_path", "my-adapter"),
        ("return_routed_experts", True),
        ("logprob_start_len", 0),
        ("return_hidden_states", True),
        ("top_logprobs_num", 3),
    ):
        with pytest.raises(HttpRequestError, match=field) as refused:
            parse_sglang({**BENCH_SERVING_BODY, field: value}, MODEL)
        assert refused.value.param == field and refused.value.status == 400


async def test_bad_requests_get_openai_errors(cluster: Cluster) -> None:
    async with openai_client(cluster) as client:
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            await client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
        with pytest.raises(openai.BadRequestError, match="max_new_tokens"):
            await client.completions.create(model=MODEL, prompt="x", max_tokens=10**6)
        with pytest.raises(openai.BadRequestError, match="'n' is not supported"):
            await client.completions.create(model=MODEL, prompt="x", max_tokens=2, n=2)
    async with (
        aiohttp.ClientSession() as session,
        session.post(base_url(cluster) + "/v1/completions", data=b"{not json") as response,
    ):
        assert response.status == 400
        message = (await response.json())["error"]["message"]
        assert message.startswith("the request body is not valid JSON")
    assert http_requests(cluster, "INVALID_ARGUMENT") == 1  # the one the pipeline refused
    assert http_requests(cluster) == 0


async def test_no_instance_is_503_and_health_says_so() -> None:
    async with running_cluster(prefills=0, decodes=0, http_listen_address="127.0.0.1:0") as cluster:
        async with (
            aiohttp.ClientSession() as session,
            session.get(base_url(cluster) + "/health") as response,
        ):
            assert response.status == 503
        async with openai_client(cluster) as client:
            with pytest.raises(openai.InternalServerError) as raised:
                await client.completions.create(model=MODEL, prompt="x", max_tokens=2)
        assert raised.value.status_code == 503


async def test_api_keys_guard_the_http_api_too() -> None:
    async with running_cluster(
        http_listen_address="127.0.0.1:0", api_keys=frozenset({API_KEY})
    ) as cluster:
        async with openai_client(cluster, api_key="wrong-key-0123456789abcdef") as client:
            with pytest.raises(openai.AuthenticationError):
                await client.completions.create(model=MODEL, prompt="x", max_tokens=2)
        async with openai_client(cluster, api_key=API_KEY) as client:
            completion = await client.completions.create(model=MODEL, prompt="x", max_tokens=2)
        assert completion.usage is not None and completion.usage.completion_tokens == 2
        async with (
            aiohttp.ClientSession() as session,
            session.get(base_url(cluster) + "/health") as response,
        ):
            assert response.status == 200  # probes need no key


@pytest.mark.unit
def test_chat_rendering_and_refusals() -> None:
    assert render_chat([{"role": "user", "content": "Hi"}]) == "user: Hi\nassistant:"
    for bad in (
        [],
        "hi",
        [{"content": "no role"}],
        [{"role": "user", "content": [{"type": "image_url"}]}],
    ):
        with pytest.raises(HttpRequestError):
            render_chat(bad)
    with pytest.raises(HttpRequestError, match="stream"):
        parse_chat({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, MODEL)


async def test_a_stop_string_ends_the_completion_with_finish_reason_stop(cluster: Cluster) -> None:
    prompt = "Tell me about stop strings"
    async with openai_client(cluster) as client:
        free = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=8)
        full_text = free.choices[0].text
        stop = full_text.split()[3]  # the simulated tokens depend only on the prompt
        stopped = await client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=8, stop=[stop]
        )
        stream = await client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=8, stop=stop, stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert free.choices[0].finish_reason == "length"
    (choice,) = stopped.choices
    assert choice.finish_reason == "stop"
    assert choice.text == full_text[: full_text.find(stop)] and stop not in choice.text
    assert (choice.model_extra or {})["matched_stop"] == stop
    assert stopped.usage is not None and stopped.usage.completion_tokens < 8
    # Streamed: the same text, cut before the stop string, and "stop" on the last chunk.
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) <= {None}
    await wait_for(lambda: len(cluster.store.completions) == 3, "the completion records")
    assert sorted(c.reason for c in cluster.store.completions) == ["length", "stop", "stop"]


async def test_stop_token_ids_end_an_sglang_request(cluster: Cluster) -> None:
    body: dict[str, Any] = {"input_ids": list(range(100, 132)), "sampling_params": {}}
    async with aiohttp.ClientSession() as session:
        body["sampling_params"] = {"max_new_tokens": 6}
        async with session.post(base_url(cluster) + "/generate", json=body) as response:
            free = await response.json()
        stop_id = free["output_ids"][2]
        body["sampling_params"] = {"max_new_tokens": 6, "stop_token_ids": [stop_id]}
        async with session.post(base_url(cluster) + "/generate", json=body) as response:
            stopped = await response.json()
    assert free["meta_info"]["finish_reason"] == {"type": "length", "length": 6}
    assert stopped["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_id}
    assert stopped["output_ids"] == free["output_ids"][:3]


HOSTILE_BODIES: list[tuple[str, bytes, str | None]] = [
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 1e30}', "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 1' + b"0" * 30 + b"}", "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": "5"}', "max_tokens"),
    ("/v1/completions", b'{"prompt": [1' + b"0" * 30 + b"]}", "prompt"),
    ("/v1/completions", b'{"prompt": "x", "temperature": 1e300}', "temperature"),
    ("/v1/completions", b'{"prompt": "x", "temperature": 1e999}', "temperature"),
    ("/v1/completions", b'{"prompt": "x", "seed": 1' + b"0" * 25 + b"}", "seed"),
    ("/v1/completions", b'{"prompt": "x", "presence_penalty": 9}', None),
    ("/v1/completions", b'{"prompt": "x", "ttft_slo_ms": 1e308}', None),
    ("/v1/completions", b'{"prompt": "\\ud800"}', "prompt"),
    ("/v1/completions", b'{"prompt": "x", "stop": 5}', "stop"),
    ("/v1/completions", b'{"prompt": "x", "stop": ["\\udfff"]}', "stop"),
    ("/v1/completions", b'{"prompt": "x", "stream_options": 5}', "stream_options"),
    ("/v1/completions", b'{"prompt": "x", "best_of": 3}', "best_of"),
    ("/v1/completions", b'{"prompt": "x", "frobnicate": true}', "frobnicate"),
    ("/v1/completions", b'{"prompt": {"a": 1}}', "prompt"),
    ("/v1/completions", b"[" * 100_000 + b"]" * 100_000, None),
    ("/v1/completions", b'{"prompt": "\xff\xfe\xfd"}', None),
    ("/v1/completions", b'"just a string"', None),
    ("/v1/completions", b"", None),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], '
     b'"tools": [{"type": "function", "function": {"name": "f"}}]}', "tools"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], '
     b'"response_format": {"type": "json_object"}}', "response_format"),
    ("/v1/chat/completions", b'{"messages": [{"role": 5, "content": "x"}]}', "messages[0]"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": {"x": 1}}]}',
     "messages[0].content"),
    ("/generate", b'{"text": "x", "sampling_params": {"top_k": 5}}', "sampling_params.top_k"),
    ("/generate", b'{"text": "x", "sampling_params": {"max_new_tokens": 1e30}}',
     "sampling_params.max_new_tokens"),
    ("/generate", b'{"input_ids": [[1, 2], [3]]}', "input_ids"),
    ("/generate", b'{"text": "x", "lora_path": "my-adapter"}', "lora_path"),
    ("/generate", b'{"text": "x", "return_routed_experts": true}', "return_routed_experts"),
]  # fmt: skip


async def test_hostile_bodies_get_4xx_openai_errors_and_the_router_keeps_serving(
    cluster: Cluster,
) -> None:
    async with aiohttp.ClientSession() as session:
        for path, raw, param in HOSTILE_BODIES:
            async with session.post(base_url(cluster) + path, data=raw) as response:
                answer = await response.json(content_type=None)
                assert 400 <= response.status < 500, (raw[:80], response.status, answer)
                error = answer["error"]
                assert set(error) == {"message", "type", "param", "code"}, raw[:80]
                assert error["param"] == param, (raw[:80], error)
        async with session.post(base_url(cluster) + "/v1/completions") as response:
            assert response.status == 400  # no body at all
        async with session.delete(base_url(cluster) + "/v1/completions") as response:
            assert response.status == 405 and (await response.json())["error"]["code"] == 405
        async with session.get(base_url(cluster) + "/v1/models/" + MODEL) as response:
            assert (await response.json())["id"] == MODEL
    # Honoured, not refused: seed and penalties go to SGLang's sampling params.
    async with openai_client(cluster) as client:
        completion = await client.completions.create(
            model=MODEL,
            prompt="still serving",
            max_tokens=2,
            seed=7,
            presence_penalty=0.5,
            frequency_penalty=0.5,
            user="someone",
        )
        model = await client.models.retrieve(MODEL)
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("gpt-4")
    assert completion.choices[0].finish_reason == "length" and model.id == MODEL
    assert http_requests(cluster) == 1
