"""`voltana model`: the performance model's predictions, for checking against real hardware."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from voltana.cli.options import Hardware, add_hardware_args, hardware_from_args, positive_int
from voltana.cli.outputs import STDOUT, check_output_path, write_text
from voltana.errors import ConfigError
from voltana.hardware import GPU_CATALOG, MODEL_CATALOG
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.perf.model import IterationEstimate
from voltana.policy.registry import parse_clock_mhz

EPILOG = """\
examples:
  voltana model --gpu h100-80g --phase decode --batch 64 --context-tokens 1024 --sweep-clocks
  voltana model --gpu a100-80g --phase prefill --tokens 2048 --clock-mhz 1005
  voltana model --list

The energy-optimal clock is always that of a sweep over every supported clock, also when
--clock-mhz prints one row.
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "model",
        help="print the performance model's latency, power and energy per token",
        description="Predicted iteration latency (ms), per-GPU power (W) and energy per token (J) "
        "of one prefill or decode iteration, at one clock or across every supported clock.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_hardware_args(parser, default_gpu="h100-80g")
    parser.add_argument(
        "--phase",
        choices=("prefill", "decode"),
        default="decode",
        help="which iteration to model (default: %(default)s)",
    )
    parser.add_argument(
        "--batch", type=positive_int, default=64, help="decode batch size (default: 64)"
    )
    parser.add_argument(
        "--context-tokens",
        type=positive_int,
        default=1024,
        help="decode: mean KV tokens per request (default: 1024)",
    )
    parser.add_argument(
        "--tokens", type=positive_int, default=2048, help="prefill: prompt tokens (default: 2048)"
    )
    clocks = parser.add_mutually_exclusive_group()
    clocks.add_argument("--clock-mhz", help="SM clock (default: the GPU's default clock)")
    clocks.add_argument("--sweep-clocks", action="store_true", help="one row per supported clock")
    parser.add_argument("--json", metavar="OUT.json", help="write the rows as JSON ('-' = stdout)")
    parser.add_argument(
        "--list",
        action="store_true",
        help="list the catalog's GPU and model keys (what --gpu and --model take) and exit",
    )
    parser.set_defaults(handler=run)


def catalog_lines() -> list[str]:
    """The GPU and model catalogs, one key per line, as --gpu and --model take them."""
    lines = ["GPUs (--gpu):"]
    for key, gpu in GPU_CATALOG.items():
        clocks = gpu.supported_sm_clocks_mhz
        lines.append(
            f"  {key:<14} {gpu.display_name}, SM clocks {clocks[0]}-{clocks[-1]} MHz "
            f"(default {gpu.default_sm_clock_mhz}), TDP {gpu.tdp_w:g} W"
        )
    lines.append("models (--model):")
    for key, model in MODEL_CATALOG.items():
        lines.append(
            f"  {key:<14} {model.param_count / 1e9:.1f} B parameters, {model.num_layers} "
            f"layers, context {model.max_context_tokens} tokens"
        )
    lines.append("others: --model-config CONFIG_JSON (Hugging Face config), --profile PROFILE.csv")
    return lines


def _row(hardware: Hardware, args: argparse.Namespace, clock_mhz: int) -> dict[str, Any]:
    perf = hardware.perf
    tp = hardware.model.tensor_parallel
    estimate: IterationEstimate
    if args.phase == "decode":
        estimate = perf.decode_iteration(args.batch, args.batch * args.context_tokens, clock_mhz)
        tokens = args.batch
    else:
        estimate = perf.prefill_iteration(args.tokens, clock_mhz)
        tokens = args.tokens
    return {
        "clock_mhz": clock_mhz,
        "latency_ms": estimate.latency_s * 1e3,
        "power_w": estimate.power_w,
        "energy_per_token_j": estimate.energy_j * tp / tokens,
        # At TDP the GPU's power limiter runs it below the locked clock.
        "power_limited": estimate.power_w >= hardware.gpu.tdp_w,
    }


def run(args: argparse.Namespace) -> int:
    if args.list:
        print("\n".join(catalog_lines()))
        return 0
    if args.json:
        check_output_path(args.json, "--json")
    hardware = hardware_from_args(args)
    gpu = hardware.gpu
    context_tokens = hardware.model.max_context_tokens
    tokens = args.tokens if args.phase == "prefill" else args.context_tokens
    if tokens > context_tokens:
        flag = "--tokens" if args.phase == "prefill" else "--context-tokens"
        raise ConfigError(
            f"{flag} {tokens} exceeds {hardware.model.key}'s context of {context_tokens} tokens"
        )
    if args.phase == "decode":
        capacity = hardware.perf.kv_capacity_tokens()
        if args.batch * args.context_tokens > capacity:
            raise ConfigError(
                f"batch {args.batch} x {args.context_tokens} context tokens exceeds the KV cache "
                f"({capacity} tokens on {gpu.key})"
            )
    if args.sweep_clocks:
        clocks = list(gpu.supported_sm_clocks_mhz)
    elif args.clock_mhz is not None:
        clocks = [parse_clock_mhz(args.clock_mhz, gpu)]
    else:
        clocks = [gpu.default_sm_clock_mhz]
    rows = [_row(hardware, args, clock) for clock in clocks]
    # The optimum is the sweep's, whichever clocks are printed: one row is not its own optimum.
    sweep = (
        rows
        if args.sweep_clocks
        else [_row(hardware, args, c) for c in gpu.supported_sm_clocks_mhz]
    )
    best = min(sweep, key=lambda row: row["energy_per_token_j"])
    perf = hardware.perf
    # Measured profiles carry no voltage curve; the analytical model's knee is its calibration.
    knee_mhz = (
        gpu.clamp_sm_clock_mhz(perf.voltage_curve.knee_clock_mhz)
        if isinstance(perf, AnalyticalPerformanceModel)
        else None
    )
    for row in rows:
        row["energy_optimal"] = row["clock_mhz"] == best["clock_mhz"]
        row["voltage_knee"] = row["clock_mhz"] == knee_mhz
    workload = (
        f"decode batch {args.batch} x {args.context_tokens} ctx"
        if args.phase == "decode"
        else f"prefill {args.tokens} tokens"
    )
    document = {
        "gpu": gpu.key,
        "model": hardware.model.key,
        "tp": hardware.model.tensor_parallel,
        "phase": args.phase,
        "batch": args.batch if args.phase == "decode" else None,
        "context_tokens": args.context_tokens if args.phase == "decode" else None,
        "tokens": args.tokens if args.phase == "prefill" else None,
        "voltage_knee_mhz": knee_mhz,
        "energy_optimal_mhz": best["clock_mhz"],
        "rows": rows,
    }
    if args.json == STDOUT:
        write_text(STDOUT, json.dumps(document, indent=2), "--json")
        return 0
    model = hardware.model
    print(f"{gpu.display_name}, {model.key} TP{model.tensor_parallel}, {workload}")
    print(f"{'clock (MHz)':>11}  {'latency (ms)':>12}  {'power/GPU (W)':>13}  {'J/token':>9}")
    for row in rows:
        marks = [
            label
            for key, label in (
                ("energy_optimal", "energy-optimal"),
                ("voltage_knee", "voltage knee"),
                ("power_limited", "power-limited (TDP)"),
            )
            if row[key]
        ]
        mark = f"  <- {', '.join(marks)}" if marks else ""
        print(
            f"{row['clock_mhz']:>11}  {row['latency_ms']:>12.2f}  {row['power_w']:>13.1f}  "
            f"{row['energy_per_token_j']:>9.4f}{mark}"
        )
    knee_text = (
        f"voltage knee ~{knee_mhz} MHz (below it power falls only linearly with the clock); "
        if knee_mhz is not None
        else ""
    )
    print(f"{knee_text}energy-optimal clock {best['clock_mhz']} MHz (of the sweep)")
    if args.json:
        write_text(args.json, json.dumps(document, indent=2), "--json")
        print(f"written to {args.json}", file=sys.stderr)
    return 0
