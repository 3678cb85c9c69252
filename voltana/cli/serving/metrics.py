"""`--metrics-port` / `--no-metrics`: where a service serves Prometheus /metrics."""

from __future__ import annotations

import argparse

from voltana.flags.values import port_number


def add_metrics_args(parser: argparse.ArgumentParser, port: int, what: str = "") -> None:
    group = parser.add_argument_group("Prometheus metrics")
    group.add_argument(
        "--metrics-port",
        type=port_number,
        default=port,
        help=f"serve{what} /metrics on this port of the --listen host; 0 = any free port "
        "(default: %(default)s)",
    )
    group.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")


def metrics_address(args: argparse.Namespace, listen: str | None = None) -> str | None:
    """``HOST:PORT`` of the /metrics server (``listen``'s host), or None with --no-metrics."""
    if args.no_metrics:
        return None
    host = (listen or args.listen).rpartition(":")[0]
    return f"{host}:{args.metrics_port}"
