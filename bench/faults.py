"""Fault injection: a multi-process Voltana deployment under Poisson load, one fault at a time.

The deployment is what an operator runs: a real ``redis-server`` (with a password), one
``voltana serve`` process per service (telemetry on Redis, controller, router), and per
instance a simulated SGLang engine (``serve engine --gpu-state-dir``) plus its own node agent
process (``serve agent --backend sim-shared``) controlling that engine's simulated GPU, whose
state lives in a file (so the agent, its fail-safe watchdog and this script see one GPU).
Every process gets the control-plane token from the environment.

Each experiment runs Poisson load through the SDK, injects one fault (SIGKILL or SIGTERM of a
process, poisoned telemetry, an unauthenticated client), brings the process back, and prints:
requests sent / completed / failed by status / silently lost, whether telemetry recorded every
request that reached the router, recovery time and the GPUs' clock state.

- *silently lost* = requests without a status at the client + requests that reached the router
  but that telemetry never recorded (requests refused because the router itself was down
  cannot reach telemetry; they are counted apart as ``router down``).
- *recovery* = from the moment the faulty process answers again (Redis takes connections, a
  service answers gRPC, an engine /health) until the router reports SERVING and telemetry lists
  every instance again, measured every 0.1 s.

    python bench/faults.py                       # every experiment
    python bench/faults.py --only engine-kill --only agent-kill --rate 10
    python bench/faults.py --only burst --burst 1000 --speedup 50    # 1,000 concurrent streams
    python bench/faults.py --json faults.json

Needs ``redis-server`` on PATH (or $VOLTANA_REDIS_SERVER). Leaves nothing running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from voltana.gpu import SharedSimulatedGpu
from voltana.hardware import get_gpu
from voltana.policy.state import Phase
from voltana.rpc import RpcSecurity, create_channel, wait_until_ready
from voltana.rpc.auth import TOKEN_ENV
from voltana.rpc.names import ROUTER_SERVICE, TELEMETRY_SERVICE
from voltana.sdk import GenerationSummary, VoltanaClient, VoltanaClientError
from voltana.services.agent.servicer import AGENT_PRIVILEGED_METHODS
from voltana.services.controller.servicer import CONTROLLER_PRIVILEGED_METHODS
from voltana.services.telemetry import TelemetryClient
from voltana.services.telemetry.servicer import TELEMETRY_PRIVILEGED_METHODS
from voltana.v1 import common_pb2, telemetry_pb2, telemetry_pb2_grpc

GPU_KEY = "a100-80g"
REDIS_PASSWORD_ENV = "VOLTANA_REDIS_PASSWORD"
START_TIMEOUT_S = 60.0
LEASE_TTL_MS = 3000
LOW_CLOCK_POLICY = "static:1005"  # every GPU locked below default while the controller runs
INSTANCES = (
    ("prefill-0", Phase.PREFILL),
    ("prefill-1", Phase.PREFILL),
    ("decode-0", Phase.DECODE),
    ("decode-1", Phase.DECODE),
)
# The router's channel gives up reconnecting quickly: recovery is the server's, not backoff's.
FAST_RECONNECT = {"grpc.max_reconnect_backoff_ms": 300, "grpc.initial_reconnect_backoff_ms": 100}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---- the deployment ----------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout_s: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Deployment:
    """Every process of the deployment, on free loopback ports chosen once (restarts reuse them)."""

    def __init__(self, workdir: Path, *, speedup: float, drain_s: float) -> None:
        self.workdir = workdir
        self.speedup = speedup
        self.token = secrets.token_urlsafe(32)
        self.security = RpcSecurity(token=self.token)
        redis_password = secrets.token_urlsafe(16)
        self.redis_password = redis_password
        env = {**os.environ, TOKEN_ENV: self.token, REDIS_PASSWORD_ENV: redis_password}
        self.ports = {name: free_port() for name in ("redis", "telemetry", "controller", "router")}
        self.telemetry_address = f"127.0.0.1:{self.ports['telemetry']}"
        self.router_address = f"127.0.0.1:{self.ports['router']}"
        voltana = [sys.executable, "-m", "voltana.cli.main", "serve"]
        metrics = ["--metrics-port", "0"]  # one /metrics per process, on any free port
        redis_binary = os.environ.get("VOLTANA_REDIS_SERVER") or shutil.which("redis-server")
        if redis_binary is None:
            raise SystemExit("redis-server not found: apt-get install redis-server")
        self.procs: dict[str, Proc] = {}

        def add(name: str, argv: list[str]) -> None:
            self.procs[name] = Proc(name, argv, workdir / f"{name}.log", env)

        # fmt: off
        add("redis", [
            redis_binary, "--port", str(self.ports["redis"]), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--requirepass", redis_password,
            "--dir", str(workdir),
        ])
        add("telemetry", [
            *voltana, "telemetry", "--listen", self.telemetry_address,
            "--redis-url", f"redis://127.0.0.1:{self.ports['redis']}/0", *metrics,
        ])
        add("controller", [
            *voltana, "controller", "--listen", f"127.0.0.1:{self.ports['controller']}",
            "--telemetry", self.telemetry_address, "--policy", LOW_CLOCK_POLICY,
            "--lease-ttl-ms", str(LEASE_TTL_MS), "--gpu", GPU_KEY, *metrics,
        ])
        self.gpu_dirs: dict[str, Path] = {}
        self.engine_urls: dict[str, str] = {}
        for instance_id, phase in INSTANCES:
            engine_port, agent_port, bootstrap_port = free_port(), free_port(), free_port()
            gpu_dir = workdir / f"gpu-{instance_id}"
            self.gpu_dirs[instance_id] = gpu_dir
            self.engine_urls[instance_id] = f"http://127.0.0.1:{engine_port}"
            add(f"agent-{instance_id}", [
                *voltana, "agent", "--listen", f"127.0.0.1:{agent_port}",
                "--backend", "sim-shared", "--sim-state-dir", str(gpu_dir), "--gpu-index", "0",
                "--sim-gpu", GPU_KEY, "--instance", f"{instance_id}=0",
                "--telemetry", self.telemetry_address, "--sample-interval-ms", "250", *metrics,
            ])
            add(f"engine-{instance_id}", [
                *voltana, "engine", "--listen", f"127.0.0.1:{engine_port}",
                "--mode", phase.value, "--instance-id", instance_id,
                "--bootstrap-port", str(bootstrap_port), "--gpu", GPU_KEY,
                "--speedup", str(speedup), "--telemetry", self.telemetry_address,
                "--gpu-state-dir", str(gpu_dir), "--agent", f"127.0.0.1:{agent_port}",
                "--report-interval-ms", "100", "--drain-s", str(drain_s), *metrics,
            ])
        add("router", [
            *voltana, "router", "--listen", self.router_address,
            "--telemetry", self.telemetry_address, "--policy", LOW_CLOCK_POLICY,
            "--gpu", GPU_KEY, "--drain-s", str(drain_s), *metrics,
            "--http-port", "0",  # the fixed default (8000) may be taken on a shared host
        ])
        # fmt: on

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Redis, telemetry, controller; the engines (they create their GPU files), then their
        agents; the router last. Returns once it serves and the controller lowered the clocks."""
        groups = [
            ["redis"],
            ["telemetry"],
            ["controller"],
            [name for name in self.procs if name.startswith("engine-")],
            [name for name in self.procs if name.startswith("agent-")],
            ["router"],
        ]
        for group in groups:
            for name in group:
                self.procs[name].start()
            for name in group:
                await self.wait_ready(name)
        await until(self.serving, "the deployment to serve", START_TIMEOUT_S)
        await until(self.clocks_low, "the controller to lower every clock", START_TIMEOUT_S)

    async def stop(self) -> None:
        order = ["router", "controller", *[n for n in self.procs if n.startswith("engine-")]]
        order += [n for n in self.procs if n.startswith("agent-")] + ["telemetry", "redis"]
        for name in order:
            self.procs[name].signal(signal.SIGTERM)
            if self.procs[name].wait(20.0) is None:
                self.procs[name].signal(signal.SIGKILL)
                self.procs[name].wait(5.0)

    def kill(self, name: str, sig: signal.Signals) -> None:
        self.procs[name].signal(sig)
        self.procs[name].wait(30.0)

    async def restart(self, name: str) -> float:
        """Start the process again; returns when it answered (monotonic), once it does."""
        proc = self.procs[name]
        if proc.alive():
            proc.signal(signal.SIGKILL)
            proc.wait(5.0)
        proc.start()
        await self.wait_ready(name)
        return time.monotonic()

    async def wait_ready(self, name: str) -> None:
        proc = self.procs[name]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not await self._ready(name):
            if not proc.alive():
                raise RuntimeError(f"{name} exited at start:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready in {START_TIMEOUT_S} s:\n{proc.log_tail()}")
            await asyncio.sleep(0.1)

    async def _ready(self, name: str) -> bool:
        if name == "redis":
            return await tcp_open(self.ports["redis"])
        if name.startswith("engine-"):
            return await http_ok(self.engine_urls[name.removeprefix("engine-")] + "/health")
        argv = self.procs[name].argv
        address = argv[argv.index("--listen") + 1]
        async with create_channel(address, security=self.security) as channel:
            try:
                await wait_until_ready(channel, 0.5)
            except Exception:
                return False
        return True

    # ---- observation -------------------------------------------------------------------------

    async def router_serving(self) -> bool:
        try:
            async with create_channel(self.router_address, options=FAST_RECONNECT) as channel:
                response = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=ROUTER_SERVICE), timeout=0.5
                )
        except grpc.RpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    async def listed_instances(self) -> set[str]:
        try:
            async with TelemetryClient(self.telemetry_address, timeout_s=0.5) as client:
                _, infos = await client.snapshot_with_endpoints()
        except Exception:
            return set()
        return {i for i, info in infos.items() if info.engine_url}

    async def serving(self) -> bool:
        expected = {instance_id for instance_id, _ in INSTANCES}
        return await self.router_serving() and await self.listed_instances() >= expected

    def redis(self) -> aioredis.Redis:
        """A client of the deployment's Redis (the bench's own: to corrupt and repair it)."""
        return aioredis.Redis(
            port=self.ports["redis"], password=self.redis_password, decode_responses=True
        )

    async def telemetry_health(self) -> str:
        try:
            async with create_channel(self.telemetry_address, options=FAST_RECONNECT) as channel:
                response = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=TELEMETRY_SERVICE), timeout=0.5
                )
        except grpc.RpcError as error:
            return error.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def clocks_mhz(self) -> dict[str, int]:
        spec = get_gpu(GPU_KEY)
        return {
            instance_id: SharedSimulatedGpu(spec, 0, state_dir=gpu_dir).sm_clock_mhz()
            for instance_id, gpu_dir in self.gpu_dirs.items()
        }

    async def clocks_low(self) -> bool:
        default = get_gpu(GPU_KEY).default_sm_clock_mhz
        return all(mhz < default for mhz in self.clocks_mhz().values())

    async def recorded_since(self, since_wall_s: float) -> int:
        """Requests telemetry recorded as finished since ``since_wall_s`` (completed or not)."""
        async with TelemetryClient(self.telemetry_address, timeout_s=5.0) as client:
            report = await client.window_report(max(1.0, time.time() - since_wall_s))
        return report.cluster.finished


async def tcp_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def http_ok(url: str) -> bool:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session,
            session.get(url) as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float) -> float:
    """Seconds until ``condition()`` held (RuntimeError after ``timeout_s``)."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


# ---- load ----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    request_id: str
    sent_at_s: float  # monotonic
    status: str  # "OK", a gRPC code name, or "NO_STATUS"
    router_down: bool = False  # the router itself could not be reached
    decode_instance: str = ""
    finished_at_s: float = 0.0


def _router_unreachable(error: VoltanaClientError) -> bool:
    details = error.message.lower()
    return error.code == grpc.StatusCode.UNAVAILABLE and (
        "failed to connect" in details or "connection refused" in details
    )


async def one_request(
    client: VoltanaClient, request_id: str, prompt_tokens: int, output_tokens: int, timeout_s: float
) -> Outcome:
    outcome = Outcome(request_id, time.monotonic(), "NO_STATUS")
    try:
        stream = client.generate(
            input_ids=[1000 + i % 5000 for i in range(prompt_tokens)],
            max_new_tokens=output_tokens,
            ignore_eos=True,
            request_id=request_id,
            timeout_s=timeout_s,
        )
        async for event in stream:
            if isinstance(event, GenerationSummary):
                outcome.status = "OK"
                outcome.decode_instance = event.decode_instance
    except VoltanaClientError as error:
        outcome.status = error.code.name if error.code is not None else "NO_STATUS"
        outcome.router_down = _router_unreachable(error)
    except Exception as error:  # nothing should get here: it would be a request without status
        print(f"  request {request_id}: {type(error).__name__}: {error}", file=sys.stderr)
    outcome.finished_at_s = time.monotonic()
    return outcome


class PoissonLoad:
    def __init__(self, address: str, *, rate_rps: float, seed: int, timeout_s: float) -> None:
        self._address = address
        self._rate_rps = rate_rps
        self._random = random.Random(seed)
        self._timeout_s = timeout_s
        self._stop = asyncio.Event()
        self.outcomes: list[Outcome] = []

    def stop(self) -> None:
        self._stop.set()

    async def run(self, label: str) -> list[Outcome]:
        tasks: list[asyncio.Task[Outcome]] = []
        async with VoltanaClient(self._address, channel_options=FAST_RECONNECT) as client:
            index = 0
            while not self._stop.is_set():
                prompt = self._random.randint(128, 512)
                output = self._random.randint(32, 128)
                tasks.append(
                    asyncio.create_task(
                        one_request(client, f"{label}-{index}", prompt, output, self._timeout_s)
                    )
                )
                index += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._stop.wait(), self._random.expovariate(self._rate_rps)
                    )
            self.outcomes = list(await asyncio.gather(*tasks))
        return self.outcomes


# ---- experiments -------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    fault: str
    sent: int = 0
    completed: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    router_down: int = 0
    no_status: int = 0
    recorded: int | None = None
    silently_lost: int | None = None
    recovery_s: float | None = None
    clocks: str = ""
    notes: list[str] = field(default_factory=list)

    def account(self, outcomes: Sequence[Outcome]) -> None:
        self.sent = len(outcomes)
        self.completed = sum(o.status == "OK" for o in outcomes)
        self.failed = dict(
            Counter(o.status for o in outcomes if o.status not in ("OK", "NO_STATUS"))
        )
        self.router_down = sum(o.router_down for o in outcomes)
        self.no_status = sum(o.status == "NO_STATUS" for o in outcomes)


@dataclass
class Options:
    rate_rps: float
    warmup_s: float
    down_s: float
    after_s: float
    timeout_s: float
    burst: int
    burst_timeout_s: float


Experiment = Callable[[Deployment, Options, Result], Awaitable[None]]


async def measure_recovery(deployment: Deployment, since: float, result: Result) -> None:
    """Seconds from ``since`` (monotonic) until the deployment serves again."""
    await until(deployment.serving, "the deployment to serve again", 60.0)
    result.recovery_s = time.monotonic() - since


def kill_and_restart(process: str, sig: signal.Signals) -> Experiment:
    async def run(deployment: Deployment, options: Options, result: Result) -> None:
        deployment.kill(process, sig)
        await asyncio.sleep(options.down_s)
        back = await deployment.restart(process)
        await measure_recovery(deployment, back, result)

    return run


async def redis_kill(deployment: Deployment, options: Options, result: Result) -> None:
    # Redis restarts empty: what telemetry held so far goes with it; count it first.
    result.recorded = await deployment.recorded_since(result_started_wall[result.name])
    deployment.kill("redis", signal.SIGKILL)
    await asyncio.sleep(options.down_s)
    back = await deployment.restart("redis")
    await measure_recovery(deployment, back, result)
    result.notes.append(f"{result.recorded} records counted before Redis died (it restarts empty)")


async def controller_kill(deployment: Deployment, options: Options, result: Result) -> None:
    default = get_gpu(GPU_KEY).default_sm_clock_mhz
    before = deployment.clocks_mhz()
    killed = time.monotonic()
    deployment.kill("controller", signal.SIGKILL)

    async def all_default() -> bool:
        return all(mhz == default for mhz in deployment.clocks_mhz().values())

    took_s = await until(all_default, "clocks back to default", LEASE_TTL_MS / 1000.0 + 5.0)
    result.clocks = (
        f"{sorted(set(before.values()))} -> {default} MHz in {took_s:.2f} s "
        f"(lease {LEASE_TTL_MS / 1000:g} s)"
    )
    await asyncio.sleep(max(0.0, options.down_s - (time.monotonic() - killed)))
    back = await deployment.restart("controller")
    await measure_recovery(deployment, back, result)


def agent_fault(instance_id: str, sig: signal.Signals) -> Experiment:
    async def run(deployment: Deployment, options: Options, result: Result) -> None:
        default = get_gpu(GPU_KEY).default_sm_clock_mhz
        before = deployment.clocks_mhz()[instance_id]
        deployment.kill(f"agent-{instance_id}", sig)
        killed = time.monotonic()

        async def at_default() -> bool:
            return deployment.clocks_mhz()[instance_id] == default

        took_s = await until(at_default, "the GPU back at default", LEASE_TTL_MS / 1000.0 + 5.0)
        result.clocks = f"{instance_id}: {before} -> {default} MHz {took_s:.2f} s after the kill"
        await asyncio.sleep(max(0.0, options.down_s - (time.monotonic() - killed)))
        back = await deployment.restart(f"agent-{instance_id}")
        await measure_recovery(deployment, back, result)

    return run


def engine_fault(instance_id: str, sig: signal.Signals) -> Experiment:
    async def run(deployment: Deployment, options: Options, result: Result) -> None:
        died_wall = time.time()
        deployment.kill(f"engine-{instance_id}", sig)
        await asyncio.sleep(options.down_s)
        # Routed to the dead engine >= 1 s after its death: records naming it since then.
        async with TelemetryClient(deployment.telemetry_address, timeout_s=5.0) as client:
            report = await client.window_report(
                max(0.1, time.time() - died_wall - 1.0), instance_ids=[instance_id]
            )
        routed = report.instances[instance_id].finished if instance_id in report.instances else 0
        result.notes.append(f"requests placed on {instance_id} >= 1 s after it died: {routed}")
        back = await deployment.restart(f"engine-{instance_id}")
        await measure_recovery(deployment, back, result)

    return run


async def poisoned_telemetry(deployment: Deployment, options: Options, result: Result) -> None:
    """A reporter holding the token sends garbage: telemetry refuses it and keeps serving."""
    outcomes: list[str] = []
    metadata = (("authorization", f"Bearer {deployment.token}"),)
    async with create_channel(deployment.telemetry_address) as channel:
        stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)

        async def attempt(label: str, call: Awaitable[Any]) -> None:
            try:
                response = await call
                rejected = getattr(response, "rejected", 0)
                outcomes.append(f"{label}: OK (rejected {rejected})")
            except grpc.RpcError as error:
                outcomes.append(f"{label}: {error.code().name}")

        future = telemetry_pb2.InstanceSample(
            instance_id="decode-0", observed_at_s=4_000_000_000.0, running_batch=1
        )  # year 2096
        await attempt(
            "sample stamped 2096",
            stub.ReportInstanceSamples(iter([future]), metadata=metadata, timeout=5.0),
        )
        huge = telemetry_pb2.RegisterInstanceRequest(
            instance_id="x" * 10_000_000,
            phase=common_pb2.PHASE_DECODE,
            gpu_key=GPU_KEY,
        )
        await attempt(
            "10 MB instance id", stub.RegisterInstance(huge, metadata=metadata, timeout=10.0)
        )
        garbage = channel.unary_unary(
            "/voltana.v1.TelemetryService/RegisterInstance",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        await attempt(
            "garbage bytes", garbage(b"\xff\x00garbage\xfe" * 100, metadata=metadata, timeout=5.0)
        )
    # The poisoned instance keeps moving: its later samples are still taken.
    async with TelemetryClient(deployment.telemetry_address) as client:
        first = (await client.snapshot()).decode["decode-0"].observed_at_s
        await asyncio.sleep(1.0)
        later = (await client.snapshot()).decode["decode-0"].observed_at_s
    outcomes.append(f"decode-0 state {'moves on' if later > first else 'FROZEN'}")
    result.notes.extend(outcomes)


async def unauthenticated(deployment: Deployment, options: Options, result: Result) -> None:
    """Every privileged RPC without a token, then with a wrong one: each must be refused."""
    targets = {
        deployment.telemetry_address: TELEMETRY_PRIVILEGED_METHODS,
        f"127.0.0.1:{deployment.ports['controller']}": CONTROLLER_PRIVILEGED_METHODS,
    }
    agent_argv = deployment.procs["agent-decode-0"].argv
    targets[agent_argv[agent_argv.index("--listen") + 1]] = AGENT_PRIVILEGED_METHODS
    refused: Counter[str] = Counter()
    accepted: list[str] = []
    for address, methods in targets.items():
        async with create_channel(address) as channel:
            for method in sorted(methods):
                for label, metadata in (
                    ("no token", ()),
                    ("wrong token", (("authorization", "Bearer " + "w" * 43),)),
                ):
                    call = channel.unary_unary(
                        method, request_serializer=lambda raw: raw, response_deserializer=bytes
                    )
                    try:
                        await call(b"", metadata=metadata, timeout=5.0)
                        accepted.append(f"{method} ({label})")
                    except grpc.RpcError as error:
                        refused[error.code().name] += 1
    total = sum(refused.values()) + len(accepted)
    result.notes.append(
        f"{total} privileged calls ({total // 2} RPCs x no/wrong token): refused "
        + ", ".join(f"{n} {code}" for code, n in sorted(refused.items()))
        + (f"; ACCEPTED: {accepted}" if accepted else "")
    )


# ---- a store telemetry cannot trust or cannot read ---------------------------------------------

KEY_PREFIX = "voltana:"  # what `voltana serve telemetry` uses
CORRUPT_TARGET = "decode-1"  # the instance whose records are corrupted; the others stay healthy


@dataclass
class TelemetryProbe:
    """What a client polling telemetry every 0.1 s saw: status codes by RPC, snapshots that
    missed a healthy instance, and telemetry's health over time."""

    codes: Counter[str] = field(default_factory=Counter)
    missing_healthy: int = 0
    health: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, status)

    def summary(self) -> str:
        codes = ", ".join(f"{rpc} {n}" for rpc, n in sorted(self.codes.items()))
        return f"{codes}; snapshots missing a healthy instance: {self.missing_healthy}"

    def first(self, status: str, after: float) -> float | None:
        """Seconds from ``after`` until health first read ``status`` (None: never)."""
        times = [t for t, seen in self.health if seen == status and t >= after]
        return times[0] - after if times else None


async def probe_health(deployment: Deployment, stop: asyncio.Event, probe: TelemetryProbe) -> None:
    """Health on its own loop: reads that hang must not stop it from being looked at."""
    while not stop.is_set():
        probe.health.append((time.monotonic(), await deployment.telemetry_health()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def probe_telemetry(
    deployment: Deployment, stop: asyncio.Event, probe: TelemetryProbe, healthy: set[str]
) -> None:
    async with create_channel(deployment.telemetry_address, options=FAST_RECONNECT) as channel:
        stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        while not stop.is_set():
            try:
                snapshot = await stub.GetSnapshot(telemetry_pb2.GetSnapshotRequest(), timeout=2.0)
                probe.codes["snapshot OK"] += 1
                listed = {state.instance_id for state in snapshot.instances}
                probe.missing_healthy += not healthy <= listed
            except grpc.RpcError as error:
                probe.codes[f"snapshot {error.code().name}"] += 1
            try:
                await stub.GetAggregates(
                    telemetry_pb2.GetAggregatesRequest(window_s=60.0), timeout=2.0
                )
                probe.codes["aggregates OK"] += 1
            except grpc.RpcError as error:
                probe.codes[f"aggregates {error.code().name}"] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)


@contextlib.asynccontextmanager
async def probing(deployment: Deployment, healthy: set[str]) -> Any:
    probe, stop = TelemetryProbe(), asyncio.Event()
    tasks = [
        asyncio.create_task(probe_telemetry(deployment, stop, probe, healthy)),
        asyncio.create_task(probe_health(deployment, stop, probe)),
    ]
    try:
        yield probe
    finally:
        stop.set()
        await asyncio.gather(*tasks)


Check = Callable[[aioredis.Redis], Awaitable[bool]]


def _corruptions() -> list[tuple[str, Callable[[aioredis.Redis], Awaitable[Any]], Check]]:
    """(key kind, corruption, whether it was repaired) for every kind of key telemetry keeps."""
    target, p = CORRUPT_TARGET, KEY_PREFIX
    info, state, gpu = f"{p}info:{target}", f"{p}state:{target}", f"{p}gpu:{target}"
    series, seen = f"{p}series:{target}:energy_j", f"{p}seen"
    completions, log, instances = f"{p}completions", f"{p}completion_log", f"{p}instances"
    garbage = "{not json"

    async def retype(redis: aioredis.Redis, key: str) -> None:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.set(key, "not what you think")
            await pipe.execute()

    async def typed(redis: aioredis.Redis, key: str, kind: str) -> bool:
        return await redis.type(key) in (kind, "none")

    async def log_clean(redis: aioredis.Redis) -> bool:
        entries = (
            await redis.xrange(log, count=100_000) if await typed(redis, log, "stream") else []
        )
        return all(fields.get("c") != garbage for _, fields in entries)

    return [
        ("info: bad phase", lambda r: r.hset(info, "phase", "bogus"),
         lambda r: _not_equal(r.hget(info, "phase"), "bogus")),
        ("info: wrong type", lambda r: retype(r, info), lambda r: typed(r, info, "hash")),
        ("state: negative", lambda r: r.hset(state, "queue_len", "-5"),
         lambda r: _not_equal(r.hget(state, "queue_len"), "-5")),
        ("state: wrong type", lambda r: retype(r, state), lambda r: typed(r, state, "hash")),
        ("gpu: nan power", lambda r: r.hset(gpu, "power_w", "nan"),
         lambda r: _not_equal(r.hget(gpu, "power_w"), "nan")),
        ("gpu: wrong type", lambda r: retype(r, gpu), lambda r: typed(r, gpu, "hash")),
        ("instances: wrong type", lambda r: retype(r, instances),
         lambda r: typed(r, instances, "set")),
        ("series: garbage", lambda r: r.rpush(series, "garbage"),
         lambda r: _lacks(r.lrange(series, 0, -1), "garbage")),
        ("series: wrong type", lambda r: retype(r, series), lambda r: typed(r, series, "list")),
        ("completions: non-JSON", lambda r: r.zadd(completions, {garbage: time.time()}),
         lambda r: _is_none(r.zscore(completions, garbage))),
        ("completions: wrong type", lambda r: retype(r, completions),
         lambda r: typed(r, completions, "zset")),
        ("completion log: non-JSON", lambda r: r.xadd(log, {"c": garbage}), log_clean),
        ("completion log: wrong type", lambda r: retype(r, log), lambda r: typed(r, log, "stream")),
        ("seen: garbage", lambda r: r.hset(seen, target, "garbage"),
         lambda r: _not_equal(r.hget(seen, target), "garbage")),
        ("seen: wrong type", lambda r: retype(r, seen), lambda r: typed(r, seen, "hash")),
    ]  # fmt: skip


async def _not_equal(value: Awaitable[Any], bad: str) -> bool:
    return await value != bad


async def _lacks(values: Awaitable[Any], bad: str) -> bool:
    return bad not in await values


async def _is_none(value: Awaitable[Any]) -> bool:
    return await value is None


async def corrupt_store(deployment: Deployment, options: Options, result: Result) -> None:
    """Every kind of Redis key telemetry keeps, corrupted in turn under load: telemetry must
    keep answering for the healthy instances (0 INTERNAL) and each bad record must go (repaired
    by telemetry's upkeep, or rewritten by a fresh report first)."""
    healthy = {instance_id for instance_id, _ in INSTANCES} - {CORRUPT_TARGET}
    redis = deployment.redis()
    repaired = 0
    cases = _corruptions()
    try:
        async with probing(deployment, healthy) as probe:
            for kind, corrupt, healed in cases:
                await corrupt(redis)
                try:
                    took_s = await until(lambda h=healed: h(redis), f"{kind} repaired", 20.0)
                    repaired += 1
                    result.notes.append(f"{kind} gone in {took_s:.1f} s")
                except RuntimeError:
                    result.notes.append(f"{kind} STILL THERE after 20 s")
            # The corrupted instance is whole again (its reporter registered it again).
            back = time.monotonic()
            await measure_recovery(deployment, back, result)
    finally:
        await redis.aclose()
    internal = sum(n for rpc, n in probe.codes.items() if rpc.endswith("INTERNAL"))
    unhealthy = sum(status != "SERVING" for _, status in probe.health)
    result.notes.insert(
        0,
        f"{repaired}/{len(cases)} bad records gone; probes: {probe.summary()}; INTERNAL {internal}; "
        f"health not SERVING in {unhealthy}/{len(probe.health)} checks",
    )


async def _store_fault(
    deployment: Deployment,
    options: Options,
    result: Result,
    *,
    inject: Callable[[], Awaitable[None]],
    restore: Callable[[], Awaitable[None]],
    down_s: float,
) -> None:
    """Telemetry's health while its store is faulty and after: NOT_SERVING how soon, SERVING
    again how soon; what readers got meanwhile."""
    every = {instance_id for instance_id, _ in INSTANCES}
    async with probing(deployment, every) as probe:
        await asyncio.sleep(0.5)
        faulty = time.monotonic()
        await inject()
        await asyncio.sleep(down_s)
        restored = time.monotonic()
        await restore()
        await until(lambda: _serving_since(probe, restored), "telemetry SERVING again", 30.0)
        await measure_recovery(deployment, restored, result)
    not_serving = probe.first("NOT_SERVING", faulty)
    serving = probe.first("SERVING", restored)
    result.notes.append(
        "health NOT_SERVING "
        + (f"{not_serving:.2f} s after the fault" if not_serving is not None else "NEVER")
        + ", SERVING "
        + (f"{serving:.2f} s after the store was back" if serving is not None else "NEVER")
        + f"; probes: {probe.summary()}"
    )


async def _serving_since(probe: TelemetryProbe, since: float) -> bool:
    return probe.first("SERVING", since) is not None


async def redis_hang(deployment: Deployment, options: Options, result: Result) -> None:
    """SIGSTOP redis-server (it answers nothing, not even an error), then SIGCONT: for longer
    than telemetry's store check may take (5 s) before it counts as failed."""
    process = deployment.procs["redis"]

    async def stop() -> None:
        process.signal(signal.SIGSTOP)

    async def resume() -> None:
        process.signal(signal.SIGCONT)

    down_s = max(options.down_s, 8.0)
    await _store_fault(deployment, options, result, inject=stop, restore=resume, down_s=down_s)


async def store_unreadable(deployment: Deployment, options: Options, result: Result) -> None:
    """Redis answers PING but refuses every read (an ACL), then allows them again."""
    redis = deployment.redis()

    async def refuse() -> None:
        await redis.acl_setuser("default", commands=["-@read"])

    async def allow() -> None:
        await redis.acl_setuser("default", commands=["+@read"])

    try:
        await _store_fault(
            deployment, options, result, inject=refuse, restore=allow, down_s=options.down_s
        )
    finally:
        await allow()
        await redis.aclose()


async def no_fault(deployment: Deployment, options: Options, result: Result) -> None:
    await asyncio.sleep(options.down_s)


# When each experiment's load began (Unix time): its telemetry window starts there.
result_started_wall: dict[str, float] = {}

EXPERIMENTS: dict[str, tuple[str, Experiment]] = {
    "baseline": ("none", no_fault),
    "redis-kill": ("SIGKILL redis-server; restarts empty", redis_kill),
    "telemetry-kill": ("SIGKILL telemetry", kill_and_restart("telemetry", signal.SIGKILL)),
    "controller-kill": ("SIGKILL controller", controller_kill),
    "agent-kill": ("SIGKILL agent of decode-0", agent_fault("decode-0", signal.SIGKILL)),
    "engine-kill": ("SIGKILL engine decode-0", engine_fault("decode-0", signal.SIGKILL)),
    "telemetry-term": ("SIGTERM telemetry", kill_and_restart("telemetry", signal.SIGTERM)),
    "controller-term": ("SIGTERM controller", kill_and_restart("controller", signal.SIGTERM)),
    "router-term": ("SIGTERM router", kill_and_restart("router", signal.SIGTERM)),
    "engine-term": ("SIGTERM engine decode-0", engine_fault("decode-0", signal.SIGTERM)),
    "agent-term": ("SIGTERM agent of decode-0", agent_fault("decode-0", signal.SIGTERM)),
    "poison": ("poisoned telemetry (token holder)", poisoned_telemetry),
    "unauthenticated": ("privileged RPCs without/with a wrong token", unauthenticated),
    "corrupt-store": ("every Redis key kind corrupted in turn", corrupt_store),
    "redis-hang": ("SIGSTOP redis-server, then SIGCONT", redis_hang),
    "store-unreadable": ("Redis refuses reads (ACL), then allows them", store_unreadable),
}


async def run_experiment(deployment: Deployment, name: str, options: Options, seed: int) -> Result:
    fault, inject = EXPERIMENTS[name]
    result = Result(name, fault)
    await until(deployment.serving, "the deployment to serve before the experiment", 60.0)
    await asyncio.sleep(1.0)  # no request of the previous experiment finishes in this window
    started_wall = time.time()
    result_started_wall[name] = started_wall
    load = PoissonLoad(
        deployment.router_address, rate_rps=options.rate_rps, seed=seed, timeout_s=options.timeout_s
    )
    load_task = asyncio.create_task(load.run(name))
    await asyncio.sleep(options.warmup_s)
    fault_at = time.monotonic()
    try:
        await inject(deployment, options, result)
    finally:
        remaining_s = options.after_s - max(0.0, time.monotonic() - fault_at - options.down_s)
        await asyncio.sleep(max(1.0, remaining_s))
        load.stop()
        outcomes = await load_task
    result.account(outcomes)
    await check_records(deployment, result, started_wall)
    return result


async def check_records(deployment: Deployment, result: Result, started_wall: float) -> None:
    """Telemetry must hold a record of every request that reached the router."""
    expected = result.sent - result.router_down
    before = result.recorded or 0  # counted before a Redis restart wiped the store
    deadline = time.monotonic() + 20.0
    recorded = before
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            recorded = before + await deployment.recorded_since(started_wall - 0.5)
            if recorded >= expected:
                break
        await asyncio.sleep(0.5)
    result.recorded = recorded
    result.silently_lost = result.no_status + max(0, expected - recorded)


async def run_burst(deployment: Deployment, options: Options) -> Result:
    """``burst`` short streams at once through the router; each has ``burst_timeout_s``."""
    result = Result(
        "burst", f"{options.burst} concurrent streams, {options.burst_timeout_s:g} s deadline"
    )
    await until(deployment.serving, "the deployment to serve", 60.0)
    await asyncio.sleep(1.0)
    started_wall = time.time()
    started = time.monotonic()
    async with VoltanaClient(deployment.router_address, channel_options=FAST_RECONNECT) as client:
        outcomes = await asyncio.gather(
            *(
                one_request(client, f"burst-{i}", 64, 16, options.burst_timeout_s)
                for i in range(options.burst)
            )
        )
    wall_s = time.monotonic() - started
    result.account(outcomes)
    durations = sorted(o.finished_at_s - o.sent_at_s for o in outcomes)
    result.notes.append(
        f"all done in {wall_s:.1f} s; per-stream p50 {durations[len(durations) // 2]:.2f} s, "
        f"max {durations[-1]:.2f} s"
    )
    await check_records(deployment, result, started_wall)
    return result


# ---- report ------------------------------------------------------------------------------------


def print_table(results: Sequence[Result]) -> None:
    header = (
        f"{'experiment':<16} {'sent':>5} {'ok':>5} {'failed (status)':<34} {'router down':>11} "
        f"{'no status':>9} {'recorded':>8} {'lost':>4} {'recovery':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        failed = ", ".join(f"{code} {n}" for code, n in sorted(r.failed.items())) or "-"
        recovery = f"{r.recovery_s:.2f} s" if r.recovery_s is not None else "-"
        recorded = "-" if r.recorded is None else str(r.recorded)
        lost = "-" if r.silently_lost is None else str(r.silently_lost)
        print(
            f"{r.name:<16} {r.sent:>5} {r.completed:>5} {failed:<34} {r.router_down:>11} "
            f"{r.no_status:>9} {recorded:>8} {lost:>4} {recovery:>8}"
        )
    print()
    for r in results:
        details = [r.fault]
        if r.clocks:
            details.append(f"clocks: {r.clocks}")
        details += r.notes
        print(f"{r.name}: " + "; ".join(details))


async def main_async(args: argparse.Namespace) -> int:
    names = args.only or [*EXPERIMENTS, "burst"]
    unknown = [n for n in names if n not in EXPERIMENTS and n != "burst"]
    if unknown:
        print(
            f"faults.py: unknown experiment(s) {unknown}; known: {[*EXPERIMENTS, 'burst']}",
            file=sys.stderr,
        )
        return 2
    options = Options(
        rate_rps=args.rate,
        warmup_s=args.warmup_s,
        down_s=args.down_s,
        after_s=args.after_s,
        timeout_s=args.timeout_s,
        burst=args.burst,
        burst_timeout_s=args.burst_timeout_s,
    )
    workdir = Path(tempfile.mkdtemp(prefix="voltana-faults-"))
    deployment = Deployment(workdir, speedup=args.speedup, drain_s=args.drain_s)
    results: list[Result] = []
    started = time.monotonic()
    try:
        print(
            f"starting {len(deployment.procs)} processes (logs in {workdir}) ...", file=sys.stderr
        )
        await deployment.start()
        print(f"deployment up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        for index, name in enumerate(names):
            print(f"experiment {name} ...", file=sys.stderr)
            if name == "burst":
                results.append(await run_burst(deployment, options))
            else:
                results.append(await run_experiment(deployment, name, options, args.seed + index))
            r = results[-1]
            print(
                f"  sent {r.sent}, ok {r.completed}, failed {r.failed}, lost {r.silently_lost}, "
                f"recovery {r.recovery_s}",
                file=sys.stderr,
            )
    finally:
        await deployment.stop()
    print()
    print(
        f"Voltana fault injection: 2 prefill + 2 decode simulated {GPU_KEY} engines (speedup "
        f"{args.speedup:g}), each with its own agent process; telemetry on redis-server; "
        f"controller {LOW_CLOCK_POLICY} (lease {LEASE_TTL_MS} ms); Poisson {args.rate:g} req/s "
        f"through the SDK; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print()
    print_table(results)
    if args.json:
        Path(args.json).write_text(
            json.dumps([dataclasses.asdict(r) for r in results], indent=2) + "\n"
        )
    if not args.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all((r.silently_lost or 0) == 0 for r in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="run only this experiment (repeatable)")
    parser.add_argument("--rate", type=float, default=8.0, help="Poisson load, req/s")
    parser.add_argument("--speedup", type=float, default=10.0, help="simulated engines' speedup")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="load before the fault")
    parser.add_argument("--down-s", type=float, default=2.0, help="how long a process stays down")
    parser.add_argument("--after-s", type=float, default=6.0, help="load after it is back")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="each request's deadline")
    parser.add_argument("--drain-s", type=float, default=5.0, help="router and engine drain")
    parser.add_argument("--burst", type=int, default=1000, help="streams of the burst experiment")
    parser.add_argument("--burst-timeout-s", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
