"""`voltana health`: is a Voltana service (gRPC health) or an engine (HTTP) serving?

What container healthchecks and Kubernetes exec probes run: exit 0 when serving, 1 when not
(one line on stderr saying why), 2 on bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from voltana.cli.options import positive_float
from voltana.cli.security_opts import add_security_args, security_from_args
from voltana.errors import ConfigError
from voltana.rpc import RpcSecurity


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "health",
        help="check that a service (gRPC health) or an engine (HTTP /health) is serving",
        description="Exit 0 when the service answers SERVING (gRPC health checking protocol) "
        "or the URL answers 200; 1 otherwise.",
    )
    parser.add_argument("address", nargs="?", metavar="HOST:PORT", help="a Voltana service")
    parser.add_argument(
        "--service", default="", help="gRPC service name to ask about (default: the server)"
    )
    parser.add_argument("--http", metavar="URL", help="check this HTTP URL instead")
    parser.add_argument("--timeout-s", type=positive_float, default=3.0)
    add_security_args(parser, client_only=True)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if bool(args.address) == bool(args.http):
        raise ConfigError("give a HOST:PORT or --http URL (one of them)")
    if args.http:
        problem = asyncio.run(_http(args.http, args.timeout_s))
    else:
        security = security_from_args(args, required=False)
        problem = asyncio.run(_grpc(args.address, args.service, args.timeout_s, security))
    if problem:
        print(f"voltana health: {problem}", file=sys.stderr)
        return 1
    return 0


async def _grpc(address: str, service: str, timeout_s: float, security: RpcSecurity) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from voltana.rpc import create_channel

    async with create_channel(address, security=security, traced=False) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as error:
            return f"{address}: {error.code().name}: {error.details()}"
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)}"
    return ""


async def _http(url: str, timeout_s: float) -> str:
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.get(url) as response,
        ):
            return "" if response.status == 200 else f"{url}: HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError) as error:
        return f"{url}: {error or type(error).__name__}"
