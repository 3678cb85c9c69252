"""GetAggregates latency with many completions in the window, over gRPC, on a real Redis.

A throwaway ``redis-server`` and a telemetry service on it; 8 instances (4 prefill, 4 decode)
with GPU series; ``--completions`` request completions (each size in turn) with finish times
spread over the last ``--window-s`` seconds (3 h by default). Then, for each size:

- *first*: the first GetAggregates over the whole window, sent as soon as a telemetry process
  started on the filled store (a restart);
- *steady*: ``--calls`` more, each after ``--new-per-call`` new completions were reported
  (what a dashboard polling a live cluster sees): median and max.

The script runs against whichever ``voltana`` is on PYTHONPATH, so the same numbers can be
taken on an older checkout (``git archive main | tar -x -C /tmp/main``, then
``PYTHONPATH=/tmp/main python bench/aggregates_latency.py``).

    python bench/aggregates_latency.py [--completions 30000 --completions 100000] [--calls 10]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from voltana.contract.state import Phase
from voltana.rpc import RpcSecurity
from voltana.services.telemetry import (
    Completion,
    InstanceInfo,
    RedisTelemetryStore,
    TelemetryClient,
    TelemetryService,
    TelemetrySettings,
)
from voltana.services.telemetry.codec import encode_json

SECURITY = RpcSecurity(token="bench-aggregates-token-0123456789")
PREFILL = [f"prefill-{n}" for n in range(4)]
DECODE = [f"decode-{n}" for n in range(4)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = os.environ.get("VOLTANA_REDIS_SERVER") or shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: apt-get install redis-server")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, port


def completion(rng: random.Random, n: int, now_s: float, window_s: float) -> Completion:
    ok = rng.random() > 0.02
    return Completion(
        request_id=f"req-{n}",
        prefill_id=rng.choice(PREFILL),
        decode_id=rng.choice(DECODE),
        input_tokens=rng.randint(100, 4000),
        output_tokens=rng.randint(2, 500),
        ttft_ms=rng.uniform(50.0, 900.0),
        mean_itl_ms=rng.uniform(10.0, 60.0),
        ok=ok,
        finished_at_s=now_s - rng.uniform(0.0, window_s * 0.99),
        status="" if ok else "UNAVAILABLE",
        energy_j=rng.uniform(5.0, 300.0),
    )


async def load_completions(store: RedisTelemetryStore, completions: Sequence[Completion]) -> None:
    """Write the completions as ``record_completion`` stores them, in big pipelines (the
    completion log too where this version keeps one)."""
    log_key = getattr(store, "completion_log_key", None)
    redis: aioredis.Redis = store._redis
    for start in range(0, len(completions), 5000):
        async with redis.pipeline(transaction=False) as pipe:
            for item in completions[start : start + 5000]:
                text = encode_json(item)
                pipe.zadd(store.completions_key(), {text: item.finished_at_s})
                if log_key is not None:
                    pipe.xadd(log_key(), {"c": text})
            await pipe.execute()


async def measure(size: int, args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    rng = random.Random(size)
    options: dict[str, Any] = {
        "redis_url": redis_url,
        "redis_key_prefix": f"bench:{size}:{time.monotonic_ns()}:",
        "completions_cap": max(size + args.calls * args.new_per_call, 100_000),
        "security": SECURITY,
        "instance_ttl_s": 0.0,
    }
    if "aggregates_rate_per_s" in {f.name for f in dataclasses.fields(TelemetrySettings)}:
        options["aggregates_rate_per_s"] = 0.0  # measure the work, not the limit
    settings = TelemetrySettings(**options)
    # The store is filled first, as a telemetry process finds it when it (re)starts.
    now_s = time.time()
    store = RedisTelemetryStore.from_url(
        redis_url, clock=time.time, key_prefix=settings.redis_key_prefix
    )
    try:
        for index, instance_id in enumerate(PREFILL + DECODE):
            phase = Phase.PREFILL if instance_id in PREFILL else Phase.DECODE
            await store.register_instance(
                InstanceInfo(instance_id, phase, "a100-80g", gpu_index=index)
            )
            for minute in range(int(args.window_s // 60)):  # a GPU reading a minute
                ts_s = now_s - args.window_s + 60.0 * minute
                await store.put_gpu_sample(instance_id, ts_s, 1410, 250.0, 15_000.0 * minute)
        rows = [completion(rng, n, now_s, args.window_s) for n in range(size)]
        await load_completions(store, rows)
    finally:
        await store.close()
    async with (
        TelemetryService(settings) as service,
        TelemetryClient(service.address, security=SECURITY, timeout_s=300.0) as client,
    ):
        started = time.perf_counter()
        report = await client.window_report(args.window_s)
        first_s = time.perf_counter() - started
        assert report.cluster.finished >= size * 0.99, report.cluster.finished
        steady_s: list[float] = []
        next_id = size
        for _ in range(args.calls):
            for _ in range(args.new_per_call):
                await client.report_completion(
                    dataclasses.replace(
                        completion(rng, next_id, time.time(), 1.0), finished_at_s=time.time()
                    )
                )
                next_id += 1
            started = time.perf_counter()
            report = await client.window_report(args.window_s)
            steady_s.append(time.perf_counter() - started)
        return {
            "completions": size,
            "finished_in_window": report.cluster.finished,
            "first_ms": first_s * 1e3,
            "steady_median_ms": statistics.median(steady_s) * 1e3,
            "steady_max_ms": max(steady_s) * 1e3,
        }


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="voltana-bench-") as workdir:
        process, port = start_redis(Path(workdir))
        try:
            redis_url = f"redis://127.0.0.1:{port}/0"
            probe = aioredis.Redis.from_url(redis_url)
            for _ in range(100):
                try:
                    await probe.ping()
                    break
                except Exception:
                    await asyncio.sleep(0.05)
            await probe.aclose()
            print(
                f"GetAggregates over {args.window_s:g} s; {args.calls} steady calls, "
                f"{args.new_per_call} new completions before each"
            )
            print(
                f"{'completions':>12} {'first ms':>10} {'steady p50 ms':>14} {'steady max ms':>14}"
            )
            for size in args.completions or [30_000, 100_000]:
                row = await measure(size, args, redis_url)
                print(
                    f"{row['completions']:>12} {row['first_ms']:>10.1f} "
                    f"{row['steady_median_ms']:>14.1f} {row['steady_max_ms']:>14.1f}",
                    flush=True,
                )
        finally:
            process.terminate()
            process.wait(10)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--completions", type=int, action="append")
    parser.add_argument("--window-s", type=float, default=3 * 3600.0)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--new-per-call", type=int, default=20)
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
