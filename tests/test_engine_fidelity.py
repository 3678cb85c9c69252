"""SGLang behaviours the simulated engine reproduces for SGLang's own router and clients:
/model_info, the OpenAI /v1 endpoints (PD included), the default bootstrap port, prefill-only
requests, logprobs, the PD queue gauges and quiet gRPC probes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from voltana.engine import SimEngine, SimEngineSettings
from voltana.engine.protocol import DEFAULT_BOOTSTRAP_PORT

pytestmark = pytest.mark.integration

SPEEDUP = 50.0


@contextlib.asynccontextmanager
async def _engine(mode: str, **overrides: Any) -> AsyncIterator[SimEngine]:
    engine = SimEngine(SimEngineSettings(mode=mode, speedup=SPEEDUP, **overrides))
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _sse(response: aiohttp.ClientResponse) -> list[Any]:
    """Every ``data:`` event of a stream, ``[DONE]`` as the string."""
    events: list[Any] = []
    async for raw in response.content:
        line = raw.decode().strip()
        if line.startswith("data:"):
            payload = line.removeprefix("data:").strip()
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


async def _pd_call(
    http: aiohttp.ClientSession,
    prefill: SimEngine,
    decode: SimEngine,
    path: str,
    body: dict[str, Any],
) -> tuple[aiohttp.ClientResponse, Any, Any]:
    """Send one body to both instances with one bootstrap room, as SGLang's PD router does."""
    room = random.getrandbits(63)
    pd_body = {
        **body,
        "bootstrap_host": prefill.bootstrap_host,
        "bootstrap_port": prefill.bootstrap_port,
        "bootstrap_room": room,
    }

    async def call(url: str) -> tuple[aiohttp.ClientResponse, Any]:
        async with http.post(url + path, json=pd_body) as response:
            if body.get("stream"):
                return response, await _sse(response)
            return response, await response.json()

    (_, prefill_body), (response, decode_body) = await asyncio.gather(
        call(prefill.url), call(decode.url)
    )
    return response, prefill_body, decode_body


async def test_model_info_answers_on_the_current_and_the_old_path(
    http: aiohttp.ClientSession,
) -> None:
    async with _engine("null", model_path="org/model") as engine:
        for path in ("/model_info", "/get_model_info"):
            async with http.get(engine.url + path) as response:
                assert response.status == 200
                info = await response.json()
            assert info["model_path"] == "org/model"
            assert info["is_generation"] is True
        async with http.get(engine.url + "/v1/models") as response:
            models = await response.json()
        async with http.get(engine.url + "/v1/models/org/model") as response:
            card = await response.json()
        async with http.get(engine.url + "/v1/models/other") as response:
            assert response.status == 404
            assert (await response.json())["code"] == 404
    assert [m["id"] for m in models["data"]] == ["org/model"] and card["id"] == "org/model"
    assert models["data"][0]["max_model_len"] == engine.perf.model.max_context_tokens


async def test_openai_completion_and_chat_on_one_instance(http: aiohttp.ClientSession) -> None:
    async with _engine("null") as engine:
        async with http.post(
            engine.url + "/v1/completions", json={"prompt": "hello world", "max_tokens": 5}
        ) as response:
            assert response.status == 200
            completion = await response.json()
        async with http.post(
            engine.url + "/v1/chat/completions",
            json={
                "model": "anything",
                "messages": [{"role": "user", "content": "hi there"}],
                "max_tokens": 4,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ) as response:
            events = await _sse(response)
    choice = completion["choices"][0]
    assert completion["object"] == "text_completion"
    assert choice["finish_reason"] == "length" and len(choice["text"].split()) == 5
    assert completion["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "anything" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert len(text.split()) == 4
    finishing = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finishing] == ["length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


async def test_openai_chat_in_pd_mode_carries_the_bootstrap_fields(
    http: aiohttp.ClientSession,
) -> None:
    body = {"messages": [{"role": "user", "content": "tell me"}], "max_tokens": 6, "stream": True}
    async with _engine("prefill") as prefill, _engine("decode") as decode:
        response, prefill_events, decode_events = await _pd_call(
            http, prefill, decode, "/v1/chat/completions", body
        )
    assert response.status == 200
    deltas = [c["choices"][0]["delta"].get("content", "") for c in decode_events[:-1]]
    assert len("".join(deltas).split()) == 6
    # The prefill instance answers with the first token only.
    prefill_text = "".join(c["choices"][0]["delta"].get("content", "") for c in prefill_events[:-1])
    assert prefill_text.split() == "".join(deltas).split()[:1]


async def test_openai_errors_use_the_openai_shape(http: aiohttp.ClientSession) -> None:
    async with _engine("null") as engine:
        async with http.post(
            engine.url + "/v1/chat/completions", json={"messages": [], "max_tokens": 2}
        ) as response:
            assert response.status == 400
            error = await response.json()
        async with http.post(
            engine.url + "/v1/completions", json={"prompt": "x", "n": 2}
        ) as response:
            assert response.status == 400
            n_error = await response.json()
    assert error["object"] == "error" and "'messages' must be a non-empty list" in error["message"]
    assert "only n=1" in n_error["message"]


async def test_decode_without_bootstrap_port_uses_the_default_port(
    http: aiohttp.ClientSession,
) -> None:
    body = {"input_ids": [1000, 1001, 1002], "sampling_params": {"max_new_tokens": 3}}
    async with _engine("prefill") as prefill:
        # A decode configured with the prefill's bootstrap port, as --disaggregation-bootstrap-port
        async with _engine("decode", bootstrap_port=prefill.bootstrap_port) as decode:
            room = random.getrandbits(63)
            pd_body = {**body, "bootstrap_host": prefill.bootstrap_host, "bootstrap_room": room}
            prefill_call = http.post(prefill.url + "/generate", json=pd_body)
            decode_call = http.post(decode.url + "/generate", json=pd_body)
            async with prefill_call as first, decode_call as second:
                assert first.status == 200 and second.status == 200
                result = await second.json()
        assert len(result["output_ids"]) == 3
        # Unconfigured, it dials SGLang's default bootstrap port.
        async with _engine("decode", kv_wait_timeout_s=0.2) as decode:
            pd_body = {**body, "bootstrap_host": "127.0.0.1", "bootstrap_room": 7}
            async with http.post(decode.url + "/generate", json=pd_body) as response:
                assert response.status == 504
                error = await response.json()
    assert f"127.0.0.1:{DEFAULT_BOOTSTRAP_PORT}" in error["error"]["message"]


async def test_max_new_tokens_zero_runs_the_prefill_only(http: aiohttp.ClientSession) -> None:
    body = {"input_ids": list(range(1000, 1100)), "sampling_params": {"max_new_tokens": 0}}
    async with _engine("null") as engine:
        async with http.post(engine.url + "/generate", json=body) as response:
            single = await response.json()
        prompt_tokens = engine.core.metrics.prompt_tokens_total
    async with _engine("prefill") as prefill, _engine("decode") as decode:
        response, prefill_body, decode_body = await _pd_call(
            http, prefill, decode, "/generate", body
        )
    for result in (single, prefill_body, decode_body):
        assert result["output_ids"] == [] and result["text"] == ""
        assert result["meta_info"]["finish_reason"] == {"type": "length", "length": 0}
        assert result["meta_info"]["completion_tokens"] == 0
    assert prompt_tokens == 100  # the prompt was still computed


async def test_return_logprob_gives_plausible_logprobs(http: aiohttp.ClientSession) -> None:
    body = {
        "input_ids": list(range(2000, 2010)),
        "sampling_params": {"max_new_tokens": 5},
        "return_logprob": True,
        "logprob_start_len": 0,
        "top_logprobs_num": 3,
        "return_text_in_logprobs": True,
    }
    async with _engine("null") as engine:
        async with http.post(engine.url + "/generate", json=body) as response:
            meta = (await response.json())["meta_info"]
            tokenizer = engine.core.tokenizer
        async with http.post(engine.url + "/generate", json={**body, "stream": True}) as response:
            # Deltas (the default, --incremental-streaming-output): each chunk has its own.
            stream_logprobs = [
                entry
                for event in (await _sse(response))[:-1]
                for entry in event["meta_info"]["output_token_logprobs"]
            ]
    output = meta["output_token_logprobs"]
    assert len(output) == 5
    assert all(lp < 0 and text == tokenizer.decode_token(token) for lp, token, text in output)
    prompt = meta["input_token_logprobs"]
    assert [entry[1] for entry in prompt] == body["input_ids"]
    assert prompt[0][0] is None and all(entry[0] < 0 for entry in prompt[1:])
    for position, top in enumerate(meta["output_top_logprobs"]):
        logprobs = [entry[0] for entry in top]
        assert len(top) == 3 and logprobs == sorted(logprobs, reverse=True)
        assert sum(math.exp(lp) for lp in logprobs) <= 1.0 + 1e-9
        assert any(entry[1] == output[position][1] for entry in top)  # the generated token
    assert meta["input_top_logprobs"][0] is None
    # Same request, same numbers, streamed or not.
    assert stream_logprobs == output


async def test_pd_logprobs_agree_and_the_prompt_comes_from_the_prefill(
    http: aiohttp.ClientSession,
) -> None:
    body = {
        "input_ids": list(range(3000, 3008)),
        "sampling_params": {"max_new_tokens": 4},
        "return_logprob": True,
        "logprob_start_len": 0,
    }
    async with _engine("prefill") as prefill, _engine("decode") as decode:
        _, prefill_body, decode_body = await _pd_call(http, prefill, decode, "/generate", body)
    prefill_meta, decode_meta = prefill_body["meta_info"], decode_body["meta_info"]
    assert len(prefill_meta["input_token_logprobs"]) == 8
    assert decode_meta["input_token_logprobs"] == []
    assert len(decode_meta["output_token_logprobs"]) == 4
    assert decode_meta["output_token_logprobs"][0] == prefill_meta["output_token_logprobs"][0]


async def test_pd_queue_gauges_are_exposed(http: aiohttp.ClientSession) -> None:
    async with _engine("prefill") as prefill, _engine("decode") as decode:
        async with http.get(prefill.url + "/metrics") as response:
            prefill_metrics = await response.text()
        async with http.get(decode.url + "/metrics") as response:
            decode_metrics = await response.text()
    for name in ("num_prefill_prealloc_queue_reqs", "num_prefill_inflight_queue_reqs"):
        assert f"# TYPE sglang:{name} gauge" in prefill_metrics
    for name in ("num_decode_prealloc_queue_reqs", "num_decode_transfer_queue_reqs"):
        assert f"# TYPE sglang:{name} gauge" in decode_metrics


async def test_a_grpc_probe_on_the_http_port_logs_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    http2_preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    caplog.set_level(logging.DEBUG)
    async with _engine("null") as engine:
        reader, writer = await asyncio.open_connection("127.0.0.1", engine.port)
        writer.write(http2_preface)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5.0)
        writer.close()
    assert b" 400 Bad Request" in answer.split(b"\r\n", 1)[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("gRPC probe" in r.getMessage() for r in caplog.records)
