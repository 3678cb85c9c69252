"""Voltana's SGLang code against a real SGLang server (unified mode, tiny model, on CPU).

The reporter on real ``/metrics``, the HTTP client on real ``/generate`` (plain, streamed, stop
strings, max tokens, abort when the client goes away), ``/health`` and ``/get_server_info``, and
the simulated engine compared with the real one on every endpoint Voltana uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from conftest import free_port

from real_engine.conftest import (
    HEALTH_TIMEOUT_S,
    MAX_RUNNING_REQUESTS,
    MAX_TOTAL_TOKENS,
    RealSglang,
)
from voltana.contract.state import Phase
from voltana.engine import SglangHttpClient
from voltana.engine.errors import EngineRequestError
from voltana.engine.settings import SimEngineSettings
from voltana.engine.sim_engine import SimEngine
from voltana.services.router.dispatch import ChunkReader
from voltana.stack.sglang_reporter import (
    SglangInstanceReporter,
    SglangInstanceSettings,
    missing_families,
)

pytestmark = [pytest.mark.real_engine, pytest.mark.timeout(1200)]

PROMPT = "the quick brown fox"


def _sampling(max_new_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"max_new_tokens": max_new_tokens, "temperature": 0.0, **extra}


@pytest.fixture
async def client() -> AsyncIterator[SglangHttpClient]:
    async with SglangHttpClient(
        request_timeout_s=120.0, health_timeout_s=HEALTH_TIMEOUT_S
    ) as engine:
        yield engine


async def _running(client: SglangHttpClient, url: str) -> int:
    return int((await client.metrics(url)).get("sglang:num_running_reqs", 0))


async def _until_idle(client: SglangHttpClient, url: str, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while await _running(client, url):
        assert loop.time() < deadline, "SGLang still runs requests"
        await asyncio.sleep(0.1)


# ---- the reporter ----------------------------------------------------------------------------


async def test_the_reporter_maps_every_family_it_reads_from_real_metrics(
    real_sglang: RealSglang, client: SglangHttpClient
) -> None:
    url = real_sglang.url
    # SGLang creates its request families on the first request; ITL needs a streamed one.
    await client.generate(url, {"text": PROMPT, "sampling_params": _sampling(4)})
    async for _ in client.generate_stream(
        url, {"text": PROMPT, "sampling_params": _sampling(6, ignore_eos=True)}
    ):
        pass
    metrics = await client.metrics(url)
    assert missing_families(metrics) == [], "SGLang renamed or dropped a family Voltana reads"

    info = await client.server_info(url)
    assert info["max_total_num_tokens"] == MAX_TOTAL_TOKENS
    assert info["max_running_requests"] == MAX_RUNNING_REQUESTS

    clock = [1000.0]
    reporter = SglangInstanceReporter(
        SglangInstanceSettings(
            telemetry_address="127.0.0.1:1",
            instance_id="real-0",
            phase=Phase.DECODE,
            engine_url=url,
        ),
        clock=lambda: clock[0],
        engine=client,
    )
    baseline = reporter.state_from_metrics(await client.metrics(url))
    assert baseline.kv_tokens_capacity == MAX_TOTAL_TOKENS  # the gauge (no server info read)
    assert (baseline.queue_len, baseline.running_batch) == (0, 0)

    long_request = {"text": PROMPT, "sampling_params": _sampling(1200, ignore_eos=True)}
    task = asyncio.create_task(client.generate(url, long_request))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        clock[0] += 0.25
        busy = reporter.state_from_metrics(await client.metrics(url))
        if busy.running_batch:
            break
        assert loop.time() < deadline and not task.done(), "never saw the request running"
        await asyncio.sleep(0.05)
    assert busy.running_batch == 1
    assert busy.kv_tokens_used > 0
    assert busy.last_activity_s == clock[0]
    answer = await task
    assert answer["meta_info"]["completion_tokens"] == 1200
    clock[0] += 0.25
    after = reporter.state_from_metrics(await client.metrics(url))
    assert after.running_batch == 0
    assert after.recent_ttft_ms is not None and after.recent_ttft_ms > 0
    assert after.recent_itl_ms is not None and after.recent_itl_ms > 0


# ---- the HTTP client -----------------------------------------------------------------------


async def test_generate_plain_streamed_and_max_tokens(
    real_sglang: RealSglang, client: SglangHttpClient
) -> None:
    url = real_sglang.url
    plain = await client.generate(
        url, {"text": PROMPT, "sampling_params": _sampling(8, ignore_eos=True)}
    )
    meta = plain["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 8}
    assert meta["completion_tokens"] == len(plain["output_ids"]) == 8
    assert isinstance(meta["prompt_tokens"], int) and meta["prompt_tokens"] > 0

    reader = ChunkReader()
    chunks = []
    async for chunk in client.generate_stream(
        url, {"text": PROMPT, "sampling_params": _sampling(8, ignore_eos=True)}
    ):
        chunks.append(chunk)
        reader.read(chunk)
    assert reader.totals.completion_tokens == 8
    assert reader.totals.finish_reason == "length"
    assert reader.totals.prompt_tokens == meta["prompt_tokens"]
    # Greedy: the stream ends where the plain answer does; chunks are cumulative.
    assert chunks[-1]["output_ids"] == plain["output_ids"]
    assert chunks[-1]["text"] == plain["text"]

    zero = await client.generate(url, {"text": PROMPT, "sampling_params": _sampling(0)})
    assert zero["output_ids"] == [] and zero["text"] == ""
    assert zero["meta_info"]["finish_reason"] == {"type": "length", "length": 0}

    by_ids = await client.generate(
        url, {"input_ids": [5, 6, 7], "sampling_params": _sampling(3, ignore_eos=True)}
    )
    assert by_ids["meta_info"]["prompt_tokens"] == 3
    assert by_ids["meta_info"]["completion_tokens"] == 3


def _stop_string(text: str) -> str | None:
    """A piece of printable ASCII text from the middle of ``text`` (random weights)."""
    for start in range(1, len(text) - 1):
        piece = text[start : start + 2]
        if piece.isascii() and piece.isprintable() and piece.strip():
            return piece
    return None


async def test_stop_strings_and_stop_tokens(
    real_sglang: RealSglang, client: SglangHttpClient
) -> None:
    url = real_sglang.url
    plain = await client.generate(
        url, {"text": PROMPT, "sampling_params": _sampling(30, ignore_eos=True)}
    )
    stop = _stop_string(plain["text"])
    if stop is None:
        pytest.skip(f"no printable stop string in the tiny model's output {plain['text']!r}")
    for stream in (False, True):
        body = {"text": PROMPT, "sampling_params": _sampling(30, ignore_eos=True, stop=[stop])}
        if stream:
            reader = ChunkReader()
            last: dict[str, Any] = {}
            async for chunk in client.generate_stream(url, body):
                reader.read(chunk)
                last = chunk
            assert reader.totals.finish_reason == "stop"
            assert reader.totals.matched_stop == stop
            answer = last
        else:
            answer = await client.generate(url, body)
        assert answer["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
        # The text is cut before the stop string; the tokens that made it are kept.
        assert stop not in answer["text"]
        assert plain["text"].startswith(answer["text"])
        assert answer["meta_info"]["completion_tokens"] == len(answer["output_ids"])

    token = plain["output_ids"][3]
    first = plain["output_ids"].index(token)
    answer = await client.generate(
        url, {"text": PROMPT, "sampling_params": _sampling(30, stop_token_ids=[token])}
    )
    assert answer["meta_info"]["finish_reason"] == {"type": "stop", "matched": token}
    assert answer["output_ids"] == plain["output_ids"][: first + 1]


async def test_a_client_that_goes_away_aborts_the_request(
    real_sglang: RealSglang, client: SglangHttpClient
) -> None:
    url = real_sglang.url
    await _until_idle(client, url)
    before = (await client.metrics(url)).get("sglang:num_aborted_requests_total", 0.0)
    stream = client.generate_stream(
        url, {"text": PROMPT, "sampling_params": _sampling(1500, ignore_eos=True)}
    )
    seen = 0
    async for _chunk in stream:
        seen += 1
        if seen == 3:
            break
    await stream.aclose()
    await _until_idle(client, url)
    assert await _aborted_reaches(client, url, before + 1) == before + 1
    # And the cancelled consumer of a stream does the same.
    task = asyncio.create_task(
        _consume(client, url, {"text": PROMPT, "sampling_params": _sampling(1500, ignore_eos=True)})
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not await _running(client, url):
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await _until_idle(client, url)
    assert await _aborted_reaches(client, url, before + 2) == before + 2


async def _aborted_reaches(client: SglangHttpClient, url: str, count: float) -> float:
    """The server's abort counter once it reaches ``count`` (or after 30 s): the abort lands in
    the scheduler a moment after the client went away, and the running gauge that
    ``_until_idle`` reads may be refreshed before it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30.0
    while True:
        aborted = (await client.metrics(url)).get("sglang:num_aborted_requests_total", 0.0)
        if aborted >= count or loop.time() > deadline:
            return aborted
        await asyncio.sleep(0.1)


async def _consume(client: SglangHttpClient, url: str, body: dict[str, Any]) -> None:
    async for _ in client.generate_stream(url, body):
        pass


async def test_health_server_info_and_errors(
    real_sglang: RealSglang, client: SglangHttpClient
) -> None:
    url = real_sglang.url
    assert await client.health(url)
    assert not await client.health(f"http://127.0.0.1:{free_port()}")
    info = await client.server_info(url)
    assert info["disaggregation_mode"] == "null"
    assert isinstance(info["version"], str)
    with pytest.raises(EngineRequestError) as refused:
        await client.generate(url, {"text": PROMPT, "sampling_params": {"max_new_tokens": "x"}})
    assert refused.value.status == 400 and refused.value.message


# ---- the simulated engine beside the real one ------------------------------------------------


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def _sse(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[bytes]:
    async with session.post(f"{url}/generate", json=body) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = await response.read()
    return [event for event in raw.split(b"\n\n") if event]


def _families(text: str) -> dict[str, str]:
    return {
        line.split()[2]: line.split()[3]
        for line in text.splitlines()
        if line.startswith("# TYPE sglang:")
    }


async def test_the_simulated_engine_answers_like_the_real_one(
    real_sglang: RealSglang, client: SglangHttpClient
) -> None:
    # SGLang streams cumulative chunks by default; the simulated engine, incremental ones
    # (--incremental-streaming-output, which Voltana's deployments pass): compare like with like.
    settings = SimEngineSettings(mode="null", speedup=50.0, incremental_streaming_output=False)
    engine = SimEngine(settings)
    await engine.start()
    try:
        real, sim = real_sglang.url, engine.url
        async with aiohttp.ClientSession() as session:
            for path in ("/health", "/health_generate"):
                assert (await _get(session, real + path))[0] == 200
                assert (await _get(session, sim + path))[0] == 200
            for path in ("/get_server_info", "/server_info", "/model_info", "/v1/models"):
                real_status, real_text = await _get(session, real + path)
                sim_status, sim_text = await _get(session, sim + path)
                assert real_status == sim_status == 200, path
                real_body, sim_body = json.loads(real_text), json.loads(sim_text)
                if path == "/v1/models":
                    real_body, sim_body = real_body["data"][0], sim_body["data"][0]
                if path.endswith("server_info"):
                    wanted = {"max_total_num_tokens", "max_running_requests", "version"}
                    assert wanted <= set(real_body) and wanted <= set(sim_body)
                else:
                    # Every key the simulated engine answers, the real one does too.
                    assert set(sim_body) <= set(real_body), (path, set(sim_body) - set(real_body))

            body = {"text": PROMPT, "sampling_params": _sampling(5, ignore_eos=True)}
            answers = [await client.generate(url, body) for url in (real, sim)]
            assert set(answers[0]) == set(answers[1]) == {"text", "output_ids", "meta_info"}
            real_meta, sim_meta = answers[0]["meta_info"], answers[1]["meta_info"]
            assert set(sim_meta) - {"voltana_energy"} <= set(real_meta)
            assert real_meta["finish_reason"] == sim_meta["finish_reason"]
            assert real_meta["completion_tokens"] == sim_meta["completion_tokens"] == 5

            streams = [await _sse(session, url, {**body, "stream": True}) for url in (real, sim)]
            for events in streams:
                assert events[-1] == b"data: [DONE]"
                assert all(event.startswith(b"data: {") for event in events[:-1])
                chunks = [json.loads(event[6:]) for event in events[:-1]]
                assert [len(c["output_ids"]) for c in chunks][-1] == 5  # cumulative
                assert [c["meta_info"]["finish_reason"] for c in chunks][:-1] == [None] * (
                    len(chunks) - 1
                )
            real_last = json.loads(streams[0][-2][6:])["meta_info"]
            sim_last = json.loads(streams[1][-2][6:])["meta_info"]
            assert set(sim_last) - {"voltana_energy"} <= set(real_last)

            real_metrics = (await _get(session, real + "/metrics"))[1]
            sim_metrics = (await _get(session, sim + "/metrics"))[1]
            real_families, sim_families = _families(real_metrics), _families(sim_metrics)
            for family, kind in sim_families.items():
                assert real_families.get(family) == kind, family
            sim_read = await client.metrics(sim)
            assert missing_families(sim_read) == []
    finally:
        await engine.stop()


async def test_incremental_streams_as_voltana_deploys_sglang(
    real_sglang_incremental: RealSglang, client: SglangHttpClient
) -> None:
    """Voltana's compose files start SGLang with --incremental-streaming-output, the simulated
    engine's default: the router's reader gets the same tokens and text from both."""
    url = real_sglang_incremental.url
    body = {"text": PROMPT, "sampling_params": _sampling(12, ignore_eos=True)}
    plain = await client.generate(url, body)
    engine = SimEngine(SimEngineSettings(mode="null", speedup=50.0))
    await engine.start()
    try:
        for target in (url, engine.url):
            reader = ChunkReader()
            chunks = []
            async for chunk in client.generate_stream(target, body):
                chunks.append(chunk)
                reader.read(chunk)
            assert reader.totals.completion_tokens == 12, target
            assert reader.totals.finish_reason == "length", target
            # Increments: no chunk resends what an earlier one sent.
            assert sum(len(chunk["output_ids"]) for chunk in chunks) == 12, target
            if target == url:
                ids = [i for chunk in chunks for i in chunk["output_ids"]]
                assert ids == plain["output_ids"]
                assert "".join(chunk["text"] for chunk in chunks) == plain["text"]
    finally:
        await engine.stop()
