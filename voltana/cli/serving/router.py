"""`voltana serve router`: gRPC, and the HTTP front door beside it (--http-port)."""

from __future__ import annotations

import argparse

from voltana.cli.options import add_slo_args, slo_from_args
from voltana.cli.security_opts import add_api_key_args, api_keys_from_args, security_from_args
from voltana.cli.serving.metrics import add_metrics_args, metrics_address
from voltana.cli.settings_args import add_settings_args, settings_kwargs
from voltana.deploy.ports import ROUTER_HTTP_PORT, ROUTER_METRICS_PORT
from voltana.flags.values import port_number
from voltana.services.router import RouterService, RouterSettings
from voltana.services.router.http_limits import HttpLimits

# HttpLimits' flags: --http-max-body-bytes, --http-header-timeout-s, ...
HTTP_PREFIX = "http-"


def add_flags(parser: argparse.ArgumentParser) -> None:
    add_settings_args(parser, RouterSettings)
    add_slo_args(parser)
    add_metrics_args(parser, ROUTER_METRICS_PORT)
    http = parser.add_argument_group("HTTP front door (OpenAI-compatible and SGLang /generate)")
    http.add_argument(
        "--http-port",
        type=port_number,
        default=ROUTER_HTTP_PORT,
        help="serve it on this port of the --listen host; 0 = any free port (default: %(default)s)",
    )
    http.add_argument("--no-http", action="store_true", help="gRPC only")
    add_settings_args(http, HttpLimits, prefix=HTTP_PREFIX)
    add_api_key_args(parser, server=True)


def build(args: argparse.Namespace) -> RouterService:
    host = args.listen.rpartition(":")[0]
    return RouterService(
        RouterSettings(
            **settings_kwargs(args, RouterSettings),
            slo=slo_from_args(args),
            metrics_listen_address=metrics_address(args),
            security=security_from_args(args),
            api_keys=api_keys_from_args(args),
            http_listen_address=None if args.no_http else f"{host}:{args.http_port}",
            http_limits=HttpLimits(**settings_kwargs(args, HttpLimits, prefix=HTTP_PREFIX)),
        )
    )
