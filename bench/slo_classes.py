"""SLO classes, offline: does a share of loose requests let voltana save more?

Each row replays one workload on A100 / Llama-3.1-8B three times: `static-max` and `voltana`
with every request at the cluster SLO ("tight"), and `voltana` with a share of the requests
(30 % by default) in a `batch` class whose ITL target is 4x looser ("mixed"). The mixed run's
attainment is given per class, each against its own targets. Loads are the evaluation matrix'
moderate multipliers (docs/evaluation.md), plus one heavier row on 2 prefill + 4 decode
instances, where the load needs several decode instances and the classes get their own.

    python bench/slo_classes.py [--fraction 0.3] [--itl-factor 4] [--ttft-factor 1]
                                [--itl-ms MS] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

from voltana.hardware import get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.report import summarize
from voltana.sim.cluster import ClusterConfig
from voltana.sim.evaluate import workloads
from voltana.sim.run import run_policy
from voltana.workloads.classes import SloClass, with_slo_class


@dataclass(frozen=True)
class Row:
    workload: str
    multiplier: float
    num_decode: int = 2


ROWS = (
    Row("azure-conv", 1.09),
    Row("lmsys-like", 6.75),
    Row("sharegpt-like", 3.68),
    Row("bursty", 0.213),
    Row("ramp", 3.39),
    Row("azure-conv", 2.5, num_decode=4),
)


def run_row(row: Row, slo_class: SloClass, itl_ms: float | None) -> dict[str, Any]:
    gpu, model = get_gpu("a100-80g"), get_model("llama-3.1-8b")
    perf = AnalyticalPerformanceModel.for_hardware(gpu, model)
    workload = workloads(duration_s=300.0)[row.workload]
    slo = workload.slo if itl_ms is None else replace(workload.slo, itl_ms=itl_ms)
    config = ClusterConfig(gpu, model, num_decode=row.num_decode, slo=slo)
    tight = workload.build(row.multiplier)
    mixed = with_slo_class(tight, slo_class, slo)
    runs = {}
    for label, policy, requests in (
        ("static-max", "static-max", tight),
        ("voltana tight", "voltana", tight),
        ("voltana mixed", "voltana", mixed),
    ):
        result = run_policy(policy, requests, config, perf)
        runs[label] = summarize(result.outcome(), slo)
    baseline_j = runs["static-max"]["energy_j"]
    return {
        "workload": row.workload,
        "multiplier": row.multiplier,
        "cluster": f"2P{row.num_decode}D",
        "requests": len(tight),
        "batch_requests": sum(1 for r in mixed if r.slo is not None),
        "runs": {
            label: {
                "energy_j": summary["energy_j"],
                "saving_vs_static_max": 1.0 - summary["energy_j"] / baseline_j,
                "slo_attainment": summary["slo_attainment"],
                "slo_classes": summary.get("slo_classes"),
            }
            for label, summary in runs.items()
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.3, help="share in the batch class")
    parser.add_argument("--itl-factor", type=float, default=4.0, help="batch ITL / cluster ITL")
    parser.add_argument("--ttft-factor", type=float, default=1.0, help="batch TTFT / cluster")
    parser.add_argument(
        "--itl-ms",
        type=float,
        help="the cluster's ITL target instead of each workload's (e.g. 16: one that binds)",
    )
    parser.add_argument("--json", metavar="OUT.json", help="write the rows as JSON")
    args = parser.parse_args()
    slo_class = SloClass("batch", args.fraction, args.itl_factor, args.ttft_factor)
    print(
        f"batch class: {100 * args.fraction:g} % of requests, ITL x{args.itl_factor:g}, "
        f"TTFT x{args.ttft_factor:g}; A100 Llama-3.1-8B"
        + (f"; cluster ITL {args.itl_ms:g} ms" if args.itl_ms else ""),
        flush=True,
    )
    header = (
        f"{'row':<28} {'static-max':>10} {'tight':>16} {'mixed':>16} {'gain':>6}"
        f"  {'mixed attainment default / batch':>32}"
    )
    print(header, flush=True)
    rows = []
    for row in ROWS:
        started = time.perf_counter()
        result = run_row(row, slo_class, args.itl_ms)
        rows.append(result)
        runs = result["runs"]
        tight, mixed = runs["voltana tight"], runs["voltana mixed"]
        classes = mixed["slo_classes"] or {}
        attained = " / ".join(
            f"{100 * classes[name]['slo_attainment']:.2f} %"
            for name in ("default", "batch")
            if name in classes
        )
        print(
            f"{row.workload + ' x' + format(row.multiplier, 'g') + ' ' + result['cluster']:<28}"
            f" {runs['static-max']['slo_attainment'] * 100:>9.2f}%"
            f" {100 * tight['saving_vs_static_max']:>6.1f}% / {100 * tight['slo_attainment']:.2f}"
            f" {100 * mixed['saving_vs_static_max']:>6.1f}% / {100 * mixed['slo_attainment']:.2f}"
            f" {100 * (mixed['saving_vs_static_max'] - tight['saving_vs_static_max']):>+5.1f}"
            f"  {attained:>32}   ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    print("(saving vs static-max / SLO attainment %; gain: mixed minus tight, points)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(rows, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
