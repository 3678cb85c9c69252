"""Voltana's live stack against two real SGLang servers (unified mode, tiny model, on CPU).

Redis, telemetry, the controller (policy voltana), per server a node agent on a simulated GPU
and the reporter of ``voltana serve instance --mode unified``, and the router (real_stack.py).
Through the router's gRPC door (SDK) and HTTP door (OpenAI completions and chat, SGLang
/generate): finish reasons, stop strings, abort on client cancel reaching the real server, the
real engine's state in telemetry and the controller's decisions, energy per request, a short
``voltana bench`` replay that must complete every request, and last a server killed with
``kill -9`` under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import RedisServer

from real_engine.conftest import (
    HEALTH_TIMEOUT_S,
    MAX_RUNNING_REQUESTS,
    MAX_TOTAL_TOKENS,
    SERVED_MODEL_NAME,
    RealSglang,
    start_sglang_servers,
)
from real_engine.real_stack import SECURITY, STACK_TOKEN, RealStack
from voltana.contract.state import Phase
from voltana.engine import SglangHttpClient
from voltana.rpc import create_channel
from voltana.sdk import GenerationSummary, VoltanaClient
from voltana.sdk.errors import InvalidRequestError, VoltanaClientError
from voltana.v1 import common_pb2, controller_pb2, controller_pb2_grpc

pytestmark = [
    pytest.mark.real_engine,
    pytest.mark.timeout(1200),
    pytest.mark.asyncio(loop_scope="module"),
]

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "the quick brown fox"
VOCAB_SIZE = 512  # make_tiny_model.py
# Where the bench run's figures go (scripts/test-real-engines prints them); default: tmp.
REPORT_DIR_ENV = "VOLTANA_REAL_ENGINE_REPORT_DIR"


@dataclass
class Stack:
    servers: list[RealSglang]
    stack: RealStack
    client: VoltanaClient
    engine: SglangHttpClient
    http: aiohttp.ClientSession

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]


@pytest.fixture(scope="module")
def real_servers(
    sglang_python: str,
    cuda_stub_dir: Path,
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[RealSglang]]:
    """Two servers of their own (the last test kills one), started side by side."""
    servers = start_sglang_servers(
        2, sglang_python, tiny_model, cuda_stub_dir, tmp_path_factory.mktemp("stack-sglang")
    )
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
async def live(real_servers: list[RealSglang], redis_server: RedisServer) -> AsyncIterator[Stack]:
    stack = RealStack(
        [server.url for server in real_servers],
        redis_server.url,
        SERVED_MODEL_NAME,
        vocab_size=VOCAB_SIZE,
    )
    await stack.start()
    try:
        async with (
            VoltanaClient(stack.router_address, timeout_s=120.0) as client,
            SglangHttpClient(request_timeout_s=120.0, health_timeout_s=HEALTH_TIMEOUT_S) as engine,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http,
        ):
            yield Stack(real_servers, stack, client, engine, http)
    finally:
        await stack.stop()


async def _metric(live: Stack, url: str, name: str) -> float:
    return float((await live.engine.metrics(url)).get(name, 0.0))


async def _until(check: Any, what: str, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def _until_idle(live: Stack) -> None:
    async def idle() -> bool:
        for url in live.urls:
            if await _metric(live, url, "sglang:num_running_reqs"):
                return False
        return True

    await _until(idle, "the real servers to run nothing")


def _stop_string(text: str) -> str | None:
    """Printable ASCII from the middle of ``text`` (the tiny model's weights are random)."""
    for start in range(1, len(text) - 1):
        piece = text[start : start + 2]
        if piece.isascii() and piece.isprintable() and piece.strip():
            return piece
    return None


async def _sse(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    assert response.status == 200, await response.text()
    events = [e for e in (await response.read()).split(b"\n\n") if e.strip()]
    assert events[-1] == b"data: [DONE]"
    return [json.loads(event[len(b"data: ") :]) for event in events[:-1]]


# ---- the doors -------------------------------------------------------------------------------


async def test_the_sdk_door_streams_and_collects_with_energy(live: Stack) -> None:
    result = await live.client.generate(
        PROMPT, max_new_tokens=8, ignore_eos=True, temperature=0.0, stream=False
    )
    summary = result.summary
    assert (summary.finish_reason, summary.completion_tokens) == ("length", 8)
    assert summary.prefill_instance == summary.decode_instance in live.stack.instance_ids
    assert summary.prompt_tokens > 0 and summary.ttft_ms > 0
    # The simulated GPU's meter, through the agent, telemetry and the router's estimate.
    assert summary.energy_j is not None and summary.energy_j > 0

    # The same greedy request straight to a real server gives the same tokens.
    direct = await live.engine.generate(
        live.urls[0],
        {"text": PROMPT, "sampling_params": {"max_new_tokens": 8, "temperature": 0.0,
                                             "ignore_eos": True}},
    )  # fmt: skip
    assert list(result.token_ids) == direct["output_ids"]

    tokens: list[int] = []
    last: GenerationSummary | None = None
    async for event in live.client.generate(
        PROMPT, max_new_tokens=12, ignore_eos=True, temperature=0.0
    ):
        if isinstance(event, GenerationSummary):
            last = event
        else:
            assert event.index == len(tokens)
            tokens.extend(event.token_ids)
    assert last is not None and last.finish_reason == "length"
    assert len(tokens) == last.completion_tokens == 12
    assert tokens[:8] == direct["output_ids"]
    assert last.energy_j is not None and last.energy_j > 0


async def test_the_http_door_completions_chat_and_generate(live: Stack) -> None:
    url, http = live.stack.http_url, live.http
    # A stop string the greedy output holds.
    reference = await live.engine.generate(
        live.urls[0],
        {"text": PROMPT, "sampling_params": {"max_new_tokens": 30, "temperature": 0.0,
                                             "ignore_eos": True}},
    )  # fmt: skip
    stop = _stop_string(reference["text"])
    assert stop is not None, reference["text"]
    body = {
        "model": SERVED_MODEL_NAME,
        "prompt": PROMPT,
        "max_tokens": 30,
        "temperature": 0.0,
        "ignore_eos": True,
        "stop": [stop],
    }
    async with http.post(f"{url}/v1/completions", json=body) as response:
        assert response.status == 200, await response.text()
        plain = await response.json()
    choice = plain["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert stop not in choice["text"] and reference["text"].startswith(choice["text"])
    assert plain["usage"]["energy_j"] > 0

    async with http.post(f"{url}/v1/completions", json={**body, "stream": True}) as response:
        chunks = await _sse(response)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and set(finishes[:-1]) <= {None}
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == choice["text"]

    no_stop = {key: value for key, value in body.items() if key != "stop"}
    async with http.post(
        f"{url}/v1/completions", json={**no_stop, "max_tokens": 5, "stream": True}
    ) as response:
        chunks = await _sse(response)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"

    chat = {
        "model": SERVED_MODEL_NAME,
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 6,
        "ignore_eos": True,
    }
    async with http.post(f"{url}/v1/chat/completions", json=chat) as response:
        assert response.status == 200, await response.text()
        answer = await response.json()
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 6
    assert answer["choices"][0]["message"]["role"] == "assistant"
    async with http.post(f"{url}/v1/chat/completions", json={**chat, "stream": True}) as response:
        chunks = await _sse(response)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"

    generate = {"text": PROMPT, "sampling_params": {"max_new_tokens": 7, "ignore_eos": True}}
    async with http.post(f"{url}/generate", json=generate) as response:
        assert response.status == 200, await response.text()
        generated = await response.json()
    assert generated["meta_info"]["finish_reason"] == {"type": "length", "length": 7}
    assert len(generated["output_ids"]) == 7
    async with http.post(f"{url}/generate", json={**generate, "stream": True}) as response:
        chunks = await _sse(response)
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"
    assert chunks[-1]["meta_info"]["completion_tokens"] == 7


async def test_token_ids_outside_the_vocabulary_are_refused_before_they_reach_sglang(
    live: Stack,
) -> None:
    """One such id kills a real SGLang server (0.5.23): the router (--vocab-size) refuses it."""
    with pytest.raises(InvalidRequestError, match="vocabulary"):
        await live.client.generate(input_ids=[5, VOCAB_SIZE + 100], stream=False)
    async with live.http.post(
        f"{live.stack.http_url}/generate",
        json={"input_ids": [5, VOCAB_SIZE], "sampling_params": {"max_new_tokens": 2}},
    ) as response:
        assert response.status == 400, await response.text()
    for url in live.urls:
        assert await live.engine.health(url)
    ok = await live.client.generate(input_ids=[5, VOCAB_SIZE - 1], max_new_tokens=2, stream=False)
    assert ok.summary.completion_tokens >= 1


# ---- abort -----------------------------------------------------------------------------------


async def _aborted(live: Stack) -> float:
    return sum([await _metric(live, url, "sglang:num_aborted_requests_total") for url in live.urls])


async def test_a_client_that_goes_away_aborts_the_request_on_the_real_server(
    live: Stack,
) -> None:
    await _until_idle(live)
    before = await _aborted(live)
    # The SDK: the stream is closed after a few tokens.
    stream = live.client.generate(PROMPT, max_new_tokens=1500, ignore_eos=True)
    seen = 0
    async for _event in stream:
        seen += 1
        if seen == 3:
            break
    await stream.aclose()

    async def aborted(count: float) -> Any:
        async def check() -> bool:
            return await _aborted(live) >= count

        return check

    await _until(await aborted(before + 1), "SGLang to abort the SDK's request")
    await _until_idle(live)

    # The HTTP door: the client disconnects mid-stream.
    body = {
        "model": SERVED_MODEL_NAME,
        "prompt": PROMPT,
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    async with live.http.post(f"{live.stack.http_url}/v1/completions", json=body) as response:
        assert response.status == 200
        lines = 0
        async for _line in response.content:
            lines += 1
            if lines > 6:
                break
        response.close()
    await _until(await aborted(before + 2), "SGLang to abort the HTTP door's request")
    await _until_idle(live)
    assert await _aborted(live) == before + 2


# ---- state in telemetry and the controller -------------------------------------------------


async def test_telemetry_carries_the_real_engines_state_and_the_controller_decides_clocks(
    live: Stack,
) -> None:
    assert live.stack.client is not None
    telemetry = live.stack.client
    # A long request, so the running gauge (refreshed every 40 decode steps) shows it.
    task = asyncio.create_task(
        live.client.generate(PROMPT, max_new_tokens=1200, ignore_eos=True, stream=False)
    )
    busy: list[Any] = []

    async def running() -> bool:
        snapshot = await telemetry.snapshot()
        busy.extend(
            state for i in live.stack.instance_ids
            if (state := snapshot.instance(i)) is not None and state.running_batch > 0
        )  # fmt: skip
        return bool(busy)

    await _until(running, "telemetry to show a running request", timeout_s=60.0)
    result = await task
    assert result.summary.completion_tokens == 1200
    state = busy[-1]
    assert state.phase is Phase.UNIFIED
    assert state.running_batch == 1 and state.kv_tokens_used > 0
    assert state.kv_tokens_capacity == MAX_TOTAL_TOKENS
    assert state.max_running_requests == MAX_RUNNING_REQUESTS
    # The simulated GPU beside it, sampled by its node agent.
    assert state.sm_clock_mhz > 0 and state.power_w > 0 and state.energy_j > 0
    assert state.gpu_key == "a100-80g"

    async def latencies() -> bool:
        snapshot = await telemetry.snapshot()
        found = snapshot.instance(result.summary.decode_instance)
        return found is not None and found.recent_itl_ms is not None

    await _until(latencies, "the real ITL histogram in telemetry")

    assert live.stack.controller is not None
    controller_address = live.stack.controller.address

    async def controller_status() -> controller_pb2.GetStatusResponse:
        channel = create_channel(controller_address, security=SECURITY)
        try:
            return await controller_pb2_grpc.ControllerServiceStub(channel).GetStatus(
                controller_pb2.GetStatusRequest(), timeout=10.0
            )
        finally:
            await channel.close()

    async def leases_held() -> bool:
        # A lease renewal can miss its deadline on a host the CPU servers saturate; the next
        # one takes it again.
        listed = (await controller_status()).instances
        return len(listed) == len(live.stack.instance_ids) and all(i.lease_held for i in listed)

    await _until(leases_held, "the controller's leases on both instances")
    status = await controller_status()
    assert status.unified_policy_name == "voltana"
    listed = {instance.instance_id: instance for instance in status.instances}
    assert set(listed) == set(live.stack.instance_ids)
    for instance in listed.values():
        assert instance.phase == common_pb2.PHASE_UNIFIED
        assert instance.recent_decisions, instance.instance_id
        assert instance.recent_decisions[0].sm_clock_mhz > 0
        assert instance.target_sm_clock_mhz > 0 and instance.lease_held


# ---- a bench run -----------------------------------------------------------------------------


async def test_a_bench_replay_through_the_router_completes_every_request(
    live: Stack, tmp_path: Path
) -> None:
    """`voltana bench` (the CLI, its own process) replays 40 Poisson arrivals at 2/s."""
    await _until_idle(live)
    assert live.stack.telemetry is not None
    token_file = tmp_path / "token"
    token_file.write_text(STACK_TOKEN)
    out_dir = Path(os.environ.get(REPORT_DIR_ENV) or tmp_path)
    out = out_dir / "real-stack-bench.json"
    requests = 40
    command = [
        sys.executable, "-m", "voltana.cli.main", "bench",
        "--target", live.stack.router_address,
        "--telemetry", live.stack.telemetry.address,
        "--token-file", str(token_file),
        "--trace", f"synthetic:poisson:rate=2,count={requests},input=32,output=16,seed=1",
        "--vocab-size", str(VOCAB_SIZE),
        "--ttft-slo-ms", "5000", "--itl-slo-ms", "500",
        "--request-timeout-s", "120",
        "--policy-label", "voltana-real-sglang",
        "--json", str(out), "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=300)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    report = json.loads(out.read_text())
    print(f"\nvoltana bench on real SGLang ({time.monotonic() - started:.0f} s):\n{text}")
    print(json.dumps(report, indent=1)[:3000])
    assert _completed(report) == requests, text


def _completed(report: Any) -> int:
    """The completed count of bench's JSON (one run)."""
    if isinstance(report, dict):
        for key in ("completed", "requests_completed"):
            if isinstance(report.get(key), int):
                return int(report[key])
        for value in report.values():
            found = _completed(value)
            if found >= 0:
                return found
    if isinstance(report, list):
        for value in report:
            found = _completed(value)
            if found >= 0:
                return found
    return -1


# ---- health ejection (last: it kills a server) -----------------------------------------------


async def test_a_server_killed_under_load_fails_its_requests_explicitly_and_new_ones_go_on(
    live: Stack,
) -> None:
    await _until_idle(live)
    assert live.stack.client is not None
    victim_index = 1
    victim_id = live.stack.instance_id(victim_index)
    survivor_id = live.stack.instance_id(0)
    before = (await live.stack.client.window_report(600.0)).cluster

    async def stream_one(index: int, received: dict[int, int]) -> tuple[str, str, str]:
        """(outcome, finish reason or error class, instance)."""
        instance = ""
        try:
            async for event in live.client.generate(
                f"{PROMPT} {index}", max_new_tokens=1000, ignore_eos=True
            ):
                if isinstance(event, GenerationSummary):
                    return "ok", event.finish_reason, event.decode_instance
                received[index] = received.get(index, 0) + len(event.token_ids)
        except VoltanaClientError as error:
            return "error", type(error).__name__, instance
        return "lost", "", instance  # a stream that ended without a summary

    received: dict[int, int] = {}
    loaded = [asyncio.create_task(stream_one(i, received)) for i in range(6)]

    # Every stream has tokens (so every request is placed and running), and the victim has
    # some of them.
    async def all_streaming() -> bool:
        return len(received) == len(loaded)

    await _until(all_streaming, "every stream's first tokens", timeout_s=60.0)
    assert await _metric(live, live.urls[victim_index], "sglang:num_requests_total") >= 0
    live.servers[victim_index].kill()
    killed_at = time.monotonic()
    # New requests go to the survivor (passive ejection on the broken streams; /health probes).
    fresh = [
        await live.client.generate(f"after {i}", max_new_tokens=4, ignore_eos=True, stream=False)
        for i in range(4)
    ]
    assert {r.summary.decode_instance for r in fresh} == {survivor_id}
    assert all(r.summary.finish_reason == "length" for r in fresh)
    outcomes = await asyncio.gather(*loaded)
    print(f"\nkill -9 under load: {outcomes}, new requests served "
          f"{time.monotonic() - killed_at:.1f} s after the kill")  # fmt: skip
    assert all(outcome != "lost" for outcome, _, _ in outcomes), outcomes
    failed = [o for o in outcomes if o[0] == "error"]
    assert failed, f"no request was running on the killed server: {outcomes}"
    assert all(kind in {"UnavailableError", "ServerError"} for _, kind, _ in failed), failed
    assert all(instance == survivor_id for outcome, _, instance in outcomes if outcome == "ok")

    # Nothing silently lost: telemetry recorded each request, the failed ones as failed.
    async def recorded() -> bool:
        report = (await live.stack.client.window_report(600.0)).cluster  # type: ignore[union-attr]
        return report.finished - before.finished >= len(loaded) + len(fresh)

    await _until(recorded, "telemetry's records of every request")
    after = (await live.stack.client.window_report(600.0)).cluster
    assert after.finished - before.finished == len(loaded) + len(fresh)
    assert after.failed - before.failed == len(failed)
    # Ejected; or already gone, when telemetry expired the silent instance (its TTL, 10 s).
    assert live.stack.router is not None
    cluster = live.stack.router.cluster
    assert victim_id in cluster.ejected or victim_id not in cluster.endpoints
    with contextlib.suppress(Exception):
        live.servers[victim_index].stop()
