"""`voltana serve SERVICE`: run one Voltana service until SIGINT/SIGTERM (what compose runs).

Each service's flags are generated from its settings dataclass (voltana.flags metadata on the
fields; voltana.cli.settings_args builds them), plus those its module under voltana.cli.serving
composes itself. Defaults bind loopback on the service's well-known port (router 50051,
telemetry 50052, controller 50053, agent 50054, simulated engine 30000 with KV bootstrap 8998 —
SGLang's defaults): serving other hosts is a deliberate --listen 0.0.0.0:PORT. Every service
needs the control-plane token ($VOLTANA_CONTROL_TOKEN or --token-file) unless
--insecure-no-auth (see security_opts).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from voltana import event_loop
from voltana.cli.options import add_event_loop_arg
from voltana.cli.security_opts import add_security_args
from voltana.lifecycle import wait_for_stop_or_failure
from voltana.observability import add_observability_args, observability_from_args

_LOG = logging.getLogger("voltana.serve")

EPILOG = """\
Every service reads the control-plane token from $VOLTANA_CONTROL_TOKEN (or --token-file);
`voltana token` makes one. Services listen on 127.0.0.1 unless --listen says otherwise.

examples:
  voltana serve telemetry --redis-url redis://redis:6379/0
  voltana serve controller --telemetry telemetry:50052 --policy voltana
  voltana serve router --telemetry telemetry:50052 --policy voltana
  voltana serve agent --backend nvml --instance prefill-0=0 --instance decode-0=1 \\
      --telemetry telemetry:50052 --advertise agent:50054
  voltana serve engine --mode prefill --instance-id prefill-0 --advertise-host engine-prefill-0 \\
      --telemetry telemetry:50052 --agent-listen 0.0.0.0:50054
"""


# Each service: its one-line help; its flags and builder are in voltana.cli.serving.<name>.
SERVICES = {
    "telemetry": "instance state, GPU samples and completions (memory or Redis)",
    "controller": "frequency controller: policies → clocks on node agents",
    "router": "places requests on prefill/decode instances",
    "agent": "node agent: applies clocks through NVML (privileged), samples power",
    "engine": "a simulated SGLang server (real GPUs run the official SGLang image instead)",
    "instance": "register a real SGLang server with telemetry and report its load from /metrics",
}


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


if TYPE_CHECKING:
    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    _SubParsers = argparse._SubParsersAction  # generic only in typeshed


class _ChosenService(_SubParsers):
    """Adds a service's flags once it is chosen: `voltana serve router` imports no engine,
    stack or other service (see COMMAND_MODULES in voltana.cli.main)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if isinstance(values, Sequence) and values and values[0] in SERVICES:
            _add_service_flags(self._name_parser_map[values[0]], values[0])
        super().__call__(parser, namespace, values, option_string)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "serve",
        help="run one service (telemetry, controller, router, agent, engine, instance)",
        description="Run one Voltana service in the foreground until SIGINT/SIGTERM, then stop "
        "it gracefully. docker-compose.yml runs one of these per container.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    services = parser.add_subparsers(
        dest="service", metavar="SERVICE", required=True, action=_ChosenService
    )
    for name, help_text in SERVICES.items():
        service_parser = services.add_parser(name, help=help_text)
        service_parser.set_defaults(handler=run, service_name=f"voltana-{name}")


def _add_service_flags(parser: argparse.ArgumentParser, name: str) -> None:
    if parser.get_default("build") is not None:
        return  # already added (a parser parses more than one command line in tests)
    module = importlib.import_module(f"voltana.cli.serving.{name}")
    module.add_flags(parser)
    add_security_args(parser)
    add_observability_args(parser)
    add_event_loop_arg(parser)
    parser.set_defaults(build=module.build)


# ---- running ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    build: Callable[[argparse.Namespace], Service] = args.build
    observability = observability_from_args(args, args.service_name)
    observability.check()
    service = build(args)  # bad settings fail here, before logging or tracing start
    tracing = observability.apply()
    try:
        event_loop.run(serve_until_signal(service, args.service), args.event_loop)
    finally:
        tracing.shutdown()
    return 0


async def serve_until_signal(service: Service, name: str) -> None:
    """Start ``service``, wait for SIGINT/SIGTERM, stop it (also when start is interrupted);
    a service that fails for good (``FailsForGood``) is stopped and its error raised."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop_requested.set)
    try:
        start = asyncio.ensure_future(service.start())
        stop_waiter = asyncio.ensure_future(stop_requested.wait())
        await asyncio.wait({start, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
            return
        start.result()
        _LOG.info("%s running; SIGINT or SIGTERM stops it", name)
        stop_waiter.cancel()
        await wait_for_stop_or_failure(stop_requested, service)  # a failure ends it, exit 2
        _LOG.info("%s stopping", name)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await service.stop()
