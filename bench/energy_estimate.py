"""How close the router's energy-per-request estimate (engines that report none: real SGLang)
comes to the simulated engines' exact attribution, on a slice of the Azure conversation trace.

The same requests run three times through a 1P1D simulated stack (A100, Llama-3.1-8B): twice
with the engines reporting each request's energy (exact A and exact B) and once without, so the
router estimates it. Exact B against exact A is the noise floor (two live runs never time the
same); the estimate against exact A is the estimate's error on top of it.

    python bench/energy_estimate.py                  # 30 s of the trace at speedup 5
    python bench/energy_estimate.py --duration-s 60 --json out.json

Prints a table on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from voltana.sdk import GenerationSummary, VoltanaClient
from voltana.stack import SimStack, SimStackSettings
from voltana.workloads import TraceRequest, load_default_trace

PROMPT_TOKEN_ID = 1000


async def replay(
    requests: list[TraceRequest], speedup: float, engines_report_energy: bool, sample_ms: int
) -> list[GenerationSummary]:
    settings = SimStackSettings(
        prefill=1,
        decode=1,
        speedup=speedup,
        sample_interval_ms=sample_ms,
        snapshot_interval_ms=min(sample_ms, 100),
        engines_report_energy=engines_report_energy,
    )
    async with (
        SimStack(settings) as stack,
        VoltanaClient(stack.router_address, timeout_s=120.0) as client,
    ):
        await asyncio.sleep(0.5)  # counter readings before the first request
        started_s = time.monotonic()

        async def one(request: TraceRequest) -> GenerationSummary:
            await asyncio.sleep(
                max(0.0, started_s + request.arrival_s / speedup - time.monotonic())
            )
            result = await client.generate(
                input_ids=[PROMPT_TOKEN_ID] * request.input_tokens,
                max_new_tokens=request.output_tokens,
                ignore_eos=True,
                stream=False,
            )
            return result.summary

        return list(await asyncio.gather(*(one(r) for r in requests)))


def compare(reference: list[GenerationSummary], other: list[GenerationSummary]) -> dict[str, Any]:
    """Sums and per-request relative errors of ``other`` against ``reference``."""
    ref_total = [s.energy_j or 0.0 for s in reference]
    other_total = [s.energy_j or 0.0 for s in other]
    ref_active = [(s.energy_j or 0.0) - (s.idle_energy_j or 0.0) for s in reference]
    other_active = [(s.energy_j or 0.0) - (s.idle_energy_j or 0.0) for s in other]
    errors = sorted(abs(o - r) / r for r, o in zip(ref_total, other_total, strict=True) if r > 0)
    return {
        "total_ratio": sum(other_total) / sum(ref_total),
        "active_ratio": sum(other_active) / sum(ref_active),
        "request_error_p50": statistics.median(errors),
        "request_error_p90": errors[int(0.9 * (len(errors) - 1))],
        "missing": sum(1 for s in other if s.energy_j is None),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=30.0, help="trace seconds replayed")
    parser.add_argument("--speedup", type=float, default=5.0, help="simulated time speedup")
    parser.add_argument(
        "--sample-interval-ms", type=int, default=100, help="agents' NVML sampling period"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    requests = [r for r in load_default_trace() if r.arrival_s < args.duration_s]
    runs: dict[str, list[GenerationSummary]] = {}
    for name, report in (("exact A", True), ("estimate", False), ("exact B", True)):
        print(f"{name}: {len(requests)} requests ...", file=sys.stderr, flush=True)
        runs[name] = asyncio.run(replay(requests, args.speedup, report, args.sample_interval_ms))
    rows = {
        "exact B vs A (noise floor)": compare(runs["exact A"], runs["exact B"]),
        "estimate vs A": compare(runs["exact A"], runs["estimate"]),
    }
    gpu_ms = args.sample_interval_ms * args.speedup
    print(
        f"{len(requests)} requests, agents sample every {args.sample_interval_ms} ms wall "
        f"= {gpu_ms:g} ms of GPU time (speedup {args.speedup:g})"
    )
    print(f"{'':28} {'total':>7} {'active':>7} {'p50 err':>8} {'p90 err':>8} {'missing':>7}")
    for name, row in rows.items():
        print(
            f"{name:28} {row['total_ratio']:7.3f} {row['active_ratio']:7.3f} "
            f"{row['request_error_p50']:8.1%} {row['request_error_p90']:8.1%} {row['missing']:7d}"
        )
    if args.json:
        document = {"requests": len(requests), "settings": vars(args) | {"json": str(args.json)}}
        args.json.write_text(json.dumps(document | {"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
