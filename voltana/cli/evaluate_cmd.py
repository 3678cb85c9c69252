"""`voltana evaluate`: what would Voltana save on my trace, at which loads, against what?

The same evaluation as bench/energy.py, for one workload: find the load at which the fixed
maximum clock still meets the SLO (its SLO capacity), replay the workload at fractions of it,
and compare every policy with the best fixed clock pair in hindsight. A load at which the
baseline itself misses the SLO is reported as infeasible, never as a saving.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from voltana.cli.options import (
    add_clock_range_arg,
    add_cluster_shape_args,
    add_elastic_args,
    add_hardware_args,
    add_slo_args,
    cluster_shape_from_args,
    hardware_from_args,
    positive_int,
    slo_from_args,
)
from voltana.cli.outputs import check_output_path, report_stream, write_text
from voltana.cli.progress import RowProgress, format_duration
from voltana.errors import ConfigError
from voltana.policy.registry import policy_names
from voltana.sim.cluster import ClusterConfig
from voltana.sim.compare import build_suites, compare_policies
from voltana.sim.evaluate import (
    BASELINE,
    FEASIBLE_ATTAINMENT,
    LOADS,
    POLICIES,
    Row,
    Workload,
    format_matrix,
    scaled_workload,
    slo_capacity,
)
from voltana.workloads import load_workload

EPILOG = """\
examples:
  voltana evaluate --trace azure-conv
  voltana evaluate --trace my_trace.csv --gpu h100-80g --loads moderate,heavy --json out.json
  voltana evaluate --trace azure-code --ttft-slo-ms 500 --ttft-slo-per-1k-ms 250
  voltana evaluate --trace synthetic:poisson:rate=10,duration=120,input=100,output=215 \\
      --policy static-max --policy voltana --policy voltana-paper+full-range+voltana-router

Loads: light/moderate/heavy are 30/60/90% of the workload's SLO capacity on this cluster (the
largest rate multiplier at which static-max still attains 99% of the joint SLO).

Run time: every load replays the trace once per policy, and static-best sweeps fixed clock pairs;
with the defaults (2500 requests, 3 loads, 8 policies) a run takes on the order of 20 minutes
on one core. Progress, with an ETA, goes to stderr every few seconds; --max-requests, --loads
and --policy cut the work.
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="what each policy saves on a workload, at several loads, vs the best fixed clock",
        description="Find the workload's SLO capacity on the cluster, replay it at fractions of "
        "it, and compare the policies with static-max and the best fixed clocks in hindsight.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--trace",
        default="azure-conv",
        help="trace file, shipped trace name or synthetic:... (default: %(default)s)",
    )
    parser.add_argument(
        "--max-requests",
        type=positive_int,
        default=2500,
        help="requests replayed per run, from the start (default: %(default)s)",
    )
    add_hardware_args(parser)
    add_clock_range_arg(parser)
    cluster = parser.add_argument_group("cluster")
    add_cluster_shape_args(cluster)
    add_elastic_args(cluster)
    add_slo_args(parser)
    parser.add_argument(
        "--loads",
        default=",".join(LOADS),
        help=f"comma-separated load levels of {', '.join(LOADS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--policy",
        action="append",
        help=f"policy to compare, repeatable (default: {', '.join(POLICIES)}); any of "
        f"{', '.join(policy_names())}",
    )
    parser.add_argument("--json", metavar="OUT.json", help="write the rows as JSON ('-' = stdout)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.json:
        check_output_path(args.json, "--json")
    loads = [name.strip() for name in args.loads.split(",") if name.strip()]
    unknown = [name for name in loads if name not in LOADS]
    if unknown or not loads:
        raise ConfigError(f"--loads: unknown level(s) {unknown or ''}; valid: {', '.join(LOADS)}")
    hardware = hardware_from_args(args)
    num_prefill, num_decode, num_unified = cluster_shape_from_args(args)
    slo = slo_from_args(args)
    policies = list(args.policy or POLICIES)
    if policies[0] != BASELINE:
        policies = [BASELINE, *[p for p in policies if p != BASELINE]]
    config = ClusterConfig(
        hardware.gpu,
        hardware.model,
        num_prefill=num_prefill,
        num_decode=num_decode,
        num_unified=num_unified,
        slo=slo,
        allow_extrapolated_clocks=args.allow_extrapolated_clocks,
        engine_start_s=args.engine_start_s,
        released_gpu_w=args.released_gpu_w,
    )
    build_suites(  # bad names fail first
        policies,
        None,
        hardware.gpu,
        hardware.perf,
        slo,
        allow_extrapolated_clocks=args.allow_extrapolated_clocks,
    )
    load_workload(args.trace)  # so does a bad trace

    build = scaled_workload(args.trace, args.max_requests)
    workload = Workload(args.trace, args.trace, slo, build)
    print(
        f"finding the SLO capacity of static-max (about a dozen replays), then {len(loads)} "
        f"load(s) x {len(policies)} policies; progress every few seconds",
        file=sys.stderr,
    )
    started_s = time.monotonic()

    def probed(multiplier: float, attained: float) -> None:
        elapsed = format_duration(time.monotonic() - started_s)
        print(
            f"  x{multiplier:.3g} the trace's rate: {attained:.1%} attained ({elapsed})",
            file=sys.stderr,
            flush=True,
        )

    capacity = slo_capacity(workload, config, hardware.perf, on_probe=probed)
    if capacity <= 0:
        raise ConfigError(
            f"static-max misses {FEASIBLE_ATTAINMENT:.0%} of the SLO even at 1/64 of the "
            "trace's rate: every load is infeasible (loosen the SLO or add instances)"
        )
    print(f"SLO capacity: x{capacity:.3g} the trace's rate", file=sys.stderr)
    rows: list[Row] = []
    progress = RowProgress(len(loads))
    for load in loads:
        multiplier = capacity * LOADS[load]
        print(f"{load} (x{multiplier:.3g}) ...", file=sys.stderr)
        requests = build(multiplier)
        progress.start_row(f"{load}:", policies)
        _, results = compare_policies(
            policies, requests, config, hardware.perf, progress=progress.step
        )
        progress.end_row()
        rows.append(
            Row(
                args.trace,
                f"{hardware.gpu.key} {hardware.model.key} TP{hardware.model.tensor_parallel}",
                load,
                multiplier,
                len(requests),
                results,
            )
        )
    out = report_stream(args.json)
    print(format_matrix(rows), file=out)
    for row in rows:
        if not row.feasible:
            continue
        if any(r["policy"] == "voltana" for r in row.results) and any(
            r["policy"].startswith("static-best") for r in row.results
        ):
            verdict = row.verdict()
            gain = verdict["savings_vs_static_best"]
            print(
                f"{row.load}: voltana {'meets' if verdict['slo_ok'] else 'MISSES'} the SLO bar, "
                + (
                    f"{100 * gain:+.1f}% energy vs static-best with its router, "
                    if gain is not None
                    else ""
                )
                + f"{'beats' if verdict['beats_static_best'] else 'does NOT beat'} it"
                + (
                    f", {verdict['lead_points']:+.1f} points vs {verdict['strongest_ablation']}"
                    if verdict["lead_points"] is not None
                    else ""
                ),
                file=out,
            )
    if args.json:
        document = {
            "config": {
                "trace": args.trace,
                "gpu": hardware.gpu.key,
                "model": hardware.model.key,
                "tp": hardware.model.tensor_parallel,
                "prefill": num_prefill,
                "decode": num_decode,
                "unified": num_unified,
                "slo": {
                    "ttft_ms": slo.ttft_ms,
                    "itl_ms": slo.itl_ms,
                    "ttft_ms_per_1k_tokens": slo.ttft_ms_per_1k_tokens,
                },
                "capacity_multiplier": capacity,
                "allow_extrapolated_clocks": args.allow_extrapolated_clocks,
                "engine_start_s": args.engine_start_s,
                "released_gpu_w": args.released_gpu_w,
            },
            "rows": [row.as_dict() for row in rows],
        }
        write_text(args.json, json.dumps(document, indent=2), "--json")
    return 0
