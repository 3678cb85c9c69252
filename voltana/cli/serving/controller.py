"""`voltana serve controller`."""

from __future__ import annotations

import argparse

from voltana.cli.options import add_slo_args, slo_from_args
from voltana.cli.security_opts import security_from_args
from voltana.cli.serving.metrics import add_metrics_args, metrics_address
from voltana.cli.settings_args import add_settings_args, settings_kwargs
from voltana.deploy.ports import CONTROLLER_METRICS_PORT
from voltana.services.controller import ControllerService, ControllerSettings


def add_flags(parser: argparse.ArgumentParser) -> None:
    add_settings_args(parser, ControllerSettings)
    add_slo_args(parser)
    add_metrics_args(parser, CONTROLLER_METRICS_PORT)


def build(args: argparse.Namespace) -> ControllerService:
    return ControllerService(
        ControllerSettings(
            **settings_kwargs(args, ControllerSettings),
            slo=slo_from_args(args),
            security=security_from_args(args),
            metrics_listen_address=metrics_address(args),
        )
    )
