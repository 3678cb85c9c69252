"""Router overhead: what routing through Voltana adds to TTFT, and how long decisions take.

1. TTFT through the router (SDK → router → prefill+decode engines) versus the same PD request
   sent straight to the same simulated engines with the SGLang client, one request at a time,
   with the engines sped up so that their own work is negligible: the difference is the
   router's cost (one gRPC hop, validation, placement, relaying the stream).
2. Placement decision time (``RoutingPolicy.place``) on synthetic cluster snapshots with 4, 16
   and 64 instances (half prefill, half decode) for every router.
3. Frequency decision time (``FrequencyPolicy.decide``) of the dynamic policies for one control
   tick over 64 instances.

    python bench/router_overhead.py [--requests 200] [--speedup 1000] [--gpu a100-80g]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from voltana.engine import SglangHttpClient
from voltana.hardware import get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.policy.base import FrequencyPolicy, PolicyContext, RoutingPolicy
from voltana.policy.registry import build_router, build_suite
from voltana.policy.state import ClusterSnapshot, InstanceState, Phase, RequestSpec, SloTarget
from voltana.sdk import TokenEvent, VoltanaClient
from voltana.stack import SimStack, SimStackSettings

INSTANCE_COUNTS = (4, 16, 64)
FREQUENCY_INSTANCES = 64
PROMPT_TOKENS = 256
MAX_NEW_TOKENS = 4


def percentiles(values: Sequence[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(values, dtype=float), [50, 99])
    return float(p50), float(p99)


# ---- 1. TTFT through the router versus straight to the engines -------------------------------


async def direct_ttft_ms(http: SglangHttpClient, stack: SimStack, prompt: list[int]) -> float:
    prefill, decode = stack.instances[0].info(), stack.instances[1].info()
    started = time.perf_counter()
    stream = http.generate_pd(
        prefill.engine_url,
        decode.engine_url,
        prefill.bootstrap_host,
        prefill.bootstrap_port,
        {
            "input_ids": prompt,
            "sampling_params": {"max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True},
        },
    )
    ttft_ms = float("nan")
    async for chunk in stream:
        if ttft_ms != ttft_ms and chunk.get("output_ids", chunk.get("text")):
            ttft_ms = (time.perf_counter() - started) * 1000.0
    return ttft_ms


async def router_ttft_ms(client: VoltanaClient, prompt: list[int]) -> float:
    started = time.perf_counter()
    ttft_ms = float("nan")
    async for event in client.generate(
        input_ids=prompt, max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True
    ):
        if ttft_ms != ttft_ms and isinstance(event, TokenEvent):
            ttft_ms = (time.perf_counter() - started) * 1000.0
    return ttft_ms


async def measure_router_overhead(
    requests: int, speedup: float, gpu_key: str
) -> tuple[list[float], list[float]]:
    settings = SimStackSettings(
        prefill=1, decode=1, gpu_key=gpu_key, policy="static-max", speedup=speedup
    )
    direct: list[float] = []
    routed: list[float] = []
    async with (
        SimStack(settings) as stack,
        VoltanaClient(stack.router_address) as client,
        SglangHttpClient() as http,
    ):
        prompt = list(range(1000, 1000 + PROMPT_TOKENS))
        for _ in range(20):  # warm up connections and code paths
            await direct_ttft_ms(http, stack, prompt)
            await router_ttft_ms(client, prompt)
        # Interleaved, so drift (GC, other load) hits both paths alike.
        for _ in range(requests):
            direct.append(await direct_ttft_ms(http, stack, prompt))
            routed.append(await router_ttft_ms(client, prompt))
    return direct, routed


# ---- 2. placement decision time --------------------------------------------------------------


def synthetic_snapshot(
    instances: int, context: PolicyContext, rng: random.Random, now_s: float
) -> ClusterSnapshot:
    capacity = context.perf.kv_capacity_tokens()
    gpu_key = context.gpu.key
    clock = context.gpu.default_sm_clock_mhz
    prefill: dict[str, InstanceState] = {}
    decode: dict[str, InstanceState] = {}
    for i in range(instances // 2):
        queue = rng.randint(0, 4)
        prefill[f"prefill-{i}"] = InstanceState(
            f"prefill-{i}",
            Phase.PREFILL,
            gpu_key,
            clock,
            queue_len=queue,
            queued_tokens=queue * rng.randint(200, 4000),
            oldest_wait_ms=rng.uniform(0, 200) if queue else 0.0,
            running_prefill_tokens=rng.choice((0, rng.randint(256, 8192))),
            arrival_rate_rps=rng.uniform(0, 10),
            observed_at_s=now_s,
            last_activity_s=now_s,
        )
        batch = rng.randint(0, 200)
        decode[f"decode-{i}"] = InstanceState(
            f"decode-{i}",
            Phase.DECODE,
            gpu_key,
            clock,
            running_batch=batch,
            kv_tokens_used=min(capacity, batch * rng.randint(300, 2500)),
            kv_tokens_capacity=capacity,
            max_running_requests=256,
            recent_itl_ms=rng.uniform(8, 40),
            remaining_output_tokens=batch * rng.randint(10, 300),
            observed_at_s=now_s,
            last_activity_s=now_s,
        )
    return ClusterSnapshot(now_s=now_s, prefill=prefill, decode=decode)


def routers(context: PolicyContext) -> dict[str, Callable[[], RoutingPolicy]]:
    return {
        "round-robin": lambda: build_router("round-robin", context),
        "least-loaded": lambda: build_router("least-loaded", context),
        "EcoRoute (voltana-paper)": lambda: build_suite("voltana-paper", context).router,
        "voltana": lambda: build_suite("voltana", context).router,
    }


def time_placements(
    make_router: Callable[[], RoutingPolicy], instances: int, context: PolicyContext, calls: int
) -> list[float]:
    rng = random.Random(instances)
    snapshots = [synthetic_snapshot(instances, context, rng, 1000.0 + i) for i in range(32)]
    policy = make_router()
    timings_us: list[float] = []
    for call in range(calls):
        snapshot = snapshots[call % len(snapshots)]
        # Arrivals 10 ms apart on the snapshot's clock, as a live router would see them.
        now_s = snapshot.now_s + call * 0.01
        snapshot = ClusterSnapshot(now_s, snapshot.prefill, snapshot.decode)
        request = RequestSpec(
            input_tokens=rng.randint(100, 4000),
            max_output_tokens=rng.randint(16, 512),
            slo=context.slo,
            arrival_s=now_s,
        )
        started = time.perf_counter_ns()
        policy.place(request, snapshot)
        timings_us.append((time.perf_counter_ns() - started) / 1000.0)
    return timings_us


# ---- 3. frequency decision time --------------------------------------------------------------


def time_frequency_ticks(
    policy_name: str, context: PolicyContext, ticks: int
) -> tuple[list[float], list[float]]:
    """Per-decision times (µs) and per-tick times (ms) over FREQUENCY_INSTANCES instances."""
    suite = build_suite(policy_name, context)
    rng = random.Random(7)
    per_decision_us: list[float] = []
    per_tick_ms: list[float] = []
    for tick in range(ticks):
        snapshot = synthetic_snapshot(FREQUENCY_INSTANCES, context, rng, 1000.0 + tick * 0.05)
        pairs: list[tuple[FrequencyPolicy, InstanceState]] = [
            *((suite.prefill, s) for s in snapshot.prefill.values()),
            *((suite.decode, s) for s in snapshot.decode.values()),
        ]
        tick_started = time.perf_counter_ns()
        for policy, state in pairs:
            started = time.perf_counter_ns()
            policy.decide(state, context.slo, snapshot.now_s)
            per_decision_us.append((time.perf_counter_ns() - started) / 1000.0)
        per_tick_ms.append((time.perf_counter_ns() - tick_started) / 1e6)
    return per_decision_us, per_tick_ms


# ---- report ----------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="measured requests per path")
    parser.add_argument("--speedup", type=float, default=1000.0, help="engine speedup")
    parser.add_argument("--gpu", default="a100-80g")
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--placements", type=int, default=2000, help="place() calls per cell")
    parser.add_argument("--ticks", type=int, default=200, help="control ticks per policy")
    args = parser.parse_args()

    gpu = get_gpu(args.gpu)
    perf = AnalyticalPerformanceModel.for_hardware(gpu, get_model(args.model))
    context = PolicyContext(gpu, perf, SloTarget())

    print(
        f"== TTFT: router vs direct to the engines ({args.requests} sequential requests each, "
        f"{PROMPT_TOKENS}-token prompt, {MAX_NEW_TOKENS} new tokens, engines x{args.speedup:g})"
    )
    direct, routed = asyncio.run(measure_router_overhead(args.requests, args.speedup, args.gpu))
    d50, d99 = percentiles(direct)
    r50, r99 = percentiles(routed)
    print(
        table(
            ["path", "TTFT p50 (ms)", "TTFT p99 (ms)"],
            [
                ["direct (SGLang client, PD)", f"{d50:.2f}", f"{d99:.2f}"],
                ["through the router (SDK)", f"{r50:.2f}", f"{r99:.2f}"],
                ["router overhead", f"{r50 - d50:+.2f}", f"{r99 - d99:+.2f}"],
            ],
        )
    )
    print(f"   mean overhead {statistics.fmean(routed) - statistics.fmean(direct):+.2f} ms\n")

    print(f"== placement decision time, µs per place() (p50 / p99 over {args.placements} calls)")
    rows = []
    for name, make in routers(context).items():
        cells = [name]
        for count in INSTANCE_COUNTS:
            p50, p99 = percentiles(time_placements(make, count, context, args.placements))
            cells.append(f"{p50:.1f} / {p99:.1f}")
        rows.append(cells)
    print(table(["router", *(f"{n} instances" for n in INSTANCE_COUNTS)], rows))

    print(
        f"\n== frequency decision time at {FREQUENCY_INSTANCES} instances "
        f"({FREQUENCY_INSTANCES // 2} prefill + {FREQUENCY_INSTANCES // 2} decode, {args.ticks} ticks)"
    )
    rows = []
    for name in ("voltana-paper", "voltana"):
        decisions, ticks = time_frequency_ticks(name, context, args.ticks)
        dp50, dp99 = percentiles(decisions)
        tp50, tp99 = percentiles(ticks)
        rows.append([name, f"{dp50:.1f} / {dp99:.1f}", f"{tp50:.2f} / {tp99:.2f}"])
    print(table(["policy", "µs per decide() p50 / p99", "ms per tick p50 / p99"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
