"""Simulator speed: replay the whole Azure conversation trace on 2P2D A100 / Llama-3.1-8B.

Prints simulated seconds per wall-clock second (goal: >= 200x on one core) and, with --profile,
where the time goes.

    python bench/simulator_speed.py [--trace PATH|NAME] [--policy static-max] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time

from voltana.hardware import get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.sim.cluster import ClusterConfig
from voltana.sim.compare import run_policy
from voltana.workloads import load_workload

# Shipped with Voltana (voltana/data), so the benchmark runs on a fresh clone.
DEFAULT_TRACE = "azure-conv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=DEFAULT_TRACE, help="trace file or shipped name")
    parser.add_argument("--policy", default="static-max")
    parser.add_argument("--rate-scale", type=float, default=1.0)
    parser.add_argument("--profile", action="store_true", help="print the top functions by time")
    args = parser.parse_args()
    load_started = time.perf_counter()
    requests = load_workload(args.trace, rate_scale=args.rate_scale)
    load_s = time.perf_counter() - load_started
    gpu, model = get_gpu("a100-80g"), get_model("llama-3.1-8b")
    perf = AnalyticalPerformanceModel.for_hardware(gpu, model)
    config = ClusterConfig(gpu, model)
    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    result = run_policy(args.policy, requests, config, perf)
    if profiler:
        profiler.disable()
    wall_s = time.perf_counter() - started
    simulated_s = result.end_s - result.start_s
    tokens = sum(r.request.output_tokens for r in result.records if r.completed)
    print(f"trace: {args.trace} ({len(requests)} requests, loaded in {load_s:.2f} s)")
    print(f"policy: {args.policy}; simulated {simulated_s:.0f} s in {wall_s:.2f} s wall")
    print(f"speed: {simulated_s / wall_s:.0f}x real time ({tokens / wall_s:,.0f} output tokens/s)")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    sys.exit(main())
