"""Flags shared by several commands, and turning them into core objects.

The value readers (positive_float, ...) live in voltana.flags.values, beside the settings' flag
metadata that services use; the commands import positive_float and positive_int from here."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from voltana.contract.state import SloTarget
from voltana.errors import ConfigError
from voltana.event_loop import DEFAULT_EVENT_LOOP, EVENT_LOOPS
from voltana.flags.values import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from voltana.hardware import GPU_CATALOG, MODEL_CATALOG, GpuSpec, ModelSpec
from voltana.perf.model import PerformanceModel
from voltana.perf.selection import resolve_physics
from voltana.workloads import load_workload
from voltana.workloads.classes import parse_slo_class, with_slo_class
from voltana.workloads.request import TraceRequest


def add_hardware_args(parser: argparse.ArgumentParser, default_gpu: str = "a100-80g") -> None:
    group = parser.add_argument_group("hardware")
    group.add_argument(
        "--gpu",
        default=default_gpu,
        help=f"GPU type: {', '.join(GPU_CATALOG)} (default: %(default)s)",
    )
    group.add_argument(
        "--model",
        default="llama-3.1-8b",
        help=f"model: {', '.join(MODEL_CATALOG)} (default: %(default)s)",
    )
    group.add_argument(
        "--model-config",
        metavar="CONFIG_JSON",
        help="Hugging Face config.json describing the model (overrides --model)",
    )
    group.add_argument(
        "--tp", type=positive_int, default=1, help="tensor-parallel GPUs per instance (default: 1)"
    )
    add_profile_arg(group)


def add_clock_range_arg(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--allow-extrapolated-clocks",
        action="store_true",
        help="let policies use every clock the GPU supports, also outside the range where the "
        "power/latency model (or --profile) is calibrated (docs/power-model.md); figures that "
        "used such clocks are marked '*' (default: the calibrated range only)",
    )


def add_profile_arg(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--profile",
        metavar="PROFILE.csv",
        help="a measured profile (voltana profile): its GPU, model, TP and measurements "
        "replace --gpu, --model, --model-config and --tp",
    )


EVENT_LOOP_ENV = "VOLTANA_EVENT_LOOP"


def add_event_loop_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default=os.environ.get(EVENT_LOOP_ENV, DEFAULT_EVENT_LOOP),
        help=f"the process's event loop: uvloop (less CPU per request) or asyncio's own "
        f"(default: ${EVENT_LOOP_ENV} or {DEFAULT_EVENT_LOOP})",
    )


def add_slo_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("latency targets")
    group.add_argument(
        "--ttft-slo-ms", type=float, default=800.0, help="TTFT target (default: %(default)s)"
    )
    group.add_argument(
        "--itl-slo-ms", type=float, default=50.0, help="mean ITL target (default: %(default)s)"
    )
    group.add_argument(
        "--ttft-slo-per-1k-ms",
        type=float,
        default=0.0,
        help="TTFT allowance per 1000 prompt tokens, for traces with long prompts: a request's "
        "TTFT target is --ttft-slo-ms plus this per 1k of its tokens (default: %(default)s)",
    )


def add_slo_class_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--slo-class",
        metavar="NAME:FRACTION:ITL_FACTOR[:TTFT_FACTOR]",
        help="put a share of the requests in an SLO class with looser (or tighter) targets "
        "than the cluster SLO, e.g. batch:0.3:4 (30 %% of requests, 4x the ITL target); "
        "attainment is then reported per class, each against its own targets",
    )


def with_slo_class_from_args(
    args: argparse.Namespace, requests: list[TraceRequest], slo: SloTarget, seed: int = 0
) -> list[TraceRequest]:
    """The workload with `--slo-class`'s share of its requests in that class (as it is when
    the flag is not given); the same ``seed`` draws the same requests offline and live."""
    if args.slo_class is None:
        return requests
    return with_slo_class(requests, parse_slo_class(args.slo_class), slo, seed=seed)


@dataclass(frozen=True)
class Hardware:
    gpu: GpuSpec
    model: ModelSpec
    perf: PerformanceModel


def hardware_from_args(args: argparse.Namespace) -> Hardware:
    physics = resolve_physics(
        gpu_key=args.gpu,
        model_key=args.model,
        tensor_parallel=args.tp,
        model_config_path=args.model_config,
        profile_path=getattr(args, "profile", None),
    )
    return Hardware(physics.gpu, physics.model, physics.perf)


def slo_from_args(args: argparse.Namespace) -> SloTarget:
    if args.ttft_slo_ms <= 0 or args.itl_slo_ms <= 0:
        raise ConfigError("SLO targets must be positive")
    per_1k_ms = getattr(args, "ttft_slo_per_1k_ms", 0.0)
    if per_1k_ms < 0:
        raise ConfigError("--ttft-slo-per-1k-ms must be >= 0")
    return SloTarget(
        ttft_ms=args.ttft_slo_ms, itl_ms=args.itl_slo_ms, ttft_ms_per_1k_tokens=per_1k_ms
    )


def add_elastic_args(group: argparse._ActionsContainer) -> None:
    """--engine-start-s and --released-gpu-w: the costs of elasticity (voltana-elastic)."""
    group.add_argument(
        "--engine-start-s",
        type=non_negative_float,
        metavar="S",
        help="seconds an engine takes to start (weights, warm-up, graph capture) when "
        "voltana-elastic brings an instance back (default: 3.75 s per billion parameters, "
        "30 s for an 8B model, 123 s for qwen3-32b)",
    )
    group.add_argument(
        "--released-gpu-w",
        type=non_negative_float,
        metavar="W",
        help="count a GPU whose engine voltana-elastic stopped at W watts (0: given back to a "
        "pool that powers it down or uses it) instead of its bare idle draw; the report gives "
        "both figures and the released GPU-hours",
    )


def add_cluster_shape_args(group: argparse._ActionsContainer) -> None:
    """--prefill/--decode (a PD cluster) and --unified (colocated instances), mixable."""
    group.add_argument(
        "--prefill", type=non_negative_int, help="prefill instances (default: 2, 0 with --unified)"
    )
    group.add_argument(
        "--decode", type=non_negative_int, help="decode instances (default: 2, 0 with --unified)"
    )
    group.add_argument(
        "--unified",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="colocated instances, each prefilling and decoding (SGLang without "
        "disaggregation); alone, or beside --prefill/--decode (default: 0)",
    )


def cluster_shape_from_args(args: argparse.Namespace) -> tuple[int, int, int]:
    """(prefill, decode, unified) instance counts: 2P2D by default, no PD pair when only
    --unified is given."""
    default_pd = 0 if args.unified else 2
    prefill = default_pd if args.prefill is None else args.prefill
    decode = default_pd if args.decode is None else args.decode
    if (prefill == 0) != (decode == 0):
        raise ConfigError(
            f"PD serving needs both --prefill and --decode >= 1 (got {prefill} and {decode}); "
            "colocated instances alone: --unified N"
        )
    if prefill + args.unified == 0:
        raise ConfigError("the cluster has no instance: --prefill/--decode or --unified N")
    return prefill, decode, args.unified


def cluster_shape_label(prefill: int, decode: int, unified: int) -> str:
    """E.g. 2P2D, 4U, 1P1D+2U."""
    parts = [f"{prefill}P{decode}D"] if prefill else []
    if unified:
        parts.append(f"{unified}U")
    return "+".join(parts)


def add_workload_shaping_args(parser: argparse.ArgumentParser) -> None:
    workload = parser.add_argument_group("workload shaping")
    workload.add_argument(
        "--rate-scale",
        type=positive_float,
        default=1.0,
        help="multiply the arrival rate (compress time) by X (default: 1)",
    )
    workload.add_argument("--start-s", type=float, help="cut the trace from this offset (s)")
    workload.add_argument("--duration-s", type=positive_float, help="replay at most this long (s)")
    workload.add_argument("--max-requests", type=positive_int, help="replay at most N requests")


def workload_from_args(args: argparse.Namespace) -> list[TraceRequest]:
    """The workload `--trace` names, shaped by the flags of `add_workload_shaping_args`."""
    return load_workload(
        args.trace,
        rate_scale=args.rate_scale,
        start_s=args.start_s,
        duration_s=args.duration_s,
        max_requests=args.max_requests,
    )
