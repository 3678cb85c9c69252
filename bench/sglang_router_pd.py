"""SGLang's own router in front of the simulated engines: what it adds to TTFT.

Starts a prefill and a decode simulated engine (and a null-mode one for regular mode) in this
process, the SGLang model gateway (`pip install sglang-router`) as a child process in PD mode and
in regular mode, then sends the same streaming `/generate` request alternately through the
router and straight to the engines (PD: to both instances with one bootstrap room, as the
router does), and reports TTFT (first streamed token) and mean ITL of both paths. The engines
are sped up so their own work is small next to what is measured.

Each mode runs twice: with one keep-alive client connection, and with a fresh connection per
request (both paths alike). The router leaves Nagle's algorithm on for its client connections
and often writes the response headers and the first event separately; over a kept-alive
connection the client (in interactive mode) delays its ACK of the headers by up to 40 ms, and
Nagle holds the first event until that ACK. A fresh connection starts in quick-ACK mode, so it
shows the router's own cost. Real engines send their headers when a request arrives and the
first token after the real TTFT, so the stall there is at most 40 ms minus the engine's TTFT.

    python bench/sglang_router_pd.py [--requests 200] [--speedup 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import itertools
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from voltana.engine import SimEngine, SimEngineSettings


@dataclass(frozen=True)
class Timing:
    ttft_ms: float
    mean_itl_ms: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def timed_stream(response: aiohttp.ClientResponse, started: float) -> Timing:
    token_times: list[float] = []
    async for raw in response.content:
        if raw.startswith(b"data:") and b"[DONE]" not in raw:
            token_times.append(time.perf_counter())
    if response.status != 200 or not token_times:
        raise RuntimeError(f"request failed: HTTP {response.status}")
    gaps = [b - a for a, b in itertools.pairwise(token_times)]
    mean_itl_ms = statistics.fmean(gaps) * 1000 if gaps else float("nan")
    return Timing((token_times[0] - started) * 1000, mean_itl_ms)


async def through_router(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Timing:
    started = time.perf_counter()
    async with session.post(url + "/generate", json=body) as response:
        return await timed_stream(response, started)


async def direct_pd(
    session: aiohttp.ClientSession, prefill: SimEngine, decode: SimEngine, body: dict[str, Any]
) -> Timing:
    pd_body = {
        **body,
        "bootstrap_host": prefill.bootstrap_host,
        "bootstrap_port": prefill.bootstrap_port,
        "bootstrap_room": random.getrandbits(63),
    }
    started = time.perf_counter()

    async def prefill_call() -> None:
        async with session.post(prefill.url + "/generate", json=pd_body) as response:
            await response.read()

    prefill_task = asyncio.create_task(prefill_call())
    async with session.post(decode.url + "/generate", json=pd_body) as response:
        timing = await timed_stream(response, started)
    await prefill_task
    return timing


async def direct_single(
    session: aiohttp.ClientSession, engine: SimEngine, body: dict[str, Any]
) -> Timing:
    started = time.perf_counter()
    async with session.post(engine.url + "/generate", json=body) as response:
        return await timed_stream(response, started)


@contextlib.asynccontextmanager
async def sglang_router(worker_args: Sequence[str]) -> AsyncIterator[str]:
    """The SGLang router as a child process; yields its URL once it answers a request."""
    port = free_port()
    command = [
        sys.executable, "-m", "sglang_router.launch_router",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warn", *worker_args,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    probe = {"input_ids": [1000, 1001], "sampling_params": {"max_new_tokens": 1}}
    try:
        deadline = time.monotonic() + 60.0
        async with aiohttp.ClientSession() as session:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the SGLang router exited with {process.returncode}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.post(url + "/generate", json=probe) as response:
                        if response.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError("the SGLang router did not become ready in 60 s")
                await asyncio.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def summary(label: str, timings: list[Timing]) -> tuple[float, str]:
    ttft = sorted(t.ttft_ms for t in timings)
    p50 = statistics.median(ttft)
    p90 = ttft[int(0.9 * (len(ttft) - 1))]
    itl = statistics.median(t.mean_itl_ms for t in timings)
    return p50, f"  {label:<28} TTFT p50 {p50:7.2f} ms  p90 {p90:7.2f} ms  ITL p50 {itl:6.2f} ms"


async def run(args: argparse.Namespace) -> None:
    body = {
        "input_ids": list(range(1000, 1000 + args.prompt_tokens)),
        "sampling_params": {"max_new_tokens": args.max_new_tokens, "ignore_eos": True},
        "stream": True,
    }
    settings = {"speedup": args.speedup, "host": "127.0.0.1"}
    prefill = SimEngine(SimEngineSettings(mode="prefill", **settings))
    decode = SimEngine(SimEngineSettings(mode="decode", **settings))
    single = SimEngine(SimEngineSettings(mode="null", **settings))
    for engine in (prefill, decode, single):
        await engine.start()
    try:
        pd_workers = [
            "--pd-disaggregation",
            "--prefill", prefill.url, str(prefill.bootstrap_port),
            "--decode", decode.url,
        ]  # fmt: skip
        print(
            f"{args.requests} requests per path, prompt {args.prompt_tokens} tokens, "
            f"{args.max_new_tokens} output tokens, engines x{args.speedup:g}"
        )
        for fresh in (False, True):
            connections = "a fresh connection per request" if fresh else "one keep-alive connection"
            connector = aiohttp.TCPConnector(force_close=fresh)
            async with aiohttp.ClientSession(connector=connector) as session:
                async with sglang_router(pd_workers) as router_url:
                    direct, routed = await interleave(
                        args,
                        lambda: direct_pd(session, prefill, decode, body),
                        lambda: through_router(session, router_url, body),
                    )
                report(f"PD mode, {connections}", direct, routed)
                async with sglang_router(["--worker-urls", single.url]) as router_url:
                    direct, routed = await interleave(
                        args,
                        lambda: direct_single(session, single, body),
                        lambda: through_router(session, router_url, body),
                    )
                report(f"regular mode, {connections}", direct, routed)
    finally:
        for engine in (single, decode, prefill):
            await engine.stop()


async def interleave(
    args: argparse.Namespace, direct: Any, routed: Any
) -> tuple[list[Timing], ...]:
    for _ in range(args.warmup):
        await direct()
        await routed()
    direct_timings, routed_timings = [], []
    # Alternating, so drift (GC, other load) hits both paths alike; back to back, as a busy
    # client sends them.
    for _ in range(args.requests):
        direct_timings.append(await direct())
        routed_timings.append(await routed())
    return direct_timings, routed_timings


def report(mode: str, direct: list[Timing], routed: list[Timing]) -> None:
    print(f"{mode}:")
    direct_p50, direct_line = summary("direct to the engines", direct)
    routed_p50, routed_line = summary("through the SGLang router", routed)
    print(direct_line)
    print(routed_line)
    print(f"  router adds {routed_p50 - direct_p50:+.2f} ms TTFT (p50)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--speedup", type=float, default=1000.0)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    args = parser.parse_args()
    if importlib.util.find_spec("sglang_router") is None:
        print("needs the SGLang router: pip install sglang-router", file=sys.stderr)
        raise SystemExit(2)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
