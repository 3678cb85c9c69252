"""docker-compose.yml without a Docker engine: it is `voltana compose`'s default output; it and
other layouts validate against the compose-spec schema (pinned copy) and parse with the
compose-spec parser; every Voltana command is a real `voltana` sub-command whose flags the parser
(and the service's settings) accept, every address one service gives another points at a port
that service listens on, every service waits for what it needs to be healthy, and profiles line
up."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from voltana.cli.main import build_parser, main
from voltana.deploy.compose import ComposeLayout, render_compose, render_prometheus
from voltana.errors import ConfigError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_PATH = ROOT / "docker-compose.yml"
PROMETHEUS_PATH = ROOT / "docker" / "prometheus" / "prometheus.yml"
SCHEMA_PATH = ROOT / "deploy" / "compose-spec" / "compose-spec.json"
# The checked-in file, and layouts the generator must get right too.
LAYOUTS = {
    "checked-in": None,
    "tp2-nixl": ComposeLayout(prefill=1, decode=1, tp=2, transfer_backend="nixl"),
    "2p2d-rdma": ComposeLayout(
        prefill=2, decode=2, gpu_indices=(4, 5, 6, 7), ib_device="mlx5_0", sim_prefill=1
    ),
}
PROFILES = ("gpu", "sim", "observability")
SERVING_PROFILES = ("gpu", "sim")
# Flags whose value is another service's address: HOST:PORT or a URL.
ADDRESS_FLAGS = ("telemetry", "agent", "engine_url", "advertise_engine_url", "redis_url")
OWN_ADDRESS_FLAGS = ("advertise", "agent_advertise")
# ${VAR}, ${VAR:-default} / ${VAR-default}, ${VAR:?error} / ${VAR?error}.
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<word>[^}]*))?\}")
# The secrets `voltana token --env-file .env` writes; compose must refuse to run without them.
SECRETS = {
    "VOLTANA_CONTROL_TOKEN": "compose-test-control-token-0123456789",
    "VOLTANA_REDIS_PASSWORD": "compose-test-redis-password-0123456789",
}


class MissingVariable(Exception):
    pass


def interpolate(value: Any, environment: dict[str, str] | None = None) -> Any:
    """Compose's interpolation with only ``environment`` set: ${VAR:-default} takes the default
    the file documents, ${VAR:?error} fails like compose when VAR is unset or empty."""
    environment = environment or {}

    def substitute(match: re.Match[str]) -> str:
        name, op, word = match["name"], match["op"] or "", match["word"] or ""
        value = environment.get(name)
        if op.endswith("?") and not value:
            raise MissingVariable(f"required variable {name} is missing a value: {word}")
        return value if value else (word if op.endswith("-") else "")

    if isinstance(value, str):
        return _VARIABLE.sub(substitute, value)
    if isinstance(value, list):
        return [interpolate(item, environment) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item, environment) for key, item in value.items()}
    return value


def compose_text(layout: str) -> str:
    chosen = LAYOUTS[layout]
    return COMPOSE_PATH.read_text() if chosen is None else render_compose(chosen)


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def services(layout: str) -> dict[str, dict[str, Any]]:
    document = interpolate(yaml.safe_load(compose_text(layout)), SECRETS)
    services: dict[str, dict[str, Any]] = document["services"]
    return services


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def voltana_services(services: dict[str, dict[str, Any]]) -> Iterator[tuple[str, list[str]]]:
    for name, service in services.items():
        command = command_of(service)
        if command[:1] == ["voltana"]:
            yield name, command


def parse(command: list[str]) -> argparse.Namespace:
    parser = build_parser()
    try:
        return parser.parse_args(command[1:])
    except SystemExit as error:  # argparse exits on a bad flag
        raise AssertionError(f"`{shlex.join(command)}` does not parse") from error


def listening_ports(service: dict[str, Any]) -> set[int]:
    ports = {int(str(port)) for port in service.get("expose", [])}
    for mapping in service.get("ports", []):
        if isinstance(mapping, dict):  # long syntax
            ports.add(int(mapping["target"]))
        else:
            ports.add(int(str(mapping).rsplit(":", 1)[-1]))
    return ports


def profiles_of(service: dict[str, Any]) -> set[str]:
    return set(service.get("profiles", []))


def runs_whenever(referrer: dict[str, Any], target: dict[str, Any]) -> bool:
    """True when ``target`` is up in every profile selection that starts ``referrer``."""
    target_profiles = profiles_of(target)
    if not target_profiles:
        return True
    referrer_profiles = profiles_of(referrer)
    return bool(referrer_profiles) and referrer_profiles <= target_profiles


def split_address(value: str) -> tuple[str, int]:
    if "://" in value:
        parts = urlsplit(value)
        assert parts.hostname and parts.port, f"{value!r} names no host and port"
        return parts.hostname, parts.port
    host, _, port = value.rpartition(":")
    return host, int(port)


def nvidia_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return [d for d in reservations.get("devices", []) if d.get("driver") == "nvidia"]


def flag_value(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


# ---- the tests -------------------------------------------------------------------------------


def test_every_voltana_command_parses_and_builds_its_service(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = dict(voltana_services(services))
    assert {"telemetry", "controller", "router", "agent"} <= set(commands)
    for name, command in commands.items():
        args = parse(command)
        assert args.command == "serve", name
        # Built in the container's environment: the token (and Redis password) come from it.
        with monkeypatch.context() as patch:
            for key in SECRETS:
                patch.delenv(key, raising=False)
            for key, value in services[name].get("environment", {}).items():
                patch.setenv(key, str(value))
            # The settings dataclass validates every value (policy names, ports, GPU keys...).
            service = args.build(args)
        settings = service.settings  # type: ignore[attr-defined]
        assert settings.security.token == SECRETS["VOLTANA_CONTROL_TOKEN"], name
        assert not settings.security.insecure_no_auth, name


def test_every_service_listens_where_its_flags_say(services: dict[str, dict[str, Any]]) -> None:
    for name, command in voltana_services(services):
        args = parse(command)
        ports = listening_ports(services[name])
        for flag in ("listen", "agent_listen"):
            value = getattr(args, flag, None)
            if value is not None:
                assert split_address(value)[1] in ports, f"{name}: --{flag} {value} not exposed"
        if getattr(args, "mode", None) == "prefill" and args.service == "engine":
            assert args.bootstrap_port in ports, f"{name}: bootstrap port not exposed"
    for name, service in services.items():
        command = command_of(service)
        if "sglang.launch_server" in command:
            assert int(flag_value(command, "--port")) in listening_ports(service), name
            if "--disaggregation-bootstrap-port" in command:
                port = int(flag_value(command, "--disaggregation-bootstrap-port"))
                assert port in listening_ports(service), name


def test_every_address_points_at_a_listening_port_of_a_running_service(
    services: dict[str, dict[str, Any]],
) -> None:
    checked = 0
    for name, command in voltana_services(services):
        args = parse(command)
        references = [getattr(args, flag, None) for flag in ADDRESS_FLAGS]
        if getattr(args, "bootstrap_host", ""):
            references.append(f"{args.bootstrap_host}:{args.bootstrap_port}")
        if getattr(args, "otel_endpoint", None):
            references.append(args.otel_endpoint)
        environment = services[name].get("environment", {})
        if environment.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            references.append(environment["OTEL_EXPORTER_OTLP_ENDPOINT"])
        for reference in filter(None, references):
            host, port = split_address(reference)
            assert host in services, f"{name}: {reference} names no service"
            assert port in listening_ports(services[host]), (
                f"{name}: {host} does not listen on {port}"
            )
            assert runs_whenever(services[name], services[host]), f"{name} needs {host} up"
            checked += 1
        for flag in OWN_ADDRESS_FLAGS:
            value = getattr(args, flag, None)
            if value:
                host, port = split_address(value)
                assert host == name and port in listening_ports(services[name]), f"{name}: {value}"
        if getattr(args, "advertise_host", ""):
            assert args.advertise_host == name
    assert checked >= 10


def test_the_checked_in_files_are_the_generators_default_output() -> None:
    assert COMPOSE_PATH.read_text() == render_compose(ComposeLayout()), (
        "docker-compose.yml differs from `voltana compose`'s output: change the generator "
        "(voltana/deploy/compose.py) and run `voltana compose --out docker-compose.yml "
        "--prometheus-out docker/prometheus/prometheus.yml`"
    )
    assert PROMETHEUS_PATH.read_text() == render_prometheus(ComposeLayout())


def test_every_layout_validates_against_the_compose_spec_schema(layout: str) -> None:
    import jsonschema

    # The spec's schema is draft 7 (its "$schema" URL lacks the "#" jsonschema looks up).
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA_PATH.read_text()))
    document = interpolate(yaml.safe_load(compose_text(layout)), SECRETS)
    validator.validate(document)
    # The schema catches what a hand edit could break (here: a bad depends_on condition).
    broken = json.loads(json.dumps(document))
    broken["services"]["router"]["depends_on"]["telemetry"]["condition"] = "service_ready"
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def test_every_layout_parses_with_a_compose_spec_parser(layout: str) -> None:
    from compose_spec import PyCompose

    # Variables interpolated first, as compose does before it parses.
    document = interpolate(yaml.safe_load(compose_text(layout)), SECRETS)
    compose = PyCompose.from_yaml(yaml.safe_dump(document))
    compose.validate()
    assert set(compose.service_names()) == set(document["services"])
    # It refuses what compose would (a malformed healthcheck).
    with pytest.raises(ValueError, match="healthcheck"):
        PyCompose.from_yaml("services:\n  a:\n    image: x\n    healthcheck: {test: 5}\n")


def test_everything_waits_for_what_it_needs_to_be_healthy(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            wanted = condition["condition"]
            assert wanted in ("service_healthy", "service_started"), name
            if wanted == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits on {dependency}"
            elif dependency != "jaeger":  # a scratch image, nothing to check it with
                assert "healthcheck" not in services[dependency], f"{name}: {dependency}"
        if "healthcheck" in service:
            test = service["healthcheck"]["test"]
            if test[0] == "CMD-SHELL" and test[1].startswith("voltana health"):
                parse(shlex.split(test[1]))  # a real command, valid flags
    # The serving path waits for the control plane, the reporters for their server and agent.
    for name, service in services.items():
        command = command_of(service)
        if command[:3] == ["voltana", "serve", "instance"]:
            args = parse(command)
            engine = urlsplit(args.engine_url).hostname
            assert service["depends_on"][engine]["condition"] == "service_healthy", name
            assert service["depends_on"]["agent"]["condition"] == "service_healthy", name


def test_telemetry_is_published_on_the_hosts_loopback_for_bench(
    services: dict[str, dict[str, Any]],
) -> None:
    assert services["telemetry"]["ports"] == ["127.0.0.1:50052:50052"]


def test_the_gpu_type_has_one_source_the_agent(services: dict[str, dict[str, Any]]) -> None:
    for name, command in voltana_services(services):
        args = parse(command)
        if args.service in ("controller", "router"):
            assert "--gpu" not in command, name  # they follow what telemetry reports
        if args.service == "instance":
            assert args.gpu == "" and args.agent, name  # the reporter asks its agent
        if args.service == "agent":
            assert args.gpu_key == "" and args.backend == "nvml", name  # detected (NVML)


def test_compose_command_writes_a_layout(tmp_path: Path) -> None:
    out, prometheus = tmp_path / "compose.yml", tmp_path / "prometheus.yml"
    code = main(
        [
            "compose", "--prefill", "1", "--decode", "2", "--tp", "2",
            "--gpus", "6,7,2,3,4,5", "--transfer-backend", "nixl",
            "--out", str(out), "--prometheus-out", str(prometheus),
        ]
    )  # fmt: skip
    assert code == 0
    text = out.read_text()
    assert text.startswith(
        "# GENERATED by `voltana compose --decode 2 --tp 2 --transfer-backend nixl "
        "--gpus 6,7,2,3,4,5`"
    )
    document = yaml.safe_load(text)
    agent = parse(command_of(document["services"]["agent"]))
    assert dict(agent.instance) == {"prefill-0": (6, 7), "decode-0": (2, 3), "decode-1": (4, 5)}
    assert "sglang-decode-1:30000" in prometheus.read_text()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tp": 2, "gpu_indices": (0, 1, 2)}, "needs 4 GPU indices"),
        ({"gpu_indices": (0, 0)}, "distinct"),
        ({"transfer_backend": "fake"}, "mooncake, nixl"),
        ({"ib_device": "mlx5_0; rm -rf /"}, "not an RDMA device"),
        ({"prefill": 0}, "PD serving needs prefill and decode >= 1"),
        ({"routers": 0}, "routers must be >= 1"),
    ],
)
def test_bad_layouts_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ComposeLayout(**options)


def test_compose_refuses_to_start_without_the_secrets() -> None:
    document = yaml.safe_load(COMPOSE_PATH.read_text())
    for missing in SECRETS:
        present = {key: value for key, value in SECRETS.items() if key != missing}
        with pytest.raises(MissingVariable, match=f"{missing} .*voltana token --env-file"):
            interpolate(document, present)


def test_secrets_reach_every_service_that_needs_them(services: dict[str, dict[str, Any]]) -> None:
    for name, command in voltana_services(services):
        environment = services[name].get("environment", {})
        assert environment.get("VOLTANA_CONTROL_TOKEN") == SECRETS["VOLTANA_CONTROL_TOKEN"], name
        assert "--insecure-no-auth" not in command, name
        # Services bind loopback unless told otherwise; in compose they serve other containers.
        for flag in ("--listen", "--agent-listen"):
            if flag in command:
                assert flag_value(command, flag).startswith("0.0.0.0:"), name
    redis_command = command_of(services["redis"])
    assert flag_value(redis_command, "--requirepass") == SECRETS["VOLTANA_REDIS_PASSWORD"]
    telemetry = services["telemetry"]
    assert telemetry["environment"]["VOLTANA_REDIS_PASSWORD"] == SECRETS["VOLTANA_REDIS_PASSWORD"]
    redis_url = flag_value(command_of(telemetry), "--redis-url")
    assert urlsplit(redis_url).password is None  # the password stays out of ps


def test_depends_on_and_profiles_are_consistent(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert profiles_of(service) <= set(PROFILES), name
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert runs_whenever(service, services[dependency]), f"{name} needs {dependency} up"
        if nvidia_devices(service):
            assert profiles_of(service) == {"gpu"}, f"{name} needs a GPU outside the gpu profile"
    # The control plane runs in both profiles.
    for name in ("redis", "jaeger", "telemetry", "controller", "router"):
        assert not profiles_of(services[name]), name


def test_each_profile_serves_prefill_and_decode_with_controllable_clocks(
    services: dict[str, dict[str, Any]],
) -> None:
    by_profile: dict[str, dict[str, list[str]]] = {
        p: {"prefill": [], "decode": []} for p in SERVING_PROFILES
    }
    for name, command in voltana_services(services):
        args = parse(command)
        if args.service not in ("engine", "instance"):
            continue
        (profile,) = profiles_of(services[name])
        if args.service == "engine":
            assert args.telemetry and args.agent_listen, f"{name} must register and host an agent"
        else:
            assert args.agent, f"{name} registers an instance without a node agent"
        by_profile[profile][args.mode].append(args.instance_id)
    for profile, instances in by_profile.items():
        assert instances["prefill"] and instances["decode"], profile
        every_id = instances["prefill"] + instances["decode"]
        assert len(set(every_id)) == len(every_id), f"{profile}: repeated instance ids"


def test_gpu_profile_binds_instances_agent_and_sglang_to_the_same_gpus(
    services: dict[str, dict[str, Any]],
) -> None:
    agent_args = parse(command_of(services["agent"]))
    assert agent_args.backend == "nvml"
    bindings = {
        instance: (gpus,) if isinstance(gpus, int) else gpus
        for instance, gpus in agent_args.instance
    }
    assert "SYS_ADMIN" in services["agent"]["cap_add"]
    agent_gpus = {str(i) for d in nvidia_devices(services["agent"]) for i in d["device_ids"]}
    assert agent_gpus == {str(i) for i in agent_args.gpu_index}
    for name, command in voltana_services(services):
        args = parse(command)
        if args.service != "instance":
            continue
        gpus = tuple(index for _, index in args.gpu_index)
        assert bindings[args.instance_id] == gpus, name
        engine_host = urlsplit(args.engine_url).hostname
        assert engine_host is not None
        (device,) = nvidia_devices(services[engine_host])
        assert device["device_ids"] == [str(g) for g in gpus], name
        assert {str(g) for g in gpus} <= agent_gpus, name
        sglang = command_of(services[engine_host])
        assert flag_value(sglang, "--disaggregation-mode") == args.mode
        assert int(flag_value(sglang, "--tp-size")) == len(gpus), name
    assert set(bindings) == {
        parse(c).instance_id
        for _, c in voltana_services(services)
        if parse(c).service == "instance"
    }


def test_sglang_uses_the_official_image_and_pd_flags(services: dict[str, dict[str, Any]]) -> None:
    sglang = {n: s for n, s in services.items() if "sglang.launch_server" in command_of(s)}
    assert len(sglang) >= 2
    modes = set()
    for name, service in sglang.items():
        command = command_of(service)
        assert service["image"].startswith("lmsysorg/sglang"), name
        assert command[:3] == ["python3", "-m", "sglang.launch_server"], name
        assert re.fullmatch(r"lmsysorg/sglang:v[0-9.]+\S*", service["image"]), name  # pinned
        assert flag_value(command, "--disaggregation-transfer-backend") in ("mooncake", "nixl")
        assert "--enable-metrics" in command, name  # the instance reporter reads /metrics
        modes.add(flag_value(command, "--disaggregation-mode"))
        # RDMA wiring comes all together or not at all.
        rdma = "--disaggregation-ib-device" in command
        assert rdma == ("/dev/infiniband:/dev/infiniband" in service.get("devices", [])), name
        assert rdma == ("IPC_LOCK" in service.get("cap_add", [])), name
        assert rdma == (service.get("ulimits", {}).get("memlock") == -1), name
    assert modes == {"prefill", "decode"}


def test_trace_viewer_accepts_otlp(services: dict[str, dict[str, Any]]) -> None:
    jaeger = services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one")
    assert str(jaeger["environment"]["COLLECTOR_OTLP_ENABLED"]).lower() == "true"
    assert 4317 in listening_ports(jaeger)


def test_dockerfile_builds_the_voltana_image() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.MULTILINE)
    # Built from a wheel (tests/test_packaging.py builds that wheel the same way).
    assert re.search(r"^RUN pip wheel --no-deps --wheel-dir /dist \.$", dockerfile, re.MULTILINE)
    assert re.search(r"^RUN pip install /dist/voltana-\*\.whl", dockerfile, re.MULTILINE)
    document = yaml.safe_load(COMPOSE_PATH.read_text())
    for name, service in document["services"].items():
        if command_of(service)[:1] == ["voltana"]:
            assert service["build"]["dockerfile"] == "docker/Dockerfile", name


def test_prometheus_scrapes_every_services_metrics_port(
    services: dict[str, dict[str, Any]], layout: str
) -> None:
    prometheus = services["prometheus"]
    assert profiles_of(prometheus) == {"observability"}
    (mount,) = [
        v for v in prometheus["volumes"] if v.endswith(":/etc/prometheus/prometheus.yml:ro")
    ]
    chosen = LAYOUTS[layout]
    text = (ROOT / mount.split(":")[0]).read_text() if chosen is None else render_prometheus(chosen)
    config = yaml.safe_load(text)
    targets = {
        target
        for job in config["scrape_configs"]
        for group in job.get("static_configs", [])
        for target in group["targets"]
    }
    # Replicated services are found by DNS (every replica answers for the service's name).
    targets |= {
        f"{name}:{group['port']}"
        for job in config["scrape_configs"]
        for group in job.get("dns_sd_configs", [])
        for name in group["names"]
    }
    scraped = set()
    for target in targets:
        host, port = split_address(target)
        assert host in services and port in listening_ports(services[host]), target
        scraped.add(target)
    # Every Voltana service that serves /metrics (and every SGLang server) is a target.
    expected = set()
    for name, command in voltana_services(services):
        args = parse(command)
        serves_metrics = hasattr(args, "metrics_port") and not args.no_metrics
        if serves_metrics and (args.service != "engine" or args.agent_listen):
            assert args.metrics_port in listening_ports(services[name]), name
            expected.add(f"{name}:{args.metrics_port}")
        if args.service == "engine":
            expected.add(f"{name}:{split_address(args.listen)[1]}")
    for name, service in services.items():
        if "sglang.launch_server" in command_of(service):
            expected.add(f"{name}:{flag_value(command_of(service), '--port')}")
    assert expected <= scraped, expected - scraped


def test_router_replicas_are_published_apart_and_drain_before_compose_kills_them(
    services: dict[str, dict[str, Any]], layout: str
) -> None:
    router = services["router"]
    replicas = router["deploy"]["replicas"]
    assert replicas == (LAYOUTS[layout] or ComposeLayout()).routers
    assert ComposeLayout().routers >= 2  # active-active by default
    args = parse(command_of(router))
    for mapping, port in zip(
        router["ports"], (split_address(args.listen)[1], args.http_port), strict=True
    ):
        first, _, last = str(mapping["published"]).partition("-")
        assert mapping["target"] == port
        # One host port per replica (a single one could be bound by one replica only).
        assert int(last or first) - int(first) + 1 == replicas
    assert args.drain_s > 0
    assert float(router["stop_grace_period"].removesuffix("s")) > args.drain_s
    # No router id in the file: each replica's default (host name, process id) is its own.
    assert not args.router_id


def test_compose_layouts_with_one_router_publish_single_ports() -> None:
    document = yaml.safe_load(render_compose(ComposeLayout(routers=1)))
    router = document["services"]["router"]
    assert [(p["target"], p["published"]) for p in router["ports"]] == [
        (50051, "50051"),
        (8000, "8000"),
    ]
    assert router["deploy"] == {"replicas": 1}


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboard(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    assert profiles_of(grafana) == {"observability"}
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in grafana["volumes"])
    provisioning = ROOT / next(h for h, c in mounts.items() if c == "/etc/grafana/provisioning")
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    host, port = split_address(datasource["url"])
    assert host == "prometheus" and port in listening_ports(services["prometheus"])
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "voltana.yml").read_text())[
        "providers"
    ]
    dashboards = ROOT / next(h for h, c in mounts.items() if c == provider["options"]["path"])
    dashboard = json.loads((dashboards / "voltana.json").read_text())
    assert dashboard["uid"] == "voltana-overview"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
