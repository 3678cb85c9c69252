"""The simulated SGLang engine over loopback HTTP, driven through SglangHttpClient."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from voltana.contract.state import InstanceState, Phase
from voltana.engine import (
    EngineRequestError,
    EngineTimeoutError,
    EngineUnavailableError,
    ScaledClock,
    SglangHttpClient,
    SimEngine,
    SimEngineSettings,
)
from voltana.errors import ConfigError
from voltana.gpu.sim import SimulatedGpu
from voltana.hardware.gpus import get_gpu

pytestmark = pytest.mark.integration

SPEEDUP = 20.0


def _settings(mode: str, **overrides: Any) -> SimEngineSettings:
    # Simulated latencies stay the model's through host stalls of up to 5 s (a busy CI host):
    # the tests compare them with the performance model.
    overrides.setdefault("catch_up_wall_s", 5.0)
    return SimEngineSettings(mode=mode, speedup=SPEEDUP, **overrides)


@contextlib.asynccontextmanager
async def _engine(settings: SimEngineSettings, **kwargs: Any) -> AsyncIterator[SimEngine]:
    engine = SimEngine(settings, **kwargs)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


@pytest.fixture
async def client() -> AsyncIterator[SglangHttpClient]:
    async with SglangHttpClient() as http_client:
        yield http_client


@pytest.fixture
async def pd_pair() -> AsyncIterator[tuple[SimEngine, SimEngine]]:
    async with (
        # A window of 600 simulated seconds (30 s wall): a slow CI host must not age the
        # recent TTFT/ITL samples out before a test reads them.
        _engine(_settings("prefill", recent_window_s=600.0)) as prefill,
        _engine(_settings("decode", drain_timeout_s=0.0, recent_window_s=600.0)) as decode,
    ):
        yield prefill, decode


async def _until(
    condition: Callable[[], bool], timeout_s: float = 2.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_pd_stream_delivers_every_token_with_sglang_meta(
    pd_pair: tuple[SimEngine, SimEngine], client: SglangHttpClient
) -> None:
    prefill, decode = pd_pair
    max_new_tokens = 24
    prompt = "lorem ipsum dolor sit amet " * 40  # 2+2+2+1+1 tokens (4 chars per token)
    request = {"text": prompt, "sampling_params": {"max_new_tokens": max_new_tokens}, "rid": "pd-1"}

    chunks = [
        chunk
        async for chunk in client.generate_pd(
            prefill.url, decode.url, prefill.bootstrap_host, prefill.bootstrap_port, request
        )
    ]

    assert len(chunks) == max_new_tokens  # one chunk per token, the first from prefill
    final = chunks[-1]
    meta = final["meta_info"]
    assert meta["id"] == "pd-1"
    assert meta["finish_reason"] == {"type": "length", "length": max_new_tokens}
    assert meta["prompt_tokens"] == 320
    assert meta["completion_tokens"] == max_new_tokens
    assert meta["e2e_latency"] > 0
    # Deltas (SGLang's --incremental-streaming-output, the simulated engine's default): each
    # chunk carries its new token; only the last chunk finishes.
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    assert [len(c["output_ids"]) for c in chunks] == [1] * max_new_tokens
    assert [c["meta_info"]["completion_tokens"] for c in chunks] == list(
        range(1, max_new_tokens + 1)
    )
    assert len("".join(c["text"] for c in chunks).split()) == 24

    # Measured latencies follow the performance model (times are simulated seconds).
    state = decode.instance_state()
    perf = decode.perf
    expected_itl_ms = perf.decode_iteration(1, 320 + 2, 1410).latency_s * 1000
    assert state.recent_itl_ms == pytest.approx(expected_itl_ms, rel=0.05)
    prefill_ms = perf.prefill_iteration(320, 1410).latency_s * 1000
    prefill_state = prefill.instance_state()
    assert prefill_state.recent_ttft_ms is not None
    # Never faster than the model (up to rounding): an idle engine starts when work arrives.
    assert prefill_ms - 1e-6 <= prefill_state.recent_ttft_ms <= prefill_ms * 1.5 + 50
    assert state.recent_ttft_ms is not None and state.recent_ttft_ms > 0

    # The same prompt through a single (null-mode) instance gives the same tokens.
    async with _engine(_settings("null")) as single:
        alone = await client.generate(single.url, request)
    assert alone["output_ids"] == [i for c in chunks for i in c["output_ids"]]
    assert alone["text"] == "".join(c["text"] for c in chunks)


async def test_prefill_engine_answers_once_its_prompt_is_done(client: SglangHttpClient) -> None:
    async with _engine(_settings("prefill")) as prefill:
        answer = await client.generate(
            prefill.url,
            {
                "input_ids": [1000] * 300,
                "bootstrap_room": 7,
                "sampling_params": {"max_new_tokens": 50},
            },
        )
        assert answer["meta_info"]["prompt_tokens"] == 300
        assert answer["meta_info"]["completion_tokens"] == 1
        assert len(answer["output_ids"]) == 1
        # Nobody claimed room 7 yet: its KV waits in the prefill's mailbox.
        metrics = await client.metrics(prefill.url)
        assert metrics["sglang:num_prefill_inflight_queue_reqs"] == 1
        assert metrics["sglang:prompt_tokens_total"] == 300


async def test_metrics_use_sglang_names_with_sane_values(
    pd_pair: tuple[SimEngine, SimEngine], client: SglangHttpClient
) -> None:
    prefill, decode = pd_pair
    requests = 3
    max_new_tokens = 10
    for index in range(requests):
        request = {
            "input_ids": [1000 + index] * 200,
            "sampling_params": {"max_new_tokens": max_new_tokens},
        }
        async for _ in client.generate_pd(
            prefill.url, decode.url, prefill.bootstrap_host, prefill.bootstrap_port, request
        ):
            pass

    decode_metrics = await client.metrics(decode.url)
    assert decode_metrics["sglang:num_running_reqs"] == 0
    assert decode_metrics["sglang:num_queue_reqs"] == 0
    assert decode_metrics["sglang:token_usage"] == 0
    assert decode_metrics["sglang:gen_throughput"] > 0
    assert decode_metrics["sglang:time_to_first_token_seconds_count"] == requests
    assert decode_metrics['sglang:time_to_first_token_seconds_bucket{le="+Inf"}'] == requests
    assert decode_metrics["sglang:inter_token_latency_seconds_count"] == requests * (
        max_new_tokens - 1
    )
    itl_mean_s = (
        decode_metrics["sglang:inter_token_latency_seconds_sum"]
        / decode_metrics["sglang:inter_token_latency_seconds_count"]
    )
    assert 0.005 < itl_mean_s < 0.05
    assert decode_metrics["sglang:e2e_request_latency_seconds_count"] == requests
    assert decode_metrics["sglang:generation_tokens_total"] == requests * max_new_tokens
    prefill_metrics = await client.metrics(prefill.url)
    assert prefill_metrics["sglang:prompt_tokens_total"] == requests * 200
    assert prefill_metrics["sglang:time_to_first_token_seconds_count"] == requests
    assert prefill_metrics["sglang:num_prefill_inflight_queue_reqs"] == 0  # all claimed

    samples = await client.metric_samples(decode.url)
    assert {s.labels.get("model_name") for s in samples} == {"sim/llama-3.1-8b"}

    # While a long request runs, it shows up as running and holding KV.
    request = {"input_ids": [1000] * 500, "sampling_params": {"max_new_tokens": 5000}}
    stream = client.generate_pd(
        prefill.url, decode.url, prefill.bootstrap_host, prefill.bootstrap_port, request
    )
    async with contextlib.aclosing(stream), aiohttp.ClientSession() as session:
        await anext(stream)
        await anext(stream)
        running = await client.metrics(decode.url)
        async with session.get(decode.url + "/get_load") as response:
            load = await response.json()
    assert running["sglang:num_running_reqs"] == 1
    assert 0 < running["sglang:token_usage"] < 0.01
    assert running["sglang:num_used_tokens"] >= 501
    assert load[0]["num_reqs"] == 1 and load[0]["num_tokens"] >= 501


async def test_server_info_and_health(
    pd_pair: tuple[SimEngine, SimEngine], client: SglangHttpClient
) -> None:
    prefill, decode = pd_pair
    info = await client.server_info(prefill.url)
    assert info["disaggregation_mode"] == "prefill"
    assert info["disaggregation_bootstrap_port"] == prefill.bootstrap_port
    assert info["model_path"] == "sim/llama-3.1-8b"
    assert info["gpu"]["key"] == "a100-80g"
    assert info["max_total_num_tokens"] == prefill.core.kv_capacity_tokens > 0
    assert info["chunked_prefill_size"] == 8192
    assert info["max_running_requests"] == 1024
    assert (await client.server_info(decode.url))["disaggregation_mode"] == "decode"
    assert await client.health(decode.url) is True
    assert await client.health(f"http://127.0.0.1:{_closed_port()}") is False


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"sampling_params": {"max_new_tokens": 4}}, "either 'text' or 'input_ids'"),
        ({"text": "a b", "input_ids": [1000]}, "not both"),
        ({"text": "   "}, "prompt is empty"),
        (
            {"text": "hello", "sampling_params": {"max_new_tokens": -1}},
            "max_new_tokens must be >= 0",
        ),
        (
            {"text": "hello", "sampling_params": {"max_new_tokens": 200_000}},
            "maximum context length",
        ),
        (
            {"input_ids": [1000] * 400, "sampling_params": {"max_new_tokens": 200}},
            "KV-cache tokens",
        ),
    ],
)
async def test_bad_input_is_refused_with_400(
    client: SglangHttpClient, body: dict[str, Any], message: str
) -> None:
    async with _engine(_settings("null", max_total_num_tokens=500)) as engine:
        with pytest.raises(EngineRequestError, match=message) as caught:
            await client.generate(engine.url, body)
        assert caught.value.status == 400
        assert engine.core.requests() == []


async def test_invalid_json_and_missing_bootstrap_are_400(
    pd_pair: tuple[SimEngine, SimEngine], client: SglangHttpClient
) -> None:
    prefill, decode = pd_pair
    async with (
        aiohttp.ClientSession() as session,
        session.post(decode.url + "/generate", data=b"{not json") as response,
    ):
        assert response.status == 400
        assert "not valid JSON" in (await response.json())["error"]["message"]
    with pytest.raises(EngineRequestError, match="bootstrap_host"):
        await client.generate(decode.url, {"text": "hello"})
    with pytest.raises(EngineRequestError, match="bootstrap_room"):
        await client.generate(prefill.url, {"text": "hello"})


async def test_lower_sm_clock_makes_prefill_slower(client: SglangHttpClient) -> None:
    clock = ScaledClock(SPEEDUP)
    gpu = SimulatedGpu(get_gpu("a100-80g"), now_s=clock, clock_change_delay_ms=0)
    async with _engine(_settings("prefill"), gpu=gpu, clock=clock) as engine:
        request = {"input_ids": [1000] * 4000, "sampling_params": {"max_new_tokens": 1}}
        fast = await client.generate(engine.url, {**request, "bootstrap_room": 1})
        gpu.set_locked_sm_clock_mhz(600, 600)  # what a node agent does
        slow = await client.generate(engine.url, {**request, "bootstrap_room": 2})
    fast_s = fast["meta_info"]["e2e_latency"]
    slow_s = slow["meta_info"]["e2e_latency"]
    perf = engine.perf
    assert fast_s == pytest.approx(perf.prefill_iteration(4000, 1410).latency_s, rel=0.1)
    assert slow_s == pytest.approx(perf.prefill_iteration(4000, 600).latency_s, rel=0.1)
    assert slow_s > 1.8 * fast_s


async def test_gpu_power_follows_the_work_and_energy_integrates(client: SglangHttpClient) -> None:
    clock = ScaledClock(SPEEDUP)
    gpu = SimulatedGpu(get_gpu("a100-80g"), now_s=clock, clock_change_delay_ms=0)
    async with _engine(_settings("null"), gpu=gpu, clock=clock) as engine:
        idle_w = engine.perf.idle_power_w(1410)
        assert gpu.power_w() == pytest.approx(idle_w)
        energy_before_j = gpu.energy_j()
        request = {"input_ids": [1000] * 8000, "sampling_params": {"max_new_tokens": 200}}
        task = asyncio.create_task(client.generate(engine.url, request))
        await _until(lambda: engine.core.running_requests > 0, what="a running batch")
        busy_w = gpu.power_w()
        assert busy_w > idle_w + 20
        await task
        await _until(lambda: gpu.power_w() == pytest.approx(idle_w), what="idle power")
        state = engine.instance_state()
        assert state.energy_j > energy_before_j
        assert state.power_w == pytest.approx(idle_w)
    # Stopped: the GPU holds no CUDA context any more.
    assert gpu.power_w() == get_gpu("a100-80g").idle_w


@pytest.mark.parametrize("catch_up_wall_s", [0.02, 2.0])
async def test_a_stalled_host_is_reported_not_passed_off_as_gpu_time(
    client: SglangHttpClient, catch_up_wall_s: float
) -> None:
    """An event loop that wakes late either catches up (iterations stay back to back in
    simulated time) or, beyond the catch-up window, counts the simulated time its GPU sat
    idle with work waiting, on /metrics."""
    settings = _settings("null", catch_up_wall_s=catch_up_wall_s)
    async with _engine(settings) as engine:
        request = {"input_ids": [1000] * 100, "sampling_params": {"max_new_tokens": 300}}
        task = asyncio.create_task(client.generate(engine.url, request))
        await _until(lambda: engine.core.running_requests > 0, what="a running batch")
        time.sleep(0.3)  # the host stalls: nothing on this loop runs
        await task
        samples = await client.metric_samples(engine.url)
    (stalled_s,) = [s.value for s in samples if s.name == "voltana:sim_host_stall_seconds_total"]
    if catch_up_wall_s > 0.3:
        assert stalled_s == 0.0
    else:  # about the stall past the window, in simulated seconds
        assert 0.5 * 0.28 * SPEEDUP < stalled_s < 2.0 * 0.3 * SPEEDUP


async def test_client_disconnect_cancels_the_job(
    pd_pair: tuple[SimEngine, SimEngine], client: SglangHttpClient
) -> None:
    prefill, decode = pd_pair
    request = {"input_ids": [1000] * 100, "sampling_params": {"max_new_tokens": 100_000}}
    stream = client.generate_pd(
        prefill.url, decode.url, prefill.bootstrap_host, prefill.bootstrap_port, request
    )
    for _ in range(3):
        await anext(stream)
    assert decode.core.running_requests == 1
    await stream.aclose()
    await _until(lambda: not decode.core.requests(), what="decode to drop the request")
    await _until(lambda: not prefill.core.requests(), what="prefill to drop the request")
    state = decode.instance_state()
    assert state.running_batch == 0 and state.kv_tokens_used == 0 and state.queue_len == 0
    assert decode.core.metrics.aborted_requests_total == 1

    # A non-streaming request whose caller gives up is cancelled too.
    async with _engine(_settings("null")) as single:
        task = asyncio.create_task(client.generate(single.url, request))
        await _until(lambda: single.core.running_requests == 1, what="the request to run")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await _until(lambda: not single.core.requests(), what="the engine to drop it")
        assert single.instance_state().kv_tokens_used == 0


async def test_cancelling_mid_iteration_never_reports_negative_kv(
    client: SglangHttpClient,
) -> None:
    request = {"input_ids": [1000] * 100, "sampling_params": {"max_new_tokens": 100_000}}
    async with _engine(_settings("null")) as single:
        task = asyncio.create_task(client.generate(single.url, request))
        try:
            decode = single.core.decode
            assert decode is not None
            await _until(lambda: decode.batch_size == 1, what="the request to decode")
            await _until(lambda: decode.is_busy, what="a decode iteration to run")
            # Telemetry may read the state right after the cancel, before the iteration ends.
            assert single.core.abort_all("test") == 1
            assert single.instance_state().kv_tokens_used == 0
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    # Stopped in the middle of an iteration that will never finish: still nothing held.
    assert single.instance_state().kv_tokens_used == 0


async def test_decode_times_out_when_no_prefill_sends_the_kv(client: SglangHttpClient) -> None:
    async with (
        _engine(_settings("prefill")) as prefill,
        _engine(_settings("decode", kv_wait_timeout_s=0.3)) as decode,
    ):
        request = {
            "text": "hello there",
            "bootstrap_host": prefill.bootstrap_host,
            "bootstrap_port": prefill.bootstrap_port,
            "bootstrap_room": 12345,
        }
        started_s = time.monotonic()
        with pytest.raises(EngineTimeoutError, match="bootstrap room 12345") as caught:
            async for _ in client.generate_stream(decode.url, request):
                pass
        assert caught.value.status == 504
        assert 0.3 <= time.monotonic() - started_s < 10.0  # not the default 30 s
        # An unreachable bootstrap server times out the same way, naming the last error.
        unreachable = {**request, "bootstrap_port": _closed_port()}
        with pytest.raises(EngineTimeoutError, match="last error"):
            await client.generate(decode.url, unreachable)
        assert not decode.core.requests()


async def test_generate_pd_raises_the_prefill_error_without_waiting(
    client: SglangHttpClient,
) -> None:
    async with (
        _engine(_settings("prefill", max_total_num_tokens=100)) as prefill,
        _engine(_settings("decode")) as decode,
    ):
        request = {"input_ids": [1000] * 200, "sampling_params": {"max_new_tokens": 4}}
        started_s = time.monotonic()
        with pytest.raises(EngineRequestError, match="KV-cache tokens") as caught:
            async for _ in client.generate_pd(
                prefill.url, decode.url, prefill.bootstrap_host, prefill.bootstrap_port, request
            ):
                pass
        assert caught.value.status == 400 and prefill.url in caught.value.url
        assert time.monotonic() - started_s < 10.0  # not the decode's 30 s KV timeout
        await _until(lambda: not decode.core.requests(), what="decode to drop the request")


async def test_stop_refuses_new_requests_and_aborts_in_flight(client: SglangHttpClient) -> None:
    engine = SimEngine(_settings("null", drain_timeout_s=0.3))
    await engine.start()
    request = {"input_ids": [1000] * 50, "sampling_params": {"max_new_tokens": 100_000}}
    stream = client.generate_stream(engine.url, request)
    first = await anext(stream)
    stop = asyncio.create_task(engine.stop())
    await asyncio.sleep(0.05)
    with pytest.raises(EngineUnavailableError) as caught:
        await client.generate(engine.url, request)
    assert caught.value.status == 503
    chunks = [first] + [chunk async for chunk in stream]
    await stop
    final = chunks[-1]["meta_info"]
    assert final["finish_reason"]["type"] == "abort"
    assert "shutting down" in final["finish_reason"]["message"]
    assert 1 < final["completion_tokens"] < 100_000
    assert not engine.is_running
    with pytest.raises(EngineUnavailableError, match="cannot connect"):
        await client.generate(engine.url, request)


async def test_stop_lets_in_flight_requests_finish_within_the_drain_time(
    client: SglangHttpClient,
) -> None:
    engine = SimEngine(_settings("null", drain_timeout_s=5.0))
    await engine.start()
    request = {"input_ids": [1000] * 50, "sampling_params": {"max_new_tokens": 20}}
    task = asyncio.create_task(client.generate(engine.url, request))
    await _until(lambda: engine.core.live_requests == 1, what="the request to be admitted")
    await engine.stop()
    answer = await task
    assert answer["meta_info"]["finish_reason"] == {"type": "length", "length": 20}


async def test_a_busy_port_is_a_config_error() -> None:
    async with _engine(_settings("null")) as first:
        with pytest.raises(ConfigError, match="cannot listen"):
            await SimEngine(_settings("null", port=first.port)).start()


async def test_abort_request_endpoint_ends_a_request(client: SglangHttpClient) -> None:
    async with _engine(_settings("null")) as engine:
        request = {"text": "hi", "rid": "to-abort", "sampling_params": {"max_new_tokens": 100_000}}
        task = asyncio.create_task(client.generate(engine.url, request))
        # Past its prefill (a request aborted mid-prefill rightly answers with no tokens).
        await _until(lambda: engine.core.metrics.generation_tokens_total >= 1, what="a first token")
        async with aiohttp.ClientSession() as session:
            response = await session.post(engine.url + "/abort_request", json={"rid": "to-abort"})
            assert response.status == 200
        answer = await task
        assert answer["meta_info"]["finish_reason"]["type"] == "abort"
        assert answer["meta_info"]["completion_tokens"] == len(answer["output_ids"]) >= 1


async def test_cumulative_streaming_resends_the_output_so_far(client: SglangHttpClient) -> None:
    # SGLang's default without --incremental-streaming-output.
    async with _engine(_settings("null", incremental_streaming_output=False)) as engine:
        request = {"text": "hello", "sampling_params": {"max_new_tokens": 5}}
        chunks = [chunk async for chunk in client.generate_stream(engine.url, request)]
    assert [len(chunk["output_ids"]) for chunk in chunks] == [1, 2, 3, 4, 5]
    assert chunks[-1]["text"].startswith(chunks[0]["text"])
    assert chunks[-1]["meta_info"]["completion_tokens"] == 5
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"


class _ListSink:
    """An InstanceSampleSink that keeps what it gets; fails its first send on request."""

    def __init__(self, fail_first: bool) -> None:
        self.states: list[InstanceState] = []
        self._fail_next = fail_first

    async def send(self, state: InstanceState) -> None:
        if self._fail_next:
            self._fail_next = False
            raise ConnectionError("telemetry is down")
        self.states.append(state)


async def test_reporter_pushes_instance_state_periodically() -> None:
    sink = _ListSink(fail_first=True)
    settings = _settings("prefill", report_interval_ms=20, instance_id="p-0")
    async with _engine(settings, sample_sink=sink):
        await _until(lambda: len(sink.states) >= 3, what="three samples")
    state = sink.states[-1]
    assert state.instance_id == "p-0"
    assert state.phase is Phase.PREFILL
    assert state.gpu_key == "a100-80g"
    assert state.sm_clock_mhz == 1410
    assert state.kv_tokens_capacity > 0 and state.power_w > 0
    assert [s.observed_at_s for s in sink.states] == sorted(s.observed_at_s for s in sink.states)


async def test_client_maps_connection_failures(client: SglangHttpClient) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(EngineUnavailableError, match="cannot connect"):
        await client.generate(url, {"text": "x"})
    with pytest.raises(EngineUnavailableError):
        await client.metrics(url)
    with pytest.raises(EngineUnavailableError):
        async for _ in client.generate_stream(url, {"text": "x"}):
            pass


Handler = Callable[[aiohttp.web.Request], Awaitable[aiohttp.web.StreamResponse]]


@contextlib.asynccontextmanager
async def _fake_server(handler: Handler) -> AsyncIterator[str]:
    """A stand-in SGLang server answering every /generate with ``handler``."""
    app = aiohttp.web.Application()
    app.router.add_post("/generate", handler)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_client_reads_error_chunks_and_fastapi_errors(client: SglangHttpClient) -> None:
    async def error_chunk(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"text": "a", "meta_info": {}}\n\n')
        await response.write(b'data: {"error": {"message": "out of memory", "code": 500}}\n\n')
        await response.write(b"data: [DONE]\n\n")
        return response

    async with _fake_server(error_chunk) as url:
        received: list[dict[str, Any]] = []
        with pytest.raises(Exception, match="out of memory") as caught:
            async for chunk in client.generate_stream(url, {"text": "x"}):
                received.append(chunk)
        assert received == [{"text": "a", "meta_info": {}}]
        assert getattr(caught.value, "status", None) == 500

    async def fastapi_error(_request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        return aiohttp.web.json_response({"detail": "bad sampling params"}, status=422)

    async with _fake_server(fastapi_error) as url:
        with pytest.raises(EngineRequestError, match="bad sampling params"):
            await client.generate(url, {"text": "x"})

    async def truncated(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"text": "a"}\n\n')
        return response

    async with _fake_server(truncated) as url:
        with pytest.raises(EngineUnavailableError, match="DONE"):
            async for _ in client.generate_stream(url, {"text": "x"}):
                pass


async def test_a_stop_ends_the_request_early_and_frees_its_kv(client: SglangHttpClient) -> None:
    async with _engine(_settings("null")) as engine:
        request: dict[str, Any] = {"input_ids": [1000 + i for i in range(40)]}
        request["sampling_params"] = {"max_new_tokens": 30}
        free = await client.generate(engine.url, request)
        stop_id = free["output_ids"][4]
        request["sampling_params"] = {"max_new_tokens": 30, "stop_token_ids": [stop_id]}
        stopped = await client.generate(engine.url, request)
        stop_text = free["text"][len(free["text"]) // 2 :].split()[0]
        request["sampling_params"] = {"max_new_tokens": 30, "stop": stop_text}
        by_text = [chunk async for chunk in client.generate_stream(engine.url, request)]
        await _until(lambda: engine.core.kv_tokens_used == 0, what="the KV to be freed")
        assert engine.core.running_requests == 0
    assert stopped["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_id}
    assert stopped["output_ids"] == free["output_ids"][:5]
    assert stopped["text"] == free["text"][: len(stopped["text"])]  # without the stop token
    assert by_text[-1]["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_text}
    streamed_text = "".join(chunk["text"] for chunk in by_text)
    assert streamed_text == free["text"][: free["text"].find(stop_text)]
    assert by_text[-1]["meta_info"]["completion_tokens"] < 30
