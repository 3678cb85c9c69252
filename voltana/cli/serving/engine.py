"""`voltana serve engine`: a simulated SGLang server, optionally with a node agent beside it."""

from __future__ import annotations

import argparse

from voltana.cli.security_opts import security_from_args
from voltana.cli.serving.metrics import add_metrics_args, metrics_address
from voltana.cli.settings_args import add_flag, add_settings_args, settings_kwargs
from voltana.deploy.ports import AGENT_METRICS_PORT, ENGINE_PORT
from voltana.engine import SimEngineSettings
from voltana.flags.common import LISTEN, MODEL_CONFIG, PROFILE
from voltana.perf.selection import resolve_physics
from voltana.stack import EngineNode, EngineNodeSettings


def add_flags(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, LISTEN, f"127.0.0.1:{ENGINE_PORT}")  # SimEngineSettings' host and port
    add_settings_args(parser, SimEngineSettings)
    add_flag(parser, MODEL_CONFIG, None)
    add_flag(parser, PROFILE, None)
    add_settings_args(parser, EngineNodeSettings)
    add_metrics_args(parser, AGENT_METRICS_PORT, " the co-hosted agent's (--agent-listen)")


def build(args: argparse.Namespace) -> EngineNode:
    engine = settings_kwargs(args, SimEngineSettings)
    # The simulated GPU's physics: a measured profile, a custom model, or the catalog's.
    physics = resolve_physics(
        gpu_key=engine["gpu_key"],
        model_key=engine["model_key"],
        tensor_parallel=engine["tp"],
        model_config_path=args.model_config,
        profile_path=args.profile,
    )
    host, _, port = args.listen.rpartition(":")
    engine.update(
        host=host.strip("[]"),
        port=int(port),
        gpu_key=physics.gpu.key,
        model_key=physics.model.key,
        tp=physics.model.tensor_parallel,
    )
    node = settings_kwargs(args, EngineNodeSettings)
    return EngineNode(
        EngineNodeSettings(
            **node,
            engine=SimEngineSettings(**engine),
            agent_metrics_listen_address=(
                metrics_address(args, args.agent_listen) if args.agent_listen else None
            ),
            # A standalone engine (no telemetry, no agent) serves no gRPC and needs no token.
            security=security_from_args(
                args, required=args.telemetry is not None or args.agent_listen is not None
            ),
        ),
        perf=physics.perf,
    )
