"""`voltana serve instance`: register a real SGLang server and report its load from /metrics."""

from __future__ import annotations

import argparse

from voltana.cli.security_opts import security_from_args
from voltana.cli.settings_args import add_settings_args, settings_kwargs
from voltana.errors import ConfigError
from voltana.flags.values import gpu_ref, host_port
from voltana.services.telemetry import GpuRef
from voltana.stack.sglang_reporter import SglangInstanceReporter, SglangInstanceSettings


def add_flags(parser: argparse.ArgumentParser) -> None:
    add_settings_args(parser, SglangInstanceSettings)
    # Its GPUs (agent_address, gpu_index, gpus), composed in _gpus.
    parser.add_argument(
        "--agent",
        type=host_port,
        metavar="HOST:PORT",
        help="node agent controlling its GPU (default: its clock is not controlled)",
    )
    parser.add_argument(
        "--gpu-index",
        type=gpu_ref,
        action="append",
        metavar="N|HOST:PORT/N",
        help="its GPU on --agent (default: 0), repeatable for a tensor-parallel server; "
        "HOST:PORT/N names a GPU of another node agent",
    )


def build(args: argparse.Namespace) -> SglangInstanceReporter:
    agent, refs = _gpus(args)
    return SglangInstanceReporter(
        SglangInstanceSettings(
            **settings_kwargs(args, SglangInstanceSettings),
            agent_address=agent,
            gpu_index=refs[0].gpu_index,
            gpus=tuple(refs) if len(refs) > 1 else (),
            security=security_from_args(args),
        )
    )


def _gpus(args: argparse.Namespace) -> tuple[str, list[GpuRef]]:
    """The node agent and the server's GPUs (the first on that agent) of --agent/--gpu-index."""
    agent = args.agent or ""
    refs = [GpuRef(address or agent, index) for address, index in (args.gpu_index or [("", 0)])]
    if len(refs) > 1 and any(not ref.agent_address for ref in refs):
        raise ConfigError("--gpu-index N needs --agent; or name the agent: HOST:PORT/N")
    if not agent:
        agent = refs[0].agent_address
    elif refs[0].agent_address != agent:
        raise ConfigError("the first --gpu-index must be a GPU of --agent")
    return agent, refs
