"""`voltana serve agent`."""

from __future__ import annotations

import argparse

from voltana.cli.security_opts import security_from_args
from voltana.cli.serving.metrics import add_metrics_args, metrics_address
from voltana.cli.settings_args import add_settings_args, settings_kwargs
from voltana.deploy.ports import AGENT_METRICS_PORT
from voltana.services.agent import AgentService, AgentSettings


def add_flags(parser: argparse.ArgumentParser) -> None:
    add_settings_args(parser, AgentSettings)
    add_metrics_args(parser, AGENT_METRICS_PORT)


def build(args: argparse.Namespace) -> AgentService:
    return AgentService(
        AgentSettings(
            **settings_kwargs(args, AgentSettings),
            security=security_from_args(args),
            metrics_listen_address=metrics_address(args),
        )
    )
