"""Run a node agent: ``python -m voltana.services.agent --backend nvml --listen 0.0.0.0:50070``.

The auth token is read from the environment variable VOLTANA_AGENT_TOKEN (never from the
command line, where every local user could read it with ps).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from collections.abc import Mapping, Sequence

from voltana.errors import ConfigError, VoltanaError
from voltana.services.agent.server import AgentService
from voltana.services.agent.settings import AgentSettings

TOKEN_ENV_VAR = "VOLTANA_AGENT_TOKEN"


def _instance_binding(text: str) -> tuple[str, int | tuple[int, ...]]:
    instance_id, separator, indices = text.partition("=")
    parts = indices.split(",")
    if not separator or not instance_id or not all(part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError(
            f"expected INSTANCE=GPU_INDEX[,GPU_INDEX...], got {text!r}"
        )
    parsed = tuple(int(part) for part in parts)
    return instance_id, parsed[0] if len(parsed) == 1 else parsed


def build_parser() -> argparse.ArgumentParser:
    defaults = AgentSettings()
    parser = argparse.ArgumentParser(
        prog="python -m voltana.services.agent",
        description="Voltana node agent: SM clocks under leases, power and energy readings.",
    )
    parser.add_argument("--listen", default="127.0.0.1:50070", help="host:port to serve on")
    parser.add_argument("--advertise", default="", help="host:port others reach this agent at")
    parser.add_argument("--backend", choices=("nvml", "sim"), default="nvml")
    parser.add_argument(
        "--gpu", type=int, action="append", default=[], help="GPU index to control (repeatable)"
    )
    parser.add_argument("--sim-gpu", default=defaults.sim_gpu_key, help="catalog key (sim)")
    parser.add_argument("--gpu-key", default="", help="catalog key to report for NVML GPUs")
    parser.add_argument(
        "--instance",
        type=_instance_binding,
        action="append",
        default=[],
        metavar="INSTANCE=GPU_INDEX[,GPU_INDEX...]",
        help="bind a serving instance to its GPU(s) (repeatable)",
    )
    parser.add_argument("--telemetry", default=None, help="telemetry host:port for samples")
    parser.add_argument("--sample-interval-ms", type=int, default=defaults.sample_interval_ms)
    parser.add_argument("--lease-ttl-ms", type=int, default=defaults.default_lease_ttl_ms)
    parser.add_argument("--max-lease-ttl-ms", type=int, default=defaults.max_lease_ttl_ms)
    parser.add_argument("--node-name", default="")
    parser.add_argument(
        "--no-reset-on-start", action="store_true", help="keep clocks a previous agent left"
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def settings_from_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> AgentSettings:
    return _settings(build_parser().parse_args(argv), os.environ if environ is None else environ)


def _settings(args: argparse.Namespace, environ: Mapping[str, str]) -> AgentSettings:
    return AgentSettings(
        listen_address=args.listen,
        advertise_address=args.advertise,
        backend=args.backend,
        gpu_indices=tuple(args.gpu),
        sim_gpu_key=args.sim_gpu,
        gpu_key=args.gpu_key,
        instance_gpu_indices=dict(args.instance),
        node_name=args.node_name or socket.gethostname(),
        default_lease_ttl_ms=args.lease_ttl_ms,
        max_lease_ttl_ms=args.max_lease_ttl_ms,
        reset_on_start=not args.no_reset_on_start,
        telemetry_address=args.telemetry,
        sample_interval_ms=args.sample_interval_ms,
        auth_token=environ.get(TOKEN_ENV_VAR) or None,
    )


async def serve(settings: AgentSettings) -> None:
    """Run until SIGINT/SIGTERM, then stop (which resets every GPU to default clocks)."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_requested.set)
    service = AgentService(settings)
    await service.start()
    try:
        await stop_requested.wait()
    finally:
        await service.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(serve(_settings(args, os.environ)))
    except VoltanaError as error:
        logging.getLogger("voltana.agent").error("%s", error)
        return 2 if isinstance(error, ConfigError) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
