"""Policy comparison: static-max, static-best, voltana-paper and voltana side by side.

On both Azure traces, at three load levels, on A100 and H100, for 2P2D Llama-3.1-8B (TP1) and
Qwen3-32B (TP2). Load levels are set per configuration so that the trace's busy periods (the 90th
percentile of prompt tokens per second over 10 s windows; both traces are bursty, the code trace
idles most of the time) use a fraction of the static-max cluster's prefill capacity (the
bottleneck for these prompt-heavy traces): light 30%, moderate 60%, near saturation 90%. The rate
multiplier each implies is printed.

    python bench/energy.py [--quick] [--max-requests 2500] [--json OUT.json] [--jobs 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from voltana.hardware import get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.sim.cluster import ClusterConfig
from voltana.sim.compare import compare_policies
from voltana.workloads import load_workload

TRACES = Path(__file__).resolve().parents[1].parent / "shared/data/traces"
POLICIES = ("static-max", "static-best", "voltana-paper", "voltana")
LOADS = {"light": 0.30, "moderate": 0.60, "near-saturation": 0.90}
WINDOW_S = 10.0
MODELS = {"llama-3.1-8b": 1, "qwen3-32b": 2}  # model -> tensor-parallel degree
GPUS = ("a100-80g", "h100-80g")


def prefill_capacity_tokens_per_s(perf: AnalyticalPerformanceModel, chunk_tokens: int) -> float:
    clock = perf.gpu.default_sm_clock_mhz
    return chunk_tokens / perf.prefill_iteration(chunk_tokens, clock).latency_s


def run_config(job: dict[str, Any]) -> dict[str, Any]:
    gpu = get_gpu(job["gpu"])
    model = get_model(job["model"]).with_tensor_parallel(job["tp"])
    perf = AnalyticalPerformanceModel.for_hardware(gpu, model)
    config = ClusterConfig(gpu, model)
    trace = load_workload(job["trace"])
    windows = np.bincount(
        np.array([int(r.arrival_s // WINDOW_S) for r in trace]),
        weights=np.array([r.input_tokens for r in trace], dtype=float),
    )
    token_rate = float(np.quantile(windows, 0.9)) / WINDOW_S
    capacity = config.num_prefill * prefill_capacity_tokens_per_s(
        perf, config.chunked_prefill_tokens
    )
    rate_scale = job["load_fraction"] * capacity / token_rate
    requests = load_workload(
        job["trace"],
        rate_scale=rate_scale,
        duration_s=job["duration_s"],
        max_requests=job["max_requests"],
    )
    started = time.perf_counter()
    _, rows = compare_policies(POLICIES, requests, config, perf, seed=job["seed"])
    return {
        **{k: v for k, v in job.items() if k != "trace"},
        "trace": Path(job["trace"]).stem,
        "rate_scale": rate_scale,
        "requests": len(requests),
        "wall_s": time.perf_counter() - started,
        "results": rows,
    }


def format_rows(configs: list[dict[str, Any]]) -> str:
    header = (
        f"{'trace':<22} {'gpu':<9} {'model':<13} {'load':<16} {'x rate':>6}  {'policy':<22}"
        f" {'energy kJ':>9} {'saving':>7} {'TTFT att':>8} {'ITL att':>8} {'SLO att':>8}"
    )
    lines = [header, "-" * len(header)]
    for config in configs:
        for n, row in enumerate(config["results"]):
            prefix = (
                f"{config['trace']:<22} {config['gpu']:<9} {config['model']:<13} "
                f"{config['load']:<16} {config['rate_scale']:>6.2f}"
                if n == 0
                else " " * 70
            )
            lines.append(
                f"{prefix}  {row['policy']:<22} {row['energy_j'] / 1e3:>9.1f} "
                f"{100 * row['energy_savings_vs_first']:>6.1f}% {100 * row['ttft_attainment']:>7.2f}%"
                f" {100 * row['itl_attainment']:>7.2f}% {100 * row['slo_attainment']:>7.2f}%"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", default=str(TRACES), help="folder with the Azure traces")
    parser.add_argument(
        "--max-requests", type=int, default=2500, help="requests replayed per run (from the start)"
    )
    parser.add_argument("--duration-s", type=float, help="cap on the replay length per run")
    parser.add_argument("--quick", action="store_true", help="A100, Llama-3.1-8B only")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args()
    traces = sorted(Path(args.traces).glob("azure_llm_2023_*.csv"))
    if not traces:
        print(f"no azure_llm_2023_*.csv traces in {args.traces}", file=sys.stderr)
        return 2
    gpus = GPUS[:1] if args.quick else GPUS
    models = dict(list(MODELS.items())[:1]) if args.quick else MODELS
    jobs = [
        {
            "trace": str(trace),
            "gpu": gpu,
            "model": model,
            "tp": tp,
            "load": load,
            "load_fraction": fraction,
            "duration_s": args.duration_s,
            "max_requests": args.max_requests,
            "seed": args.seed,
        }
        for trace, gpu, (model, tp), (load, fraction) in itertools.product(
            traces, gpus, models.items(), LOADS.items()
        )
    ]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        configs = []
        for n, config in enumerate(pool.map(run_config, jobs), start=1):
            configs.append(config)
            print(
                f"[{n}/{len(jobs)}] {config['trace']} {config['gpu']} {config['model']} "
                f"{config['load']} done in {config['wall_s']:.0f} s",
                file=sys.stderr,
            )
    print(format_rows(configs))
    print(f"\n{len(jobs)} configurations in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"configs": configs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
