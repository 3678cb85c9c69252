"""`voltana up --sim`: the whole stack in one process on loopback, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from voltana import event_loop
from voltana.cli.options import (
    add_cluster_shape_args,
    add_event_loop_arg,
    add_profile_arg,
    add_slo_args,
    cluster_shape_from_args,
    positive_float,
    positive_int,
    slo_from_args,
)
from voltana.cli.security_opts import (
    add_redis_password_arg,
    add_security_args,
    redis_password_from_args,
    security_from_args,
)
from voltana.deploy.ports import CONTROLLER_PORT, ROUTER_HTTP_PORT, ROUTER_PORT, TELEMETRY_PORT
from voltana.errors import ConfigError
from voltana.flags.values import port_number
from voltana.hardware import GPU_CATALOG, MODEL_CATALOG
from voltana.lifecycle import wait_for_stop_or_failure
from voltana.observability import add_observability_args, observability_from_args
from voltana.policy.registry import live_policy_names, router_names
from voltana.stack import SimStack, SimStackSettings
from voltana.stack.ports import port_in_use
from voltana.stack.sim_stack import TracerProviders

# The services' well-known ports (those of `voltana serve` and compose), taken when free.
DEFAULT_PORTS = {"router": ROUTER_PORT, "telemetry": TELEMETRY_PORT, "controller": CONTROLLER_PORT}

EPILOG = """\
examples:
  voltana up --sim
  voltana up --sim --prefill 2 --decode 2 --policy voltana --router-port 50051
  voltana up --sim --unified 2      # colocated instances (SGLang without disaggregation)
  voltana up --sim --prefill 1 --decode 1 --unified 1   # both kinds, side by side
  voltana up --sim --routers 2      # active-active routers; clients take both addresses
  voltana up --sim --redis-url redis://127.0.0.1:6379/0 --speedup 10 --otel-exporter console

Every service requires the control-plane token on privileged calls: a fresh random one, unless
$VOLTANA_CONTROL_TOKEN or --token-file names one (use that to call SetPolicy/SetSlo yourself).
--tls-cert/--tls-key/--tls-ca put every gRPC server and client on (m)TLS; the certificate must
name the --host (e.g. IP SAN 127.0.0.1).

Ports: router 50051, telemetry 50052, controller 50053 and the HTTP door 8000 (those of
`voltana serve`), each when free, else any free port (a note on stderr says so); a port given
by flag must be free, or nothing starts. Every address is printed, the router's first: that is
what clients connect to, e.g.
  python examples/generate.py 127.0.0.1:50051 "Hello"
  voltana bench --target 127.0.0.1:50051 --telemetry 127.0.0.1:50052 \\
      --trace synthetic:poisson:rate=5,duration=60,input=512,output=128
Without --sim there is nothing to start in one process: real GPUs run the services with
`docker compose up` (see docker-compose.yml) or one `voltana serve SERVICE` per service.
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "up",
        help="start the whole stack (simulated GPUs and engines) on loopback",
        description="Start telemetry, the controller, the router, and per instance a simulated "
        "GPU, SGLang engine and node agent, all in this process; print their addresses and run "
        "until Ctrl-C or SIGTERM, then stop everything with every GPU back at its default clock.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sim", action="store_true", help="simulated GPUs and engines (the only in-process mode)"
    )
    cluster = parser.add_argument_group("cluster")
    add_cluster_shape_args(cluster)
    cluster.add_argument(
        "--routers",
        type=positive_int,
        default=1,
        help="active-active routers sharing placements through telemetry (default: 1); "
        "router i on --router-port + i",
    )
    cluster.add_argument(
        "--gpu",
        default="a100-80g",
        help=f"GPU type: {', '.join(GPU_CATALOG)} (default: %(default)s)",
    )
    cluster.add_argument(
        "--model",
        default="llama-3.1-8b",
        help=f"model: {', '.join(MODEL_CATALOG)} (default: %(default)s)",
    )
    cluster.add_argument("--tp", type=positive_int, default=1, help="GPUs per instance")
    cluster.add_argument(
        "--model-config",
        metavar="CONFIG_JSON",
        help="Hugging Face config.json of a model outside the catalog (replaces --model)",
    )
    add_profile_arg(cluster)
    cluster.add_argument(
        "--speedup",
        type=positive_float,
        default=1.0,
        help="simulated time runs X times faster than wall time (default: 1; latencies the "
        "router and clients measure are wall time)",
    )
    cluster.add_argument(
        "--max-running-requests",
        type=positive_int,
        default=1024,
        help="decode batch limit per instance (default: %(default)s)",
    )
    control = parser.add_argument_group("control")
    control.add_argument(
        "--policy",
        default="static-max",
        help=f"operating policy: {', '.join(live_policy_names())} (default: %(default)s)",
    )
    control.add_argument(
        "--router", help=f"override the policy's router: {', '.join(router_names())}"
    )
    add_slo_args(parser)
    network = parser.add_argument_group("network")
    network.add_argument("--host", default="127.0.0.1", help="address every server binds")
    for service, port in DEFAULT_PORTS.items():
        network.add_argument(
            f"--{service}-port",
            type=port_number,
            help=f"{service} port (default: {port} when free, else any free port; 0: any free)",
        )
    network.add_argument(
        "--redis-url",
        help="keep telemetry in Redis (redis://[:PASSWORD@]host:port/db, rediss://...) instead "
        "of memory",
    )
    network.add_argument(
        "--metrics-port",
        type=port_number,
        default=0,
        help="Prometheus /metrics: router on this port, telemetry +1, controller +2, then each "
        "instance's node agent; 0 = any free ports (default); printed as <service>.metrics",
    )
    network.add_argument("--no-metrics", action="store_true", help="serve no /metrics")
    network.add_argument(
        "--http-port",
        type=port_number,
        help=f"the router's HTTP front door (OpenAI /v1/*, SGLang /generate; default: "
        f"{ROUTER_HTTP_PORT} when free, else any free port; 0: any free); printed as router.http",
    )
    network.add_argument("--no-http", action="store_true", help="the router serves gRPC only")
    add_redis_password_arg(network)
    add_security_args(parser)
    add_observability_args(parser)
    add_event_loop_arg(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    ports, notes = chosen_ports(args)
    settings = settings_from_args(args, ports)
    observability = observability_from_args(args, "voltana-up")
    observability.check()
    # One provider per service (service.name voltana-router, ...), none installed globally.
    tracing = observability.apply(set_global=False)
    try:
        event_loop.run(
            serve(settings, tracer_providers=tracing.provider_for, notes=notes), args.event_loop
        )
    finally:
        tracing.shutdown()
    return 0


def chosen_ports(
    args: argparse.Namespace,
    is_free: Callable[[str, int], bool] = lambda host, port: port_in_use(host, port) is None,
) -> tuple[dict[str, int], list[str]]:
    """Each service's port: the flag's, else its well-known port (what `voltana bench` and the
    README use) when free, else 0 (any free port); and a note for each such fallback."""
    ports, notes = {}, []
    for service, default in (*DEFAULT_PORTS.items(), ("router.http", ROUTER_HTTP_PORT)):
        flag = "http_port" if service == "router.http" else f"{service}_port"
        port = getattr(args, flag)
        if service == "router.http" and args.no_http:
            port = 0  # not served: no default port to look for
        if port is None:
            port = default if is_free(args.host, default) else 0
            if not port:
                notes.append(
                    f"voltana up: port {default} is in use, so the {service} listens on a free "
                    f"port: see its address above"
                )
        ports[service] = port
    return ports, notes


def settings_from_args(args: argparse.Namespace, ports: dict[str, int]) -> SimStackSettings:
    if not args.sim:
        raise ConfigError(
            "only the simulated stack runs in one process: add --sim, or run the real-GPU "
            "stack with `docker compose up` (docker-compose.yml) or `voltana serve SERVICE`"
        )
    prefill, decode, unified = cluster_shape_from_args(args)
    return SimStackSettings(
        prefill=prefill,
        decode=decode,
        unified=unified,
        routers=args.routers,
        gpu_key=args.gpu,
        model_key=args.model,
        tp=args.tp,
        model_config_path=args.model_config,
        profile_path=args.profile,
        policy=args.policy,
        router=args.router,
        slo=slo_from_args(args),
        speedup=args.speedup,
        redis_url=args.redis_url,
        redis_password=redis_password_from_args(args) if args.redis_url else None,
        host=args.host,
        router_port=ports["router"],
        telemetry_port=ports["telemetry"],
        controller_port=ports["controller"],
        max_running_requests=args.max_running_requests,
        metrics_port=None if args.no_metrics else args.metrics_port,
        http_port=None if args.no_http else ports["router.http"],
        security=security_from_args(args, generate=True),
    )


async def serve(
    settings: SimStackSettings,
    out: TextIO | None = None,
    *,
    tracer_providers: TracerProviders | None = None,
    notes: Sequence[str] = (),
) -> None:
    """Start the stack, print its addresses (then ``notes`` on stderr), and stop it on
    SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop_requested.set)
    stack = SimStack(settings, tracer_providers=tracer_providers)
    try:
        start = asyncio.ensure_future(stack.start())
        stop_waiter = asyncio.ensure_future(stop_requested.wait())
        await asyncio.wait({start, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():  # interrupted while starting: start() cleans up when cancelled
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
            return
        start.result()  # raise a failed start
        print_addresses(stack, out or sys.stdout)
        for note in notes:
            print(note, file=sys.stderr)
        stop_waiter.cancel()
        await wait_for_stop_or_failure(stop_requested, stack)  # e.g. Redis refused telemetry
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await stack.stop()


def print_addresses(stack: SimStack, out: TextIO) -> None:
    addresses = stack.addresses
    width = max(len(name) for name in addresses)
    for name, address in addresses.items():
        out.write(f"{name.ljust(width)}  {address}\n")
    settings = stack.settings
    security = settings.security
    auth = "OFF (--insecure-no-auth)" if security.insecure_no_auth else "on"
    physics = stack.physics
    source = " (measured profile)" if physics.profile is not None else ""
    out.write(
        f"# {settings.shape} {physics.gpu.key} {physics.model.key} "
        f"TP{physics.model.tensor_parallel}{source}, "
        f"policy {settings.policy}, speedup {settings.speedup:g}; connect to the router at "
        f"{','.join(stack.router_addresses)}; control-plane auth {auth}, "
        f"{'TLS' if security.tls is not None else 'plaintext'}; Ctrl-C stops\n"
    )
    out.flush()
