"""`voltana compose`: write docker-compose.yml (and its Prometheus scrape list) for a PD layout,
colocated (unified) instances beside it or alone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from voltana.cli.options import non_negative_int, positive_int
from voltana.deploy.compose import (
    DEFAULT_SGLANG_IMAGE,
    TRANSFER_BACKENDS,
    ComposeLayout,
    render_compose,
    render_prometheus,
)
from voltana.errors import ConfigError

EPILOG = """\
examples:
  voltana compose --out docker-compose.yml --prometheus-out docker/prometheus/prometheus.yml
  voltana compose --prefill 1 --decode 1 --tp 2 --gpus 0,1,2,3 --transfer-backend nixl
  voltana compose --prefill 2 --decode 2 --ib-device mlx5_0 --out docker-compose.yml
  voltana compose --unified 2 --sim-unified 2     # colocated SGLang servers, no PD pair
  voltana compose --prefill 1 --decode 1 --unified 2

Without flags it writes the checked-in docker-compose.yml (1P1D on GPUs 0 and 1).
"""


def _indices(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 0,1,2,3") from None
    return values


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "compose",
        help="generate docker-compose.yml for a prefill/decode layout",
        description="Generate the Docker Compose file (and docker/prometheus/prometheus.yml) "
        "for a prefill/decode layout on one GPU host.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = ComposeLayout()
    gpu = parser.add_argument_group("profile gpu (SGLang on this host's GPUs)")
    gpu.add_argument(
        "--prefill",
        type=non_negative_int,
        help=f"prefill instances (default: {defaults.prefill}, 0 with --unified)",
    )
    gpu.add_argument(
        "--decode",
        type=non_negative_int,
        help=f"decode instances (default: {defaults.decode}, 0 with --unified)",
    )
    gpu.add_argument(
        "--unified",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="colocated SGLang servers (no --disaggregation-mode: each prefills and decodes), "
        "alone or beside --prefill/--decode (default: 0)",
    )
    gpu.add_argument("--tp", type=positive_int, default=defaults.tp, help="GPUs per instance")
    gpu.add_argument(
        "--gpus",
        type=_indices,
        help="GPU indices the instances take in order, prefill first, colocated last "
        "(default: 0, 1, ...)",
    )
    gpu.add_argument(
        "--transfer-backend",
        choices=TRANSFER_BACKENDS,
        default=defaults.transfer_backend,
        help="SGLang's KV transfer backend (default: %(default)s)",
    )
    gpu.add_argument(
        "--ib-device",
        default="",
        help="RDMA NIC(s) for the KV transfer, e.g. mlx5_0 (adds /dev/infiniband, IPC_LOCK, "
        "unlimited memlock and --disaggregation-ib-device)",
    )
    gpu.add_argument(
        "--sglang-image",
        default=DEFAULT_SGLANG_IMAGE,
        help="the SGLang image, pinned (default: %(default)s)",
    )
    gpu.add_argument(
        "--sglang-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for every SGLang server, repeatable (--sglang-arg=--mem-fraction-static=0.85)",
    )
    parser.add_argument(
        "--routers",
        type=positive_int,
        default=defaults.routers,
        help="active-active router replicas, published on ports 50051+i (default: %(default)s)",
    )
    sim = parser.add_argument_group("profile sim (simulated engines)")
    sim.add_argument(
        "--sim-prefill",
        type=non_negative_int,
        help=f"(default: {defaults.sim_prefill}, 0 with --sim-unified)",
    )
    sim.add_argument(
        "--sim-decode",
        type=non_negative_int,
        help=f"(default: {defaults.sim_decode}, 0 with --sim-unified)",
    )
    sim.add_argument(
        "--sim-unified",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="colocated simulated engines (voltana serve engine --mode unified; default: 0)",
    )
    parser.add_argument("--out", metavar="PATH", help="write here (default: stdout)")
    parser.add_argument(
        "--prometheus-out", metavar="PATH", help="also write the Prometheus scrape config here"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    defaults = ComposeLayout()

    def count(value: int | None, default: int, unified: int) -> int:
        # Only colocated instances asked for: no PD pair unless it is asked for too.
        return value if value is not None else (0 if unified else default)

    layout = ComposeLayout(
        prefill=count(args.prefill, defaults.prefill, args.unified),
        decode=count(args.decode, defaults.decode, args.unified),
        unified=args.unified,
        tp=args.tp,
        gpu_indices=args.gpus or (),
        transfer_backend=args.transfer_backend,
        ib_device=args.ib_device,
        sglang_image=args.sglang_image,
        sim_prefill=count(args.sim_prefill, defaults.sim_prefill, args.sim_unified),
        sim_decode=count(args.sim_decode, defaults.sim_decode, args.sim_unified),
        sim_unified=args.sim_unified,
        extra_sglang_args=tuple(args.sglang_arg),
        routers=args.routers,
    )
    compose = render_compose(layout)
    if args.out:
        _write(Path(args.out), compose)
    else:
        sys.stdout.write(compose)
    if args.prometheus_out:
        _write(Path(args.prometheus_out), render_prometheus(layout))
    return 0


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror}") from None
