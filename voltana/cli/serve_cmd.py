"""`voltana serve SERVICE`: run one Voltana service until SIGINT/SIGTERM (what compose runs).

Every flag mirrors a field of the service's settings dataclass; defaults bind loopback on the
service's well-known port (router 50051, telemetry 50052, controller 50053, agent 50054,
simulated engine 30000 with KV bootstrap 8998 — SGLang's defaults): serving other hosts is a
deliberate --listen 0.0.0.0:PORT. Every service needs the control-plane token
($VOLTANA_CONTROL_TOKEN or --token-file) unless --insecure-no-auth (see security_opts).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from voltana import event_loop
from voltana.cli.options import (
    add_event_loop_arg,
    add_profile_arg,
    add_slo_args,
    non_negative_float,
    positive_float,
    positive_int,
    slo_from_args,
)
from voltana.cli.security_opts import (
    add_api_key_args,
    add_redis_password_arg,
    add_security_args,
    api_keys_from_args,
    redis_password_from_args,
    security_from_args,
)
from voltana.deploy.ports import (
    AGENT_METRICS_PORT,
    AGENT_PORT,
    BOOTSTRAP_PORT,
    CONTROLLER_METRICS_PORT,
    CONTROLLER_PORT,
    ENGINE_PORT,
    ROUTER_HTTP_PORT,
    ROUTER_METRICS_PORT,
    ROUTER_PORT,
    TELEMETRY_METRICS_PORT,
    TELEMETRY_PORT,
)
from voltana.engine import EngineMode, SimEngineSettings
from voltana.errors import ConfigError
from voltana.hardware import GPU_CATALOG, MODEL_CATALOG
from voltana.lifecycle import wait_for_stop_or_failure
from voltana.observability import add_observability_args, observability_from_args
from voltana.perf.selection import resolve_physics
from voltana.policy.registry import live_policy_names, router_names

if TYPE_CHECKING:
    from voltana.services.router.http_limits import HttpLimits

_LOG = logging.getLogger("voltana.serve")

REDIS_URL_ENV = "VOLTANA_REDIS_URL"

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


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "serve",
        help="run one service (telemetry, controller, router, agent, engine, instance)",
        description="Run one Voltana service in the foreground until SIGINT/SIGTERM, then stop "
        "it gracefully. docker-compose.yml runs one of these per container.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    services = parser.add_subparsers(dest="service", metavar="SERVICE", required=True)
    for add in (
        _add_telemetry,
        _add_controller,
        _add_router,
        _add_agent,
        _add_engine,
        _add_instance,
    ):
        service_parser = add(services)
        add_security_args(service_parser)
        add_observability_args(service_parser)
        add_event_loop_arg(service_parser)


def _listen_arg(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument(
        "--listen",
        type=host_port,
        default=f"127.0.0.1:{port}",
        metavar="HOST:PORT",
        help="address to serve on (0.0.0.0:PORT serves other hosts); port 0 = any free port "
        "(default: %(default)s)",
    )


def _metrics_args(parser: argparse.ArgumentParser, port: int, what: str = "") -> None:
    group = parser.add_argument_group("Prometheus metrics")
    group.add_argument(
        "--metrics-port",
        type=port_number,
        default=port,
        help=f"serve{what} /metrics on this port of the --listen host; 0 = any free port "
        "(default: %(default)s)",
    )
    group.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")


def metrics_address(args: argparse.Namespace, listen: str | None = None) -> str | None:
    """``HOST:PORT`` of the /metrics server (``listen``'s host), or None with --no-metrics."""
    if args.no_metrics:
        return None
    host = (listen or args.listen).rpartition(":")[0]
    return f"{host}:{args.metrics_port}"


def _telemetry_arg(parser: argparse.ArgumentParser, *, required_help: str) -> None:
    parser.add_argument(
        "--telemetry",
        type=host_port,
        default=f"127.0.0.1:{TELEMETRY_PORT}",
        metavar="HOST:PORT",
        help=f"telemetry service {required_help} (default: %(default)s)",
    )


def _hardware_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gpu",
        default="a100-80g",
        help=f"GPU type: {', '.join(GPU_CATALOG)} (default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        default="llama-3.1-8b",
        help=f"model: {', '.join(MODEL_CATALOG)} (default: %(default)s)",
    )
    parser.add_argument("--tp", type=positive_int, default=1, help="GPUs per instance")
    parser.add_argument(
        "--model-config",
        metavar="CONFIG_JSON",
        help="Hugging Face config.json of a model outside the catalog (replaces --model)",
    )
    add_profile_arg(parser)


def _policy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        default="static-max",
        help=f"operating policy: {', '.join(live_policy_names())} (default: %(default)s)",
    )


def _drain_arg(parser: argparse.ArgumentParser, after: str, default: float = 5.0) -> None:
    parser.add_argument(
        "--drain-s",
        type=non_negative_float,
        default=default,
        help=f"on SIGTERM/SIGINT, let running requests finish this long; {after} "
        "(default: %(default)s)",
    )


# ---- telemetry -------------------------------------------------------------------------------


def _add_telemetry(
    services: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = services.add_parser(
        "telemetry", help="instance state, GPU samples and completions (memory or Redis)"
    )
    _listen_arg(parser, TELEMETRY_PORT)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get(REDIS_URL_ENV) or None,
        help=f"redis://[:PASSWORD@]host:port/db, rediss://... (TLS) or unix://PATH (default: "
        f"${REDIS_URL_ENV}, else in process memory)",
    )
    add_redis_password_arg(parser)
    parser.add_argument(
        "--redis-key-prefix",
        default="voltana:",
        help="prefix of every Redis key (default: %(default)s)",
    )
    parser.add_argument(
        "--window-s",
        type=positive_float,
        default=60.0,
        help="default window of aggregates (default: %(default)s)",
    )
    parser.add_argument(
        "--instance-ttl-s",
        type=non_negative_float,
        default=10.0,
        help="unregister instances that neither register nor report load this long; "
        "0 = never (default: %(default)s)",
    )
    parser.add_argument(
        "--replay-journal-cap",
        type=positive_int,
        default=50_000,
        help="completions kept to write again into a Redis that restarted and lost them "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--replay-journal-s",
        type=positive_float,
        default=900.0,
        help="how long (by finish time) those completions are kept (default: %(default)s)",
    )
    parser.add_argument(
        "--aggregates-rate",
        type=non_negative_float,
        default=20.0,
        help="GetAggregates calls a second each client host may make (40 at once); "
        "0 = unlimited (default: %(default)s)",
    )
    add_slo_args(parser)
    _metrics_args(parser, TELEMETRY_METRICS_PORT)
    parser.set_defaults(handler=run, build=_build_telemetry, service_name="voltana-telemetry")
    return parser


def _build_telemetry(args: argparse.Namespace) -> Service:
    from voltana.services.telemetry import TelemetryService, TelemetrySettings

    return TelemetryService(
        TelemetrySettings(
            listen_address=args.listen,
            redis_url=args.redis_url,
            redis_password=redis_password_from_args(args),
            redis_key_prefix=args.redis_key_prefix,
            window_s=args.window_s,
            instance_ttl_s=args.instance_ttl_s,
            replay_journal_cap=args.replay_journal_cap,
            replay_journal_s=args.replay_journal_s,
            aggregates_rate_per_s=args.aggregates_rate,
            slo=slo_from_args(args),
            metrics_listen_address=metrics_address(args),
            security=security_from_args(args),
        )
    )


# ---- controller ------------------------------------------------------------------------------


def _add_controller(
    services: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = services.add_parser(
        "controller", help="frequency controller: policies → clocks on node agents"
    )
    _listen_arg(parser, CONTROLLER_PORT)
    _telemetry_arg(parser, required_help="to read instance states from")
    _policy_args(parser)
    _hardware_args(parser)
    add_slo_args(parser)
    parser.add_argument(
        "--control-interval-ms",
        type=positive_int,
        default=50,
        help="decide at least this often (default: %(default)s)",
    )
    parser.add_argument(
        "--lease-ttl-ms",
        type=positive_int,
        default=3000,
        help="clock lease asked of agents; a dead controller's clocks reset after it "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--snapshot-mode",
        choices=("watch", "poll"),
        default="watch",
        help="follow telemetry by watch stream or by polling (default: %(default)s)",
    )
    parser.add_argument(
        "--controller-id", default="", help="lease holder name (default: controller@HOST)"
    )
    parser.add_argument(
        "--keep-clocks-on-stop",
        action="store_true",
        help="do not ask agents to reset clocks on stop (leases still lapse)",
    )
    _metrics_args(parser, CONTROLLER_METRICS_PORT)
    parser.set_defaults(handler=run, build=_build_controller, service_name="voltana-controller")
    return parser


def _build_controller(args: argparse.Namespace) -> Service:
    from voltana.services.controller import ControllerService, ControllerSettings

    return ControllerService(
        ControllerSettings(
            telemetry_address=args.telemetry,
            listen_address=args.listen,
            policy=args.policy,
            slo=slo_from_args(args),
            gpu_key=args.gpu,
            model_key=args.model,
            tensor_parallel=args.tp,
            model_config_path=args.model_config,
            profile_path=args.profile,
            control_interval_ms=args.control_interval_ms,
            lease_ttl_ms=args.lease_ttl_ms,
            snapshot_mode=args.snapshot_mode,
            controller_id=args.controller_id,
            security=security_from_args(args),
            reset_clocks_on_stop=not args.keep_clocks_on_stop,
            metrics_listen_address=metrics_address(args),
        )
    )


# ---- router ----------------------------------------------------------------------------------


def _add_router(
    services: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = services.add_parser("router", help="places requests on prefill/decode instances")
    _listen_arg(parser, ROUTER_PORT)
    _telemetry_arg(parser, required_help="to watch snapshots from and report completions to")
    _policy_args(parser)
    parser.add_argument(
        "--router", help=f"override the policy's router: {', '.join(router_names())}"
    )
    _hardware_args(parser)
    add_slo_args(parser)
    parser.add_argument(
        "--snapshot-interval-ms",
        type=positive_int,
        default=100,
        help="telemetry watch period (default: %(default)s)",
    )
    parser.add_argument(
        "--default-max-new-tokens",
        type=positive_int,
        default=128,
        help="max_new_tokens of requests that set none (default: %(default)s)",
    )
    parser.add_argument(
        "--max-new-tokens-limit",
        type=positive_int,
        default=16_384,
        help="most tokens a request may ask for (default: %(default)s)",
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=positive_int,
        default=32_768,
        help="longest prompt accepted (default: %(default)s)",
    )
    parser.add_argument(
        "--controller",
        default="",
        metavar="HOST:PORT",
        help="controller to notify of each placement, so the placed instances' clocks are "
        "decided at once; a request placed on a possibly parked idle instance waits for the "
        "new clock (default: none; clocks follow at its next tick)",
    )
    parser.add_argument(
        "--placement-notice-timeout-ms",
        type=positive_int,
        default=100,
        help="longest wait for the controller's answer before dispatching anyway "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--placement-notice-interval-ms",
        type=positive_int,
        default=5,
        help="queued placement notices go at most this often, each covering every placement "
        "since the last (default: %(default)s)",
    )
    parser.add_argument(
        "--instance-stale-after-s",
        type=float,
        default=0.0,
        help="skip instances silent this long; 0 = never (default: %(default)s)",
    )
    parser.add_argument(
        "--snapshot-stale-after-s",
        type=positive_float,
        default=10.0,
        help="mark the cluster snapshot stale (metric, log) when telemetry sent none this "
        "long; requests are still placed on it (default: %(default)s)",
    )
    parser.add_argument(
        "--engine-request-timeout-s",
        type=positive_float,
        default=600.0,
        help="longest engine call when the client sets no deadline (default: %(default)s)",
    )
    parser.add_argument(
        "--max-attempts",
        type=positive_int,
        default=3,
        help="placements per request when engines fail before the first token "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--health-check-interval-s",
        type=non_negative_float,
        default=0.5,
        help="probe every engine's /health this often; 0 = only eject on failed calls "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--router-id",
        default="",
        help="this router's name among active-active routers (their in-flight shares in "
        "telemetry are kept apart by it; default: host name, process id and a random part)",
    )
    _drain_arg(
        parser,
        "health turns NOT_SERVING at once and no new request is taken; those still running "
        "after it end with UNAVAILABLE (a stream that sent its last token finishes)",
    )
    _metrics_args(parser, ROUTER_METRICS_PORT)
    http = parser.add_argument_group("HTTP front door (OpenAI-compatible and SGLang /generate)")
    http.add_argument(
        "--http-port",
        type=port_number,
        default=ROUTER_HTTP_PORT,
        help="serve it on this port of the --listen host; 0 = any free port (default: %(default)s)",
    )
    http.add_argument("--no-http", action="store_true", help="gRPC only")
    http.add_argument(
        "--served-model-name",
        default="",
        help="the model name clients ask for (default: --model's key)",
    )
    _http_limit_args(http)
    add_api_key_args(parser, server=True)
    parser.set_defaults(handler=run, build=_build_router, service_name="voltana-router")
    return parser


def _http_limit_flags() -> tuple[tuple[str, Callable[[str], float], str], ...]:
    """HttpLimits fields set by ``--http-<field with dashes>``, and what each flag means."""
    return (
        ("max_body_bytes", positive_int, "largest request body, bytes"),
        ("header_timeout_s", positive_float, "a request's headers must arrive within this"),
        ("body_timeout_s", positive_float, "its body within this after the headers, else 408"),
        ("keepalive_timeout_s", positive_float, "idle connections are closed after this"),
        (
            "max_connections_per_client",
            non_negative_int,
            "open connections per remote address, more get 429; 0 = no cap",
        ),
    )


def _http_limit_args(group: argparse._ArgumentGroup) -> None:
    from voltana.services.router.http_limits import HttpLimits

    defaults = HttpLimits()
    for name, kind, meaning in _http_limit_flags():
        group.add_argument(
            "--http-" + name.replace("_", "-"),
            type=kind,
            default=getattr(defaults, name),
            help=meaning + " (default: %(default)s)",
        )


def _http_limits(args: argparse.Namespace) -> HttpLimits:
    from voltana.services.router.http_limits import HttpLimits

    return HttpLimits(**{name: getattr(args, "http_" + name) for name, _, _ in _http_limit_flags()})


def _build_router(args: argparse.Namespace) -> Service:
    from voltana.services.router import RouterService, RouterSettings

    return RouterService(
        RouterSettings(
            listen_address=args.listen,
            telemetry_address=args.telemetry,
            controller_address=args.controller,
            placement_notice_timeout_ms=args.placement_notice_timeout_ms,
            placement_notice_interval_ms=args.placement_notice_interval_ms,
            policy=args.policy,
            router=args.router,
            gpu_key=args.gpu,
            model_key=args.model,
            tp=args.tp,
            model_config_path=args.model_config,
            profile_path=args.profile,
            slo=slo_from_args(args),
            snapshot_interval_ms=args.snapshot_interval_ms,
            default_max_new_tokens=args.default_max_new_tokens,
            max_new_tokens_limit=args.max_new_tokens_limit,
            max_prompt_tokens=args.max_prompt_tokens,
            instance_stale_after_s=args.instance_stale_after_s,
            snapshot_stale_after_s=args.snapshot_stale_after_s,
            engine_request_timeout_s=args.engine_request_timeout_s,
            max_attempts=args.max_attempts,
            health_check_interval_s=args.health_check_interval_s,
            shutdown_grace_s=args.drain_s,
            router_id=args.router_id,
            metrics_listen_address=metrics_address(args),
            security=security_from_args(args),
            api_keys=api_keys_from_args(args),
            http_listen_address=(
                None if args.no_http else f"{args.listen.rpartition(':')[0]}:{args.http_port}"
            ),
            served_model_name=args.served_model_name,
            http_limits=_http_limits(args),
        )
    )


# ---- node agent ------------------------------------------------------------------------------


def _add_agent(
    services: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = services.add_parser(
        "agent", help="node agent: applies clocks through NVML (privileged), samples power"
    )
    _listen_arg(parser, AGENT_PORT)
    parser.add_argument(
        "--advertise",
        type=host_port,
        metavar="HOST:PORT",
        help="address the controller dials, reported in samples (default: the bound address)",
    )
    parser.add_argument(
        "--backend",
        choices=("nvml", "sim", "sim-shared"),
        default="nvml",
        help="GPU backend; sim-shared: simulated GPUs shared with `serve engine "
        "--gpu-state-dir` processes (default: %(default)s)",
    )
    parser.add_argument(
        "--sim-state-dir",
        default="",
        metavar="DIR",
        help="sim-shared: directory of the shared GPU state files",
    )
    parser.add_argument(
        "--gpu-index",
        type=non_negative_int,
        action="append",
        default=[],
        metavar="N",
        help="GPU to control, repeatable (default: every GPU; sim: GPU 0)",
    )
    parser.add_argument(
        "--sim-gpu", default="a100-80g", help="GPU type of the sim backend (default: %(default)s)"
    )
    parser.add_argument(
        "--gpu-key", default="", help="catalog GPU type to report (default: from NVML's name)"
    )
    parser.add_argument(
        "--instance",
        type=instance_binding,
        action="append",
        default=[],
        metavar="ID=GPU[,GPU...]",
        help="serving instance ID runs on GPU index GPU (a tensor-parallel one on several), "
        "repeatable",
    )
    parser.add_argument(
        "--telemetry",
        type=host_port,
        metavar="HOST:PORT",
        help="telemetry to stream GPU samples to (default: none)",
    )
    parser.add_argument(
        "--sample-interval-ms",
        type=positive_int,
        default=500,
        help="GPU sampling period (default: %(default)s)",
    )
    parser.add_argument(
        "--default-lease-ttl-ms", type=positive_int, default=10_000, help="default clock lease"
    )
    parser.add_argument(
        "--max-lease-ttl-ms",
        type=positive_int,
        default=30_000,
        help="longest clock lease; longer requests are cut to it (default: %(default)s)",
    )
    parser.add_argument("--node-name", default="", help="name of this host in logs")
    parser.add_argument(
        "--no-reset-on-start",
        action="store_true",
        help="do not reset every GPU to default clocks at start",
    )
    parser.add_argument(
        "--no-failsafe-watchdog",
        action="store_true",
        help="run no watchdog process that resets the GPUs if the agent dies (nvml, sim-shared)",
    )
    _metrics_args(parser, AGENT_METRICS_PORT)
    parser.set_defaults(handler=run, build=_build_agent, service_name="voltana-agent")
    return parser


def _build_agent(args: argparse.Namespace) -> Service:
    from voltana.services.agent import AgentService, AgentSettings

    return AgentService(
        AgentSettings(
            listen_address=args.listen,
            advertise_address=args.advertise or "",
            backend=args.backend,
            gpu_indices=tuple(args.gpu_index),
            sim_gpu_key=args.sim_gpu,
            gpu_key=args.gpu_key,
            instance_gpu_indices=dict(args.instance),
            node_name=args.node_name,
            default_lease_ttl_ms=args.default_lease_ttl_ms,
            max_lease_ttl_ms=args.max_lease_ttl_ms,
            reset_on_start=not args.no_reset_on_start,
            sim_state_dir=args.sim_state_dir,
            failsafe_watchdog=not args.no_failsafe_watchdog,
            telemetry_address=args.telemetry,
            sample_interval_ms=args.sample_interval_ms,
            security=security_from_args(args),
            metrics_listen_address=metrics_address(args),
        )
    )


# ---- simulated engine ------------------------------------------------------------------------


def _add_engine(
    services: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = services.add_parser(
        "engine",
        help="a simulated SGLang server (real GPUs run the official SGLang image instead)",
    )
    _listen_arg(parser, ENGINE_PORT)
    parser.add_argument(
        "--mode",
        choices=[*(mode.value for mode in EngineMode), "unified"],
        default="null",
        help="SGLang --disaggregation-mode; unified = null, a colocated instance that prefills "
        "and decodes (default: %(default)s)",
    )
    parser.add_argument(
        "--bootstrap-port",
        type=port_number,
        default=BOOTSTRAP_PORT,
        help="prefill: KV bootstrap port (default: %(default)s)",
    )
    parser.add_argument(
        "--instance-id", default="", help="id in telemetry (default: MODE@HOST:PORT)"
    )
    parser.add_argument(
        "--advertise-host",
        default="",
        help="host other services reach this engine by (default: the listen host)",
    )
    _hardware_args(parser)
    parser.add_argument(
        "--speedup",
        type=positive_float,
        default=1.0,
        help="simulated time runs X times faster (default: %(default)s)",
    )
    parser.add_argument(
        "--max-running-requests",
        type=positive_int,
        default=1024,
        help="decode batch limit (default: %(default)s)",
    )
    parser.add_argument(
        "--chunked-prefill-size", type=positive_int, default=8192, help="prefill tokens per batch"
    )
    parser.add_argument(
        "--max-total-num-tokens",
        type=non_negative_int,
        default=0,
        help="KV capacity in tokens; 0 = what fits in GPU memory",
    )
    parser.add_argument(
        "--telemetry",
        type=host_port,
        metavar="HOST:PORT",
        help="register with this telemetry and report load to it (default: standalone)",
    )
    parser.add_argument(
        "--report-interval-ms",
        type=positive_float,
        default=250.0,
        help="load report period (default: %(default)s)",
    )
    parser.add_argument(
        "--agent-listen",
        type=host_port,
        metavar="HOST:PORT",
        help="also serve a node agent (sim backend) on this engine's simulated GPU",
    )
    parser.add_argument(
        "--agent-advertise",
        type=host_port,
        metavar="HOST:PORT",
        help="address the controller dials for that agent (default: ADVERTISE_HOST:PORT)",
    )
    parser.add_argument("--gpu-index", type=non_negative_int, default=0, help="GPU index")
    parser.add_argument(
        "--agent",
        type=host_port,
        metavar="HOST:PORT",
        help="a separate node agent that controls this engine's GPU (with --gpu-state-dir)",
    )
    parser.add_argument(
        "--gpu-state-dir",
        default="",
        metavar="DIR",
        help="keep the simulated GPU's state in DIR, shared with a separate `serve agent "
        "--backend sim-shared --sim-state-dir DIR` (default: in this process)",
    )
    parser.add_argument(
        "--sample-interval-ms",
        type=positive_int,
        default=250,
        help="GPU sampling period of the co-hosted agent (default: %(default)s)",
    )
    _drain_arg(parser, "requests still running after it end with an error", default=5.0)
    _metrics_args(parser, AGENT_METRICS_PORT, " the co-hosted agent's (--agent-listen)")
    parser.set_defaults(handler=run, build=_build_engine, service_name="voltana-engine")
    return parser


def _build_engine(args: argparse.Namespace) -> Service:
    from voltana.stack import EngineNode, EngineNodeSettings

    host, _, port = args.listen.rpartition(":")
    # The simulated GPU's physics: a measured profile, a custom model, or the catalog's.
    physics = resolve_physics(
        gpu_key=args.gpu,
        model_key=args.model,
        tensor_parallel=args.tp,
        model_config_path=args.model_config,
        profile_path=args.profile,
    )
    return EngineNode(
        EngineNodeSettings(
            engine=SimEngineSettings(
                host=host.strip("[]"),
                port=int(port),
                mode=args.mode,
                gpu_key=physics.gpu.key,
                model_key=physics.model.key,
                tp=physics.model.tensor_parallel,
                speedup=args.speedup,
                # Prefill: where its KV bootstrap listens; decode: the prefill port requests
                # that name none use.
                bootstrap_port=args.bootstrap_port,
                max_running_requests=args.max_running_requests,
                chunked_prefill_size=args.chunked_prefill_size,
                max_total_num_tokens=args.max_total_num_tokens,
                instance_id=args.instance_id,
                report_interval_ms=args.report_interval_ms,
                drain_timeout_s=args.drain_s,
            ),
            advertise_host=args.advertise_host,
            gpu_state_dir=args.gpu_state_dir,
            agent_address=args.agent or "",
            telemetry_address=args.telemetry,
            agent_listen_address=args.agent_listen,
            agent_advertise_address=args.agent_advertise or "",
            gpu_index=args.gpu_index,
            sample_interval_ms=args.sample_interval_ms,
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


# ---- SGLang instance reporter ----------------------------------------------------------------


def _add_instance(
    services: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = services.add_parser(
        "instance",
        help="register a real SGLang server with telemetry and report its load from /metrics",
    )
    parser.add_argument(
        "--engine-url",
        required=True,
        metavar="URL",
        help="the SGLang server, e.g. http://sglang-prefill:30000",
    )
    parser.add_argument(
        "--advertise-engine-url",
        default="",
        metavar="URL",
        help="URL the router should use (default: --engine-url)",
    )
    parser.add_argument("--instance-id", required=True, help="id of the instance in telemetry")
    parser.add_argument(
        "--mode",
        choices=("prefill", "decode", "unified"),
        required=True,
        help="its --disaggregation-mode; unified: a server without disaggregation (colocated)",
    )
    parser.add_argument(
        "--bootstrap-host", default="", help="prefill: host of its KV bootstrap server"
    )
    parser.add_argument(
        "--bootstrap-port",
        type=port_number,
        default=0,
        help=f"prefill: its --disaggregation-bootstrap-port (SGLang's default: {BOOTSTRAP_PORT})",
    )
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
    parser.add_argument(
        "--gpu",
        default="",
        help=f"GPU type: {', '.join(GPU_CATALOG)} (default: what its node agent detects)",
    )
    parser.add_argument(
        "--gpu-uuids-file",
        default="",
        metavar="PATH",
        help="file with the server's GPU UUIDs, comma-separated (its NVIDIA_VISIBLE_DEVICES); "
        "replaces --gpu-index: the agent says which GPUs those are",
    )
    _telemetry_arg(parser, required_help="to register with and report to")
    parser.add_argument(
        "--interval-ms", type=positive_int, default=250, help="scrape period (default: %(default)s)"
    )
    parser.add_argument(
        "--startup-timeout-s",
        type=positive_float,
        default=1800.0,
        help="wait this long for the server to become healthy (default: %(default)s)",
    )
    parser.set_defaults(handler=run, build=_build_instance, service_name="voltana-instance")
    return parser


def _build_instance(args: argparse.Namespace) -> Service:
    from voltana.contract.state import Phase
    from voltana.services.telemetry import GpuRef
    from voltana.stack.sglang_reporter import SglangInstanceReporter, SglangInstanceSettings

    agent = args.agent or ""
    refs = [GpuRef(address or agent, index) for address, index in (args.gpu_index or [("", 0)])]
    if len(refs) > 1 and any(not ref.agent_address for ref in refs):
        raise ConfigError("--gpu-index N needs --agent; or name the agent: HOST:PORT/N")
    if not agent:
        agent = refs[0].agent_address
    elif refs[0].agent_address != agent:
        raise ConfigError("the first --gpu-index must be a GPU of --agent")
    gpus = tuple(refs) if len(refs) > 1 else ()

    return SglangInstanceReporter(
        SglangInstanceSettings(
            telemetry_address=args.telemetry,
            instance_id=args.instance_id,
            phase=Phase(args.mode),
            engine_url=args.engine_url,
            advertised_engine_url=args.advertise_engine_url,
            gpu_key=args.gpu,
            bootstrap_host=args.bootstrap_host,
            bootstrap_port=args.bootstrap_port,
            agent_address=agent,
            gpu_index=refs[0].gpu_index,
            gpus=gpus,
            gpu_uuids_file=args.gpu_uuids_file,
            interval_ms=args.interval_ms,
            startup_timeout_s=args.startup_timeout_s,
            security=security_from_args(args),
        )
    )


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


# ---- argument types --------------------------------------------------------------------------


def host_port(text: str) -> str:
    """``host:port`` (IPv6 hosts in brackets); the port must be a number in 0..65535."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    port_number(port)
    return text


def host_ports(text: str) -> str:
    """One or more ``host:port`` separated by commas (several active-active routers)."""
    return ",".join(host_port(part.strip()) for part in text.split(","))


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {text!r} is not in 0..65535")
    return port


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def gpu_ref(text: str) -> tuple[str, int]:
    """``N`` (a GPU of --agent) or ``HOST:PORT/N`` (of another node agent) → (address, N)."""
    address, slash, index = text.rpartition("/")
    if slash:
        host_port(address)
    return address, non_negative_int(index)


def instance_binding(text: str) -> tuple[str, int | tuple[int, ...]]:
    """``ID=GPU_INDEX`` → (ID, index); ``ID=0,1`` (a tensor-parallel instance) → (ID, (0, 1))."""
    instance_id, sep, indices = text.rpartition("=")
    if not sep or not instance_id or not indices:
        raise argparse.ArgumentTypeError(f"{text!r} is not ID=GPU_INDEX or ID=GPU,GPU,...")
    parsed = tuple(non_negative_int(index) for index in indices.split(","))
    return instance_id, parsed[0] if len(parsed) == 1 else parsed
