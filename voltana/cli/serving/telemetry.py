"""`voltana serve telemetry`."""

from __future__ import annotations

import argparse

from voltana.cli.options import add_slo_args, slo_from_args
from voltana.cli.security_opts import (
    add_redis_password_arg,
    redis_password_from_args,
    security_from_args,
)
from voltana.cli.serving.metrics import add_metrics_args, metrics_address
from voltana.cli.settings_args import add_settings_args, settings_kwargs
from voltana.deploy.ports import TELEMETRY_METRICS_PORT
from voltana.services.telemetry import TelemetryService, TelemetrySettings


def add_flags(parser: argparse.ArgumentParser) -> None:
    add_settings_args(parser, TelemetrySettings)
    add_redis_password_arg(parser)
    add_slo_args(parser)
    add_metrics_args(parser, TELEMETRY_METRICS_PORT)


def build(args: argparse.Namespace) -> TelemetryService:
    return TelemetryService(
        TelemetrySettings(
            **settings_kwargs(args, TelemetrySettings),
            redis_password=redis_password_from_args(args),
            slo=slo_from_args(args),
            metrics_listen_address=metrics_address(args),
            security=security_from_args(args),
        )
    )
