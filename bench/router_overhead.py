"""Router overhead: throughput, CPU and TTFT of the front door, and how long decisions take.

1. Throughput (router_throughput.py): Voltana's router over gRPC and over HTTP, the same PD
   request straight to the (sped-up) simulated engines, and SGLang's router in front of them,
   at rising Poisson rates until each saturates, with 4 and 256 output tokens: sustained rate,
   TTFT overhead (p50/p99) at the lowest rate, CPU per request of each process.
2. Placement decision time (``RoutingPolicy.place``) on synthetic cluster snapshots with 4, 16
   and 64 instances (half prefill, half decode) for every router.
3. Frequency decision time (``FrequencyPolicy.decide``) of the dynamic policies for one control
   tick over 64 instances.

    python bench/router_overhead.py [--quick] [--speedup 1000] [--rates 10,50,100,...]
    PYTHONPATH=/path/to/other/checkout python bench/router_overhead.py   # its code, same bench
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
from router_throughput import report, throughput

from voltana.contract.state import ClusterSnapshot, InstanceState, Phase, RequestSpec, SloTarget
from voltana.hardware import get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.policy.base import FrequencyPolicy, PolicyContext, RoutingPolicy
from voltana.policy.registry import build_router, build_suite

INSTANCE_COUNTS = (4, 16, 64)
FREQUENCY_INSTANCES = 64
PROMPT_TOKENS = 256
# Request rates per output length (a 256-token request costs the simulated engines and the
# client far more, so the host saturates at a lower rate whatever the router).
RATES_RPS = {4: (10, 25, 50, 100, 150, 200, 300, 400, 600), 256: (5, 10, 20, 30, 40, 60, 80)}
QUICK_RATES_RPS = {4: (10, 50, 100, 200, 400), 256: (5, 10, 20, 40)}


def percentiles(values: Sequence[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(values, dtype=float), [50, 99])
    return float(p50), float(p99)


# ---- 1. throughput sweep: see router_throughput.py ------------------------------------------


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
    parser.add_argument("--speedup", type=float, default=1000.0, help="engine speedup")
    parser.add_argument("--gpu", default="a100-80g")
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--policy", default="static-max", help="policy of stack and router")
    parser.add_argument(
        "--rates",
        help=f"request rates to step through, req/s (default per output length: {RATES_RPS})",
    )
    parser.add_argument("--step-s", type=float, default=4.0, help="seconds of arrivals per step")
    parser.add_argument(
        "--output-tokens", default="4,256", help="output lengths to sweep (default: %(default)s)"
    )
    parser.add_argument(
        "--saturation-factor",
        type=float,
        default=10.0,
        help="a step saturates when its p99 TTFT exceeds this times direct's p99 at the lowest "
        "rate (default: %(default)s)",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"rates {QUICK_RATES_RPS}, 2 s steps (~3 min)"
    )
    parser.add_argument(
        "--sequential",
        type=int,
        default=300,
        help="requests one at a time per router for its CPU per request, at 4 output tokens "
        "(a quarter of that at 16 or more; 0 = skip; default: %(default)s)",
    )
    parser.add_argument("--no-throughput", action="store_true", help="decision times only")
    parser.add_argument("--no-decisions", action="store_true", help="throughput only")
    parser.add_argument("--placements", type=int, default=2000, help="place() calls per cell")
    parser.add_argument("--ticks", type=int, default=200, help="control ticks per policy")
    args = parser.parse_args()
    # A killed run still stops its child processes (their context managers unwind).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    gpu = get_gpu(args.gpu)
    perf = AnalyticalPerformanceModel.for_hardware(gpu, get_model(args.model))
    context = PolicyContext(gpu, perf, SloTarget())

    if not args.no_throughput:
        table_of_rates = QUICK_RATES_RPS if args.quick else RATES_RPS
        given = tuple(float(r) for r in args.rates.split(",")) if args.rates else None

        def rates(tokens: int) -> tuple[float, ...]:
            return given or table_of_rates.get(tokens, table_of_rates[4])

        step_s = 2.0 if args.quick else args.step_s
        output_tokens = [int(n) for n in args.output_tokens.split(",")]
        print(
            f"== throughput: {PROMPT_TOKENS}-token prompts, 1 prefill + 1 decode engine "
            f"x{args.speedup:g}, policy {args.policy}, Poisson steps of {step_s:g} s; rates "
            + "; ".join(
                f"{n} tokens: {', '.join(f'{r:g}' for r in rates(n))}" for n in output_tokens
            )
        )
        sweeps = asyncio.run(
            throughput(
                speedup=args.speedup,
                policy=args.policy,
                output_tokens=output_tokens,
                rates_rps=rates,
                step_s=step_s,
                warmup=5 if args.quick else 20,
                saturation_factor=args.saturation_factor,
                sequential_requests=lambda tokens: (
                    (args.sequential // (2 if args.quick else 1)) * 4 // max(4, min(tokens, 16))
                ),
            )
        )
        for result in sweeps:
            print(f"\n-- {result.max_new_tokens} output tokens")
            print(report(result, rates(result.max_new_tokens)[0], table))
        print()
    if args.no_decisions:
        return 0

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
