"""`voltana compose`: the Docker Compose file (and its Prometheus scrape list) for a PD layout,
colocated (unified) instances beside it or alone.

The checked-in docker-compose.yml and docker/prometheus/prometheus.yml are this module's default
output (tests/test_compose.py checks they match): change the layout here or with flags, never by
hand. What every generated file has:

- profile ``gpu``: one node agent (the only privileged container, all the layout's GPUs), one
  official SGLang container per prefill/decode instance (pinned image, its GPUs, --tp-size, the
  chosen KV transfer backend, optional RDMA wiring) and per colocated instance (launched without
  ``--disaggregation-mode``: it prefills and decodes, no KV transfer), and one ``voltana serve
  instance`` reporter each. The GPU type comes from the agent (NVML) through telemetry: no service is told it.
- profile ``sim``: simulated engines, each serving a sim-backend agent for its simulated GPU(s).
- profile ``observability``: Prometheus and Grafana.
- Redis, Jaeger, telemetry (published on the host's loopback for ``voltana bench``), the
  controller and the router in every profile; healthchecks on everything that serves, and
  ``depends_on`` with ``condition: service_healthy``, so nothing starts before what it needs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

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
from voltana.deploy.yaml_text import Comment, document
from voltana.errors import ConfigError

TransferBackend = Literal["mooncake", "nixl"]
TRANSFER_BACKENDS: tuple[str, ...] = ("mooncake", "nixl")

# SGLang's official image, pinned (a moving tag would change what runs under a fixed file).
DEFAULT_SGLANG_IMAGE = "lmsysorg/sglang:v0.5.18"
DEFAULT_MODEL_PATH = "meta-llama/Llama-3.1-8B-Instruct"
SECRET_HINT = "create it with `voltana token --env-file .env`"

METRICS_PORTS = {
    "router": ROUTER_METRICS_PORT,
    "telemetry": TELEMETRY_METRICS_PORT,
    "controller": CONTROLLER_METRICS_PORT,
    "agent": AGENT_METRICS_PORT,
}

_VOLTANA_HEALTH = "voltana health --timeout-s 3"
# A router's drain on SIGTERM; compose waits a little longer before it kills.
ROUTER_DRAIN_S = 10
# SGLang loads the model first: its health only counts after this grace.
_SGLANG_START_PERIOD = "900s"
_RDMA_DEVICE = "/dev/infiniband:/dev/infiniband"


@dataclass(frozen=True)
class ComposeLayout:
    """What `voltana compose` generates (its flags)."""

    # Profile gpu: instances per phase, GPUs per instance, the GPU indices they take in order
    # (prefill first, colocated last; default 0, 1, 2, ...).
    prefill: int = 1
    decode: int = 1
    # Colocated (unified) instances: SGLang without disaggregation, beside the PD pair or alone
    # (prefill = decode = 0).
    unified: int = 0
    tp: int = 1
    gpu_indices: tuple[int, ...] = ()
    transfer_backend: str = "mooncake"
    # RDMA NIC(s) for the KV transfer (e.g. "mlx5_0"); "" = no RDMA wiring.
    ib_device: str = ""
    sglang_image: str = DEFAULT_SGLANG_IMAGE
    # Profile sim: simulated instances per phase (TP as above).
    sim_prefill: int = 2
    sim_decode: int = 2
    sim_unified: int = 0
    extra_sglang_args: tuple[str, ...] = field(default=())
    # Active-active router replicas (every profile); replica i is published on the host's
    # router ports + i, so SDK clients can list them all.
    routers: int = 2

    def __post_init__(self) -> None:
        for name in ("tp", "routers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for prefix in ("", "sim_"):
            prefill, decode, unified = (
                getattr(self, prefix + name) for name in ("prefill", "decode", "unified")
            )
            if min(prefill, decode, unified) < 0:
                raise ConfigError(f"{prefix}prefill/decode/unified counts must be >= 0")
            if (prefill < 1) != (decode < 1):
                raise ConfigError(
                    f"PD serving needs {prefix}prefill and {prefix}decode >= 1 (got {prefill} "
                    f"and {decode}); colocated instances alone: {prefix}unified >= 1, "
                    f"{prefix}prefill = {prefix}decode = 0"
                )
            if prefill + unified < 1:
                raise ConfigError(f"the {prefix or 'gpu '}layout has no instance")
        if self.transfer_backend not in TRANSFER_BACKENDS:
            raise ConfigError(
                f"transfer backend must be one of {', '.join(TRANSFER_BACKENDS)}, "
                f"got {self.transfer_backend!r}"
            )
        needed = self.instance_count * self.tp
        if self.gpu_indices:
            if len(self.gpu_indices) != needed:
                raise ConfigError(
                    f"{self.shape} at TP{self.tp} needs {needed} GPU indices, "
                    f"got {len(self.gpu_indices)}"
                )
            if len(set(self.gpu_indices)) != needed or min(self.gpu_indices) < 0:
                raise ConfigError(f"GPU indices must be distinct and >= 0: {self.gpu_indices}")
        if self.ib_device and not re.fullmatch(r"[A-Za-z0-9_.,:-]+", self.ib_device):
            raise ConfigError(f"not an RDMA device name: {self.ib_device!r}")
        if not re.fullmatch(r"[\w./:@-]+", self.sglang_image):
            raise ConfigError(f"not an image reference: {self.sglang_image!r}")

    @property
    def instance_count(self) -> int:
        return self.prefill + self.decode + self.unified

    @property
    def shape(self) -> str:
        """The gpu profile's instances, e.g. 1P1D, 2U, 1P1D+1U."""
        return shape_label(self.prefill, self.decode, self.unified)

    @property
    def sim_shape(self) -> str:
        return shape_label(self.sim_prefill, self.sim_decode, self.sim_unified)

    @property
    def all_gpu_indices(self) -> tuple[int, ...]:
        return self.gpu_indices or tuple(range(self.instance_count * self.tp))

    def instances(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """(instance id, phase, GPU indices) of the gpu profile, prefill first, colocated last."""
        gpus = iter(self.all_gpu_indices)
        result = []
        for phase, count in (
            ("prefill", self.prefill),
            ("decode", self.decode),
            ("unified", self.unified),
        ):
            for n in range(count):
                result.append((f"{phase}-{n}", phase, tuple(next(gpus) for _ in range(self.tp))))
        return result

    def sim_instances(self) -> list[tuple[str, str, tuple[int, ...]]]:
        result, position = [], 0
        for phase, count in (
            ("prefill", self.sim_prefill),
            ("decode", self.sim_decode),
            ("unified", self.sim_unified),
        ):
            for n in range(count):
                gpus = tuple(range(position * self.tp, (position + 1) * self.tp))
                result.append((f"{phase}-{n}", phase, gpus))
                position += 1
        return result


def shape_label(prefill: int, decode: int, unified: int) -> str:
    """E.g. 1P1D, 2U, 1P1D+1U."""
    parts = [f"{prefill}P{decode}D"] if prefill else []
    if unified:
        parts.append(f"{unified}U")
    return "+".join(parts)


def _secret(name: str) -> str:
    return f"${{{name}:?{SECRET_HINT}}}"


def _voltana_env(**extra: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317",
        "VOLTANA_CONTROL_TOKEN": _secret("VOLTANA_CONTROL_TOKEN"),
        **extra,
    }


def _healthy(*services: str, started: Sequence[str] = ()) -> dict[str, Any]:
    conditions: dict[str, Any] = {name: {"condition": "service_healthy"} for name in services}
    conditions.update({name: {"condition": "service_started"} for name in started})
    return conditions


def _grpc_health(port: int, start_period: str = "30s") -> dict[str, Any]:
    return {
        "test": ["CMD-SHELL", f"{_VOLTANA_HEALTH} 127.0.0.1:{port}"],
        "interval": "10s",
        "timeout": "5s",
        "retries": 6,
        "start_period": start_period,
    }


def _voltana(command: list[str], **rest: Any) -> dict[str, Any]:
    service: dict[str, Any] = {
        "image": "voltana:latest",
        "build": {"context": ".", "dockerfile": "docker/Dockerfile"},
        "restart": "unless-stopped",
    }
    profiles = rest.pop("profiles", None)
    if profiles:
        service["profiles"] = profiles
    service.update(rest)
    service.setdefault("environment", _voltana_env())
    service["command"] = command
    return dict(sorted(service.items(), key=lambda item: _key_rank(item[0])))


def _key_rank(key: str) -> float:
    """Compose keys in a fixed order; a "#key" comment goes right before "key"."""
    if key.startswith("#"):
        return _KEY_ORDER.get(key[1:], 99) - 0.5
    return _KEY_ORDER.get(key, 99)


_KEY_ORDER = {
    key: n
    for n, key in enumerate(
        (
            "image", "build", "profiles", "restart", "user", "cap_add", "ipc", "shm_size",
            "ulimits", "devices", "environment", "volumes", "deploy", "command", "expose",
            "ports", "healthcheck", "depends_on", "stop_grace_period",
        )
    )
}  # fmt: skip


def _gpu_reservation(indices: Sequence[int]) -> dict[str, Any]:
    device = {"driver": "nvidia", "device_ids": [str(i) for i in indices], "capabilities": ["gpu"]}
    return {"resources": {"reservations": {"devices": [device]}}}


def _published(port: int, replicas: int) -> dict[str, Any]:
    """A replicated service's port, published on the host at ``port + i`` for replica i (the
    long syntax: the short one cannot map a host range onto one container port)."""
    host = str(port) if replicas == 1 else f"{port}-{port + replicas - 1}"
    return {"target": port, "published": host, "protocol": "tcp"}


def router_ports_line(layout: ComposeLayout) -> str:
    if layout.routers == 1:
        return f"router {ROUTER_PORT} (HTTP front door {ROUTER_HTTP_PORT})"
    last = layout.routers - 1
    return (
        f"routers {ROUTER_PORT}-{ROUTER_PORT + last} (HTTP front doors "
        f"{ROUTER_HTTP_PORT}-{ROUTER_HTTP_PORT + last})"
    )


def _control_plane(layout: ComposeLayout) -> dict[str, Any]:
    return {
        "redis": {
            "image": "redis:7-alpine",
            "restart": "unless-stopped",
            "environment": {"VOLTANA_REDIS_PASSWORD": _secret("VOLTANA_REDIS_PASSWORD")},
            "#": Comment("Redis rewrites its process title, so the password does not stay in ps."),
            "command": [
                "redis-server",
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                _secret("VOLTANA_REDIS_PASSWORD"),
            ],
            "expose": ["6379"],
            "healthcheck": {
                "test": [
                    "CMD-SHELL",
                    'REDISCLI_AUTH="$$VOLTANA_REDIS_PASSWORD" redis-cli ping | grep -q PONG',
                ],
                "interval": "5s",
                "timeout": "3s",
                "retries": 10,
            },
        },
        "jaeger": {
            "#": Comment(
                "Trace viewer; receives OTLP over gRPC on 4317 (a scratch image: no shell"
                "\nfor a healthcheck)."
            ),
            "image": "jaegertracing/all-in-one:1.62.0",
            "restart": "unless-stopped",
            "environment": {"COLLECTOR_OTLP_ENABLED": "true"},
            "expose": ["4317"],
            "ports": ["16686:16686"],
        },
        "telemetry": _voltana(
            [
                "voltana",
                "serve",
                "telemetry",
                "--listen",
                f"0.0.0.0:{TELEMETRY_PORT}",
                "--redis-url",
                "redis://redis:6379/0",
                "--metrics-port",
                str(METRICS_PORTS["telemetry"]),
            ],
            environment=_voltana_env(VOLTANA_REDIS_PASSWORD=_secret("VOLTANA_REDIS_PASSWORD")),
            expose=[str(TELEMETRY_PORT), str(METRICS_PORTS["telemetry"])],
            **{"#ports": Comment("On the host's loopback too, for `voltana bench --telemetry`.")},
            ports=[f"127.0.0.1:{TELEMETRY_PORT}:{TELEMETRY_PORT}"],
            healthcheck=_grpc_health(TELEMETRY_PORT),
            depends_on=_healthy("redis", started=["jaeger"]),
        ),
        "controller": _voltana(
            [
                "voltana",
                "serve",
                "controller",
                "--listen",
                f"0.0.0.0:{CONTROLLER_PORT}",
                "--telemetry",
                f"telemetry:{TELEMETRY_PORT}",
                "--policy",
                "${VOLTANA_POLICY:-voltana}",
                "--model",
                "${VOLTANA_MODEL:-llama-3.1-8b}",
                "--metrics-port",
                str(METRICS_PORTS["controller"]),
            ],
            expose=[str(CONTROLLER_PORT), str(METRICS_PORTS["controller"])],
            healthcheck=_grpc_health(CONTROLLER_PORT),
            depends_on=_healthy("telemetry", started=["jaeger"]),
        ),
        "router": _voltana(
            [
                "voltana",
                "serve",
                "router",
                "--listen",
                f"0.0.0.0:{ROUTER_PORT}",
                "--telemetry",
                f"telemetry:{TELEMETRY_PORT}",
                "--controller",
                f"controller:{CONTROLLER_PORT}",
                "--policy",
                "${VOLTANA_POLICY:-voltana}",
                "--model",
                "${VOLTANA_MODEL:-llama-3.1-8b}",
                "--metrics-port",
                str(METRICS_PORTS["router"]),
                "--http-port",
                str(ROUTER_HTTP_PORT),
                "--drain-s",
                str(ROUTER_DRAIN_S),
            ],
            **{
                "#deploy": Comment(
                    "Active-active replicas: they share their placements through telemetry;"
                    "\nclients list every published port (the SDK fails over between them)."
                )
            },
            deploy={"replicas": layout.routers},
            expose=[str(ROUTER_PORT), str(METRICS_PORTS["router"]), str(ROUTER_HTTP_PORT)],
            **{"#ports": Comment("gRPC (the SDK) and HTTP (OpenAI clients, SGLang's /generate).")},
            ports=[
                _published(ROUTER_PORT, layout.routers),
                _published(ROUTER_HTTP_PORT, layout.routers),
            ],
            healthcheck=_grpc_health(ROUTER_PORT),
            depends_on=_healthy("telemetry", "controller", started=["jaeger"]),
            **{
                "#stop_grace_period": Comment(
                    "SIGTERM drains: health NOT_SERVING, no new request, running ones finish."
                )
            },
            stop_grace_period=f"{ROUTER_DRAIN_S + 5}s",
        ),
    }


def _gpu_profile(layout: ComposeLayout) -> dict[str, Any]:
    instances = layout.instances()
    bindings: list[str] = []
    for instance_id, _, gpus in instances:
        bindings += ["--instance", f"{instance_id}={','.join(str(g) for g in gpus)}"]
    gpu_flags: list[str] = []
    for index in layout.all_gpu_indices:
        gpu_flags += ["--gpu-index", str(index)]
    services: dict[str, Any] = {
        "agent": _voltana(
            [
                "voltana", "serve", "agent",
                "--listen", f"0.0.0.0:{AGENT_PORT}",
                "--advertise", f"agent:{AGENT_PORT}",
                "--backend", "nvml",
                *gpu_flags,
                *bindings,
                "--telemetry", f"telemetry:{TELEMETRY_PORT}",
                "--metrics-port", str(METRICS_PORTS["agent"]),
            ],
            profiles=["gpu"],
            **{
                "#image": Comment(
                    "The only privileged container: locks SM clocks through NVML (CAP_SYS_ADMIN;"
                    "\nverify on your host with `voltana doctor --try-lock`), resets every GPU to"
                    "\nits default clocks when it starts and stops, and reports each GPU's type."
                    "\nNo `pid: host`: NVML clock and power calls do not look at other processes."
                )
            },
            user="root",
            cap_add=["SYS_ADMIN"],
            environment=_voltana_env(NVIDIA_DRIVER_CAPABILITIES="utility"),
            deploy=_gpu_reservation(layout.all_gpu_indices),
            expose=[str(AGENT_PORT), str(METRICS_PORTS["agent"])],
            healthcheck=_grpc_health(AGENT_PORT),
            depends_on=_healthy("telemetry", started=["jaeger"]),
        )
    }  # fmt: skip
    for instance_id, phase, gpus in instances:
        sglang = f"sglang-{instance_id}"
        services[sglang] = _sglang(layout, phase, gpus)
        reporter = [
            "voltana", "serve", "instance",
            "--engine-url", f"http://{sglang}:{ENGINE_PORT}",
            "--instance-id", instance_id,
            "--mode", phase,
        ]  # fmt: skip
        if phase == "prefill":
            reporter += ["--bootstrap-host", sglang, "--bootstrap-port", str(BOOTSTRAP_PORT)]
        reporter += ["--agent", f"agent:{AGENT_PORT}"]
        for index in gpus:
            reporter += ["--gpu-index", str(index)]
        reporter += ["--telemetry", f"telemetry:{TELEMETRY_PORT}"]
        services[f"instance-{instance_id}"] = _voltana(
            reporter,
            profiles=["gpu"],
            depends_on=_healthy("telemetry", sglang, "agent", started=["jaeger"]),
        )
    return services


def _sglang(layout: ComposeLayout, phase: str, gpus: tuple[int, ...]) -> dict[str, Any]:
    colocated = phase == "unified"
    command = [
        "python3", "-m", "sglang.launch_server",
        "--model-path", f"${{VOLTANA_MODEL_PATH:-{DEFAULT_MODEL_PATH}}}",
        "--host", "0.0.0.0", "--port", str(ENGINE_PORT),
        "--tp-size", str(len(gpus)),
    ]  # fmt: skip
    if not colocated:  # a colocated server prefills and decodes: no disaggregation, no KV transfer
        command += [
            "--disaggregation-mode", phase,
            "--disaggregation-transfer-backend", layout.transfer_backend,
        ]  # fmt: skip
    if phase == "prefill":
        command += ["--disaggregation-bootstrap-port", str(BOOTSTRAP_PORT)]
    rdma = bool(layout.ib_device) and not colocated
    if rdma:
        command += ["--disaggregation-ib-device", layout.ib_device]
    command += [
        "--enable-metrics",
        # Stream deltas: cumulative chunks resend the whole output every time.
        "--incremental-streaming-output",
        *layout.extra_sglang_args,
    ]
    service: dict[str, Any] = {
        "image": layout.sglang_image,
        "profiles": ["gpu"],
        "restart": "unless-stopped",
        "ipc": "host",
        "shm_size": "16gb",
    }
    if rdma:
        # RDMA for the KV transfer: the verbs devices, and pinned memory without a limit.
        service["cap_add"] = ["IPC_LOCK"]
        service["ulimits"] = {"memlock": -1}
        service["devices"] = [_RDMA_DEVICE]
    service["environment"] = {"HF_TOKEN": "${HF_TOKEN:-}"}
    service["volumes"] = ["${HOME:-/root}/.cache/huggingface:/root/.cache/huggingface"]
    service["deploy"] = _gpu_reservation(gpus)
    service["command"] = command
    expose = [str(ENGINE_PORT)] + ([str(BOOTSTRAP_PORT)] if phase == "prefill" else [])
    service["expose"] = expose
    service["healthcheck"] = {
        # The image's own Python (curl is not promised in every SGLang image).
        "test": [
            "CMD",
            "python3",
            "-c",
            f"import urllib.request; urllib.request.urlopen("
            f"'http://127.0.0.1:{ENGINE_PORT}/health', timeout=4)",
        ],
        "interval": "10s",
        "timeout": "5s",
        "retries": 6,
        "start_period": _SGLANG_START_PERIOD,
    }
    return service


def _sim_profile(layout: ComposeLayout) -> dict[str, Any]:
    services: dict[str, Any] = {}
    for instance_id, phase, gpus in layout.sim_instances():
        name = f"engine-{instance_id}"
        command = [
            "voltana", "serve", "engine",
            "--listen", f"0.0.0.0:{ENGINE_PORT}",
            "--mode", phase,
        ]  # fmt: skip
        if phase == "prefill":
            command += ["--bootstrap-port", str(BOOTSTRAP_PORT)]
        command += [
            "--instance-id", instance_id,
            "--advertise-host", name,
            "--gpu", "${VOLTANA_GPU:-a100-80g}",
            "--model", "${VOLTANA_MODEL:-llama-3.1-8b}",
            "--tp", str(len(gpus)),
            "--telemetry", f"telemetry:{TELEMETRY_PORT}",
            "--agent-listen", f"0.0.0.0:{AGENT_PORT}",
            "--gpu-index", str(gpus[0]),
            "--metrics-port", str(METRICS_PORTS["agent"]),
        ]  # fmt: skip
        ports = [str(ENGINE_PORT)] + ([str(BOOTSTRAP_PORT)] if phase == "prefill" else [])
        services[name] = _voltana(
            command,
            profiles=["sim"],
            expose=[*ports, str(AGENT_PORT), str(METRICS_PORTS["agent"])],
            healthcheck={
                "test": [
                    "CMD-SHELL",
                    f"{_VOLTANA_HEALTH} --http http://127.0.0.1:{ENGINE_PORT}/health",
                ],
                "interval": "10s",
                "timeout": "5s",
                "retries": 6,
                "start_period": "30s",
            },
            depends_on=_healthy("telemetry", started=["jaeger"]),
        )
    return services


def _observability() -> dict[str, Any]:
    return {
        "prometheus": {
            "image": "prom/prometheus:v2.55.1",
            "profiles": ["observability"],
            "restart": "unless-stopped",
            "volumes": ["./docker/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"],
            "command": ["--config.file=/etc/prometheus/prometheus.yml", "--web.listen-address=:9090"],
            "expose": ["9090"],
            "ports": ["9090:9090"],
        },
        "grafana": {
            "#": Comment("Provisioned: the Prometheus datasource and the Voltana dashboard "
                         "(docker/grafana/)."),
            "image": "grafana/grafana-oss:11.3.0",
            "profiles": ["observability"],
            "restart": "unless-stopped",
            "environment": {
                "GF_AUTH_ANONYMOUS_ENABLED": "true",
                "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
                "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH":
                    "/var/lib/grafana/dashboards/voltana/voltana.json",
            },
            "volumes": [
                "./docker/grafana/provisioning:/etc/grafana/provisioning:ro",
                "./docker/grafana/dashboards:/var/lib/grafana/dashboards/voltana:ro",
            ],
            "expose": ["3000"],
            "ports": ["3000:3000"],
            "depends_on": {"prometheus": {"condition": "service_started"}},
        },
    }  # fmt: skip


def layout_flags(layout: ComposeLayout) -> list[str]:
    """The `voltana compose` flags that give ``layout`` (defaults left out)."""
    default = ComposeLayout()
    flags: list[str] = []
    for name, flag in (
        ("prefill", "--prefill"),
        ("decode", "--decode"),
        ("tp", "--tp"),
        ("transfer_backend", "--transfer-backend"),
        ("ib_device", "--ib-device"),
        ("sglang_image", "--sglang-image"),
        ("unified", "--unified"),
        ("sim_prefill", "--sim-prefill"),
        ("sim_decode", "--sim-decode"),
        ("sim_unified", "--sim-unified"),
    ):
        value = getattr(layout, name)
        if value != getattr(default, name):
            flags += [flag, str(value)]
    if layout.gpu_indices:
        flags += ["--gpus", ",".join(str(i) for i in layout.gpu_indices)]
    for arg in layout.extra_sglang_args:
        flags += [f"--sglang-arg={arg}"]
    return flags


def _rdma_line(layout: ComposeLayout) -> str:
    if layout.ib_device:
        return f"over RDMA NIC {layout.ib_device} (/dev/infiniband, IPC_LOCK, unlimited memlock)"
    return "no RDMA wiring (`--ib-device NIC` adds it)"


def _header(layout: ComposeLayout) -> str:
    argv = layout_flags(layout)
    instances = layout.instances()
    gpu_line = ", ".join(
        f"{i} on GPU{'s' if len(g) > 1 else ''} {','.join(map(str, g))}" for i, _, g in instances
    )
    return f"""\
GENERATED by `voltana compose{"".join(" " + arg for arg in argv)}` - do not edit by hand: change
the layout with its flags (or voltana/deploy/compose.py); tests/test_compose.py checks that this
file is the generator's default output.

Voltana on one host: Redis, the Voltana services, a trace viewer, and the serving instances.

  GPU host ({layout.shape}, TP{layout.tp}: {gpu_line}):
      docker compose --profile gpu up
  No GPU ({layout.sim_shape} simulated GPUs and SGLang engines):
      docker compose --profile sim up
  Either, plus Prometheus and Grafana:   docker compose --profile sim --profile observability up

First create the secrets (compose refuses to start without them):

  voltana token --env-file .env    # VOLTANA_CONTROL_TOKEN and VOLTANA_REDIS_PASSWORD

Every Voltana service requires the control-plane token on privileged calls (registration,
reports, SetPolicy/SetSlo, clock changes); Redis requires its password. Clients connect to the
{_routers_line(layout)} (examples/generate.py; `voltana bench --telemetry
127.0.0.1:{TELEMETRY_PORT}` reads energy from telemetry, published on the host's loopback).
Traces are at http://localhost:16686 (Jaeger); with the observability profile, Grafana's
provisioned "Voltana" dashboard is at http://localhost:3000 and Prometheus at :9090.
The GPU type is what the node agent detects (NVML), reported to the controller and router
through telemetry; nothing here names it (simulated engines: VOLTANA_GPU). Variables (shell or
.env file): VOLTANA_POLICY (voltana), VOLTANA_MODEL (llama-3.1-8b), VOLTANA_MODEL_PATH
({DEFAULT_MODEL_PATH}), HF_TOKEN, VOLTANA_GPU (a100-80g, sim only);
secrets (required, no default): VOLTANA_CONTROL_TOKEN, VOLTANA_REDIS_PASSWORD.
KV transfer: {layout.transfer_backend}, {_rdma_line(layout)}
(docs/gpu-host.md: both backends, RDMA).

Ports: {router_ports_line(layout)}, telemetry {TELEMETRY_PORT}, controller {CONTROLLER_PORT}, node agents {AGENT_PORT},
SGLang / simulated engines {ENGINE_PORT} with the KV bootstrap on {BOOTSTRAP_PORT} (prefill), Redis 6379, OTLP 4317.
Prometheus /metrics: router 9401, telemetry 9402, controller 9403, node agents 9404 (engines'
SGLang metrics on {ENGINE_PORT}); docker/prometheus/prometheus.yml (also generated) scrapes them.
"""


def _routers_line(layout: ComposeLayout) -> str:
    if layout.routers == 1:
        return f"router on localhost:{ROUTER_PORT}"
    targets = ",".join(f"localhost:{ROUTER_PORT + i}" for i in range(layout.routers))
    return f"{layout.routers} routers on {targets}"


def _spaced(services: dict[str, Any]) -> dict[str, Any]:
    """The services with an empty line after each."""
    spaced: dict[str, Any] = {}
    for name, service in services.items():
        spaced[name] = service
        spaced[f"#after-{name}"] = Comment("")
    return spaced


def render_compose(layout: ComposeLayout) -> str:
    """The docker-compose.yml text of ``layout``."""
    services: dict[str, Any] = {"#0": Comment("---- every profile: the control plane ----")}
    services.update(_spaced(_control_plane(layout)))
    services["#2"] = Comment(
        "---- profile gpu: the NVML node agent, official SGLang containers, their reporters ----"
        "\nSGLang does not talk to telemetry: one `voltana serve instance` per server registers"
        "\nit (engine URL, bootstrap endpoint, agent and GPUs) and reports its load from /metrics."
    )
    services.update(_spaced(_gpu_profile(layout)))
    services["#4"] = Comment(
        "---- profile sim: simulated SGLang engines, each with a sim-backend node agent ----"
        "\nA simulated GPU lives in its engine's process, so each engine container also serves"
        "\nthe node agent for it: clocks the controller sets there change the engine's speed and"
        "\npower, as on real hardware."
    )
    services.update(_spaced(_sim_profile(layout)))
    services["#6"] = Comment("---- profile observability: Prometheus and Grafana ----")
    services.update(_observability())
    return document(_header(layout), {"name": "voltana", "services": services})


def render_prometheus(layout: ComposeLayout) -> str:
    """docker/prometheus/prometheus.yml: every service's /metrics, in either profile."""
    gpu = [f"sglang-{instance_id}:{ENGINE_PORT}" for instance_id, _, _ in layout.instances()]
    sim_names = [f"engine-{instance_id}" for instance_id, _, _ in layout.sim_instances()]
    body = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "scrape_configs": [
            {
                "job_name": "voltana",
                "static_configs": [
                    {
                        "targets": [
                            f"{name}:{METRICS_PORTS[name]}" for name in ("telemetry", "controller")
                        ]
                    }
                ],
            },
            {
                "job_name": "voltana-router",
                "#dns": Comment("Every router replica: compose's DNS lists them all."),
                "dns_sd_configs": [
                    {"names": ["router"], "type": "A", "port": METRICS_PORTS["router"]}
                ],
            },
            {
                "job_name": "voltana-agent",
                "static_configs": [
                    {"targets": [f"agent:{METRICS_PORTS['agent']}"]},
                    {"targets": [f"{name}:{METRICS_PORTS['agent']}" for name in sim_names]},
                ],
            },
            {
                "job_name": "sglang",
                "static_configs": [
                    {"targets": gpu},
                    {"targets": [f"{name}:{ENGINE_PORT}" for name in sim_names]},
                ],
            },
        ],
    }
    header = (
        "GENERATED by `voltana compose` with docker-compose.yml - do not edit by hand.\n"
        "Prometheus of the compose `observability` profile: scrapes every Voltana service and the\n"
        "engines' SGLang metrics. Targets of the profile that is not running show as down."
    )
    return document(header, body)
