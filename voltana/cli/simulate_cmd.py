"""`voltana simulate`: replay a workload through a simulated PD cluster under several policies."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from voltana.cli.options import (
    add_clock_range_arg,
    add_cluster_shape_args,
    add_elastic_args,
    add_hardware_args,
    add_slo_args,
    add_slo_class_arg,
    add_workload_shaping_args,
    cluster_shape_from_args,
    cluster_shape_label,
    hardware_from_args,
    positive_float,
    positive_int,
    slo_from_args,
    with_slo_class_from_args,
    workload_from_args,
)
from voltana.cli.outputs import check_output_path, check_plot_path, report_stream, write_text
from voltana.cli.progress import ProgressBar
from voltana.errors import ConfigError
from voltana.perf.model import calibrated_clock_range_mhz
from voltana.policy.registry import policy_names, router_names
from voltana.report import format_table, headline_lines
from voltana.sim.cluster import ClusterConfig, LoopTiming
from voltana.sim.compare import build_suites, compare_policies
from voltana.workloads import summarize_workload

EPILOG = """\
examples:
  voltana simulate --policy static-max --policy static:1005
  voltana simulate --trace azure-conv --rate-scale 2 --policy static-max \\
      --policy static:1005/1410 --json out.json --plot out.png
  voltana simulate --trace synthetic:poisson:rate=20,duration=120 --gpu h100-80g

The trace may be an Azure LLM trace CSV, a Mooncake JSONL file (either optionally gzipped), a
trace shipped with Voltana by name (azure-conv, azure-code: the Azure LLM inference traces 2023),
or synthetic:PROCESS:KEY=VALUE,... (see the README). Without --trace an embedded 10-minute slice
of the Azure conversation trace runs.
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "simulate",
        help="replay a workload trace through a simulated PD cluster",
        description="Replay a workload trace through a simulated prefill/decode cluster, once per "
        "--policy, and report energy and SLO attainment side by side.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--trace",
        help="trace file (Azure CSV or Mooncake JSONL, optionally .gz), a shipped trace by name "
        "(azure-conv, azure-code), or synthetic:... (default: the embedded azure-conv-10min)",
    )
    add_workload_shaping_args(parser)
    add_hardware_args(parser)
    add_clock_range_arg(parser)
    cluster = parser.add_argument_group("cluster")
    add_cluster_shape_args(cluster)
    add_elastic_args(cluster)
    cluster.add_argument(
        "--max-running-requests",
        type=positive_int,
        default=1024,
        help="decode batch limit per instance (default: %(default)s)",
    )
    cluster.add_argument(
        "--chunked-prefill-tokens",
        type=positive_int,
        default=8192,
        help="prefill token budget per iteration (default: %(default)s)",
    )
    cluster.add_argument(
        "--clock-delay-ms",
        type=float,
        help="delay before a clock change takes effect (default: the GPU's, e.g. 20 on A100)",
    )
    cluster.add_argument(
        "--control-interval-ms",
        type=positive_float,
        default=50.0,
        help="how often frequency policies decide (default: %(default)s)",
    )
    cluster.add_argument(
        "--ideal-loop",
        action="store_true",
        help="give every decision the exact current state with no delay, instead of the live "
        "loop's reports, watches, RPCs and placement notices (for comparison only)",
    )
    add_slo_args(parser)
    add_slo_class_arg(parser)
    policies = parser.add_argument_group("policies")
    policies.add_argument(
        "--policy",
        action="append",
        metavar="NAME",
        help=f"policy to run, repeatable, in order: {', '.join(policy_names())} "
        "(default: static-max)",
    )
    policies.add_argument(
        "--router",
        help=f"override every policy's router: {', '.join(router_names())}",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    output = parser.add_argument_group("output")
    output.add_argument(
        "--json",
        metavar="OUT.json",
        help="write the results as JSON ('-' = stdout; the table then goes to stderr)",
    )
    output.add_argument(
        "--plot",
        metavar="OUT.png",
        help="plot clock, power and queue over time (.png, .pdf, .svg, ...)",
    )
    output.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Output paths first: a bad one must not cost a whole run.
    if args.json:
        check_output_path(args.json, "--json")
    if args.plot:
        check_plot_path(args.plot)
    hardware = hardware_from_args(args)
    num_prefill, num_decode, num_unified = cluster_shape_from_args(args)
    slo = slo_from_args(args)
    if args.clock_delay_ms is not None and args.clock_delay_ms < 0:
        raise ConfigError("--clock-delay-ms must be >= 0")
    names = args.policy or ["static-max"]
    suites = build_suites(
        names,
        args.router,
        hardware.gpu,
        hardware.perf,
        slo,
        args.max_running_requests,
        allow_extrapolated_clocks=args.allow_extrapolated_clocks,
    )
    requests = with_slo_class_from_args(args, workload_from_args(args), slo, seed=args.seed)
    config = ClusterConfig(
        gpu=hardware.gpu,
        model=hardware.model,
        num_prefill=num_prefill,
        num_decode=num_decode,
        num_unified=num_unified,
        slo=slo,
        chunked_prefill_tokens=args.chunked_prefill_tokens,
        max_running_requests=args.max_running_requests,
        clock_change_delay_ms=args.clock_delay_ms,
        control_interval_ms=args.control_interval_ms,
        loop=LoopTiming.ideal() if args.ideal_loop else LoopTiming(),
        allow_extrapolated_clocks=args.allow_extrapolated_clocks,
        engine_start_s=args.engine_start_s,
        released_gpu_w=args.released_gpu_w,
    )
    workload = summarize_workload(requests)
    print(
        f"workload: {args.trace or 'embedded azure_llm_2023_conv 10 min'} x{args.rate_scale:g} "
        f"- {workload.describe()}",
        file=sys.stderr,
    )
    print(
        f"cluster: {cluster_shape_label(num_prefill, num_decode, num_unified)} {hardware.gpu.display_name}, {hardware.model.key} "
        f"TP{hardware.model.tensor_parallel}; SLO TTFT {slo.ttft_ms:g} ms, ITL {slo.itl_ms:g} ms",
        file=sys.stderr,
    )

    def progress(name: str) -> Any:
        return None if args.quiet else ProgressBar(f"{name:>16}").update

    results, rows = compare_policies(
        names,
        requests,
        config,
        hardware.perf,
        router=args.router,
        seed=args.seed,
        progress=progress,
        suites=suites,
    )
    print(format_table(rows), file=report_stream(args.json))
    for line in headline_lines(rows):
        print(line, file=report_stream(args.json))
    if args.json:
        document = {
            "config": {
                "trace": args.trace,
                "rate_scale": args.rate_scale,
                "start_s": args.start_s,
                "duration_s": args.duration_s,
                "max_requests": args.max_requests,
                "gpu": hardware.gpu.key,
                "model": hardware.model.key,
                "tp": hardware.model.tensor_parallel,
                "prefill": num_prefill,
                "decode": num_decode,
                "unified": num_unified,
                "ttft_slo_ms": slo.ttft_ms,
                "itl_slo_ms": slo.itl_ms,
                "router": args.router,
                "seed": args.seed,
                "max_running_requests": args.max_running_requests,
                "chunked_prefill_tokens": args.chunked_prefill_tokens,
                "clock_delay_ms": config.clock_delay_ms,
                "ttft_slo_per_1k_ms": slo.ttft_ms_per_1k_tokens,
                "loop": "ideal" if args.ideal_loop else "live",
                "control_interval_ms": args.control_interval_ms,
                "allow_extrapolated_clocks": args.allow_extrapolated_clocks,
                "engine_start_s": args.engine_start_s,
                "released_gpu_w": args.released_gpu_w,
                "calibrated_clock_range_mhz": list(calibrated_clock_range_mhz(hardware.perf)),
                "workload": workload.to_dict(),
            },
            "results": rows,
        }
        write_text(args.json, json.dumps(document, indent=2), "--json")
    if args.plot:
        from voltana.sim.plot import plot_results

        plot_results(results, Path(args.plot))
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0
