"""Fault injection: a multi-process Voltana deployment under Poisson load, one fault at a time.

The deployment is what an operator runs: a real ``redis-server`` (with a password), one
``voltana serve`` process per service (telemetry on Redis, controller, router), and per
instance a simulated SGLang engine (``serve engine --gpu-state-dir``) plus its own node agent
process (``serve agent --backend sim-shared``) controlling that engine's simulated GPU, whose
state lives in a file (so the agent, its fail-safe watchdog and this script see one GPU).
Every process gets the control-plane token from the environment.

Each experiment runs Poisson load through the SDK, injects one fault (SIGKILL or SIGTERM of a
process, poisoned telemetry, an unauthenticated client, hostile HTTP bodies or slowloris
connections at the router's HTTP door), brings the process back, and prints:
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
    python bench/faults.py --only http-hostile --only http-slowloris --slowloris 600
    python bench/faults.py --routers 2 --only router-kill-ha --only router-term-ha
    python bench/faults.py --only router-restart                     # restart to serving
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

from voltana.contract.state import Phase
from voltana.gpu import SharedSimulatedGpu
from voltana.hardware import get_gpu
from voltana.rpc import RpcSecurity, create_channel, wait_until_ready
from voltana.rpc.auth import TOKEN_ENV
from voltana.rpc.names import ROUTER_SERVICE, TELEMETRY_SERVICE
from voltana.sdk import GenerationSummary, TokenEvent, VoltanaClient, VoltanaClientError
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
# The probes' channels give up reconnecting quickly: recovery is the server's, not backoff's.
# The load's SDK clients keep the SDK's own defaults (reconnect within 0.1-1 s): what they
# measure is what clients get.
# TTFT p99 while telemetry restarts may be at most this many times the baseline's: the
# requests sent before the fault in the same experiment (at least this many seconds of load,
# so host load is alike on both sides), and the baseline experiment's, for reference.
TTFT_BOUND = 2.0
TTFT_PREFAULT_S = 12.0
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

    def cpu_s(self) -> float | None:
        """CPU seconds (user + system) the process used so far (Linux /proc; None elsewhere):
        what a start costs, whatever the host's load makes of it in wall time."""
        if self.process is None:
            return None
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Deployment:
    """Every process of the deployment, on free loopback ports chosen once (restarts reuse them)."""

    def __init__(
        self,
        workdir: Path,
        *,
        speedup: float,
        drain_s: float,
        http_timeout_s: float = 3.0,
        routers: int = 1,
    ) -> None:
        self.workdir = workdir
        self.speedup = speedup
        self.token = secrets.token_urlsafe(32)
        self.security = RpcSecurity(token=self.token)
        redis_password = secrets.token_urlsafe(16)
        self.redis_password = redis_password
        env = {**os.environ, TOKEN_ENV: self.token, REDIS_PASSWORD_ENV: redis_password}
        # Active-active routers: "router" (the one single-router experiments use), "router-1"...
        self.routers = ["router", *(f"router-{i}" for i in range(1, routers))]
        names = ("redis", "telemetry", "controller", *self.routers, "router_http")
        self.ports = {name: free_port() for name in names}
        self.router_metrics_ports = {name: free_port() for name in self.routers}
        self.telemetry_address = f"127.0.0.1:{self.ports['telemetry']}"
        self.router_address = f"127.0.0.1:{self.ports['router']}"
        self.router_addresses = [f"127.0.0.1:{self.ports[name]}" for name in self.routers]
        # The HTTP door the http-* experiments attack: the first router's.
        self.http_url = f"http://127.0.0.1:{self.ports['router_http']}"
        self.http_timeout_s = http_timeout_s
        voltana = [sys.executable, "-m", "voltana.cli.main", "serve"]
        metrics = ["--metrics-port", "0"]  # one /metrics per process, on any free port
        redis_binary = os.environ.get("VOLTANA_REDIS_SERVER") or shutil.which("redis-server")
        if redis_binary is None:
            raise SystemExit("redis-server not found: apt-get install redis-server")
        self.procs: dict[str, Proc] = {}
        self.last_start_cpu_s: float | None = None

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
        for name, address in zip(self.routers, self.router_addresses, strict=True):
            http_port = self.ports["router_http"] if name == "router" else 0
            add(name, [
                *voltana, "router", "--listen", address, "--router-id", name,
                "--telemetry", self.telemetry_address, "--policy", LOW_CLOCK_POLICY,
                "--gpu", GPU_KEY, "--drain-s", str(drain_s),
                "--metrics-port", str(self.router_metrics_ports[name]),
                "--http-port", str(http_port),
                "--http-header-timeout-s", str(http_timeout_s),
                "--http-body-timeout-s", str(http_timeout_s),
                "--http-keepalive-timeout-s", str(http_timeout_s),
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
            self.routers,
        ]
        for group in groups:
            for name in group:
                self.procs[name].start()
            for name in group:
                await self.wait_ready(name)
        await until(self.serving, "the deployment to serve", START_TIMEOUT_S)
        await until(self.clocks_low, "the controller to lower every clock", START_TIMEOUT_S)

    async def stop(self) -> None:
        order = [*self.routers, "controller"]
        order += [n for n in self.procs if n.startswith("engine-")]
        order += [n for n in self.procs if n.startswith("agent-")] + ["telemetry", "redis"]
        for name in order:
            self.procs[name].signal(signal.SIGTERM)
            if self.procs[name].wait(20.0) is None:
                self.procs[name].signal(signal.SIGKILL)
                self.procs[name].wait(5.0)

    def kill(self, name: str, sig: signal.Signals) -> None:
        self.procs[name].signal(sig)
        self.procs[name].wait(30.0)

    async def signal_and_wait(
        self, name: str, sig: signal.Signals, timeout_s: float = 30.0
    ) -> None:
        """Like kill, without blocking the event loop (the load keeps going meanwhile)."""
        proc = self.procs[name]
        proc.signal(sig)
        deadline = time.monotonic() + timeout_s
        while proc.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

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

    async def router_serving(self, name: str | None = None) -> bool:
        """Whether router ``name`` (None: every router) reports SERVING."""
        if name is None:
            return all([await self.router_serving(n) for n in self.routers])
        address = f"127.0.0.1:{self.ports[name]}"
        try:
            async with create_channel(address, options=FAST_RECONNECT) as channel:
                response = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=ROUTER_SERVICE), timeout=0.5
                )
        except grpc.RpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    async def restart_to_serving(self, name: str) -> float:
        """Start router ``name`` again; seconds from the process' start until it serves."""
        proc = self.procs[name]
        if proc.alive():
            proc.signal(signal.SIGKILL)
            proc.wait(5.0)
        started = time.monotonic()
        proc.start()
        while not await self.router_serving(name):
            if not proc.alive():
                raise RuntimeError(f"{name} exited at start:\n{proc.log_tail()}")
            if time.monotonic() - started > START_TIMEOUT_S:
                raise RuntimeError(f"{name} not serving in {START_TIMEOUT_S} s")
            await asyncio.sleep(0.05)
        took_s = time.monotonic() - started
        self.last_start_cpu_s = proc.cpu_s()
        return took_s

    async def router_in_flight(self, name: str) -> int:
        """Requests router ``name`` serves now (its requests_in_flight gauge, every protocol)."""
        url = f"http://127.0.0.1:{self.router_metrics_ports[name]}/metrics"
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session,
            session.get(url) as response,
        ):
            text = await response.text()
        return int(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("voltana_router_requests_in_flight{")
            )
        )

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
    # Seconds from sending to the first token at the client (None without a token).
    ttft_s: float | None = None


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
            if outcome.ttft_s is None and isinstance(event, TokenEvent):
                outcome.ttft_s = time.monotonic() - outcome.sent_at_s
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
    def __init__(
        self, address: str | list[str], *, rate_rps: float, seed: int, timeout_s: float
    ) -> None:
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
        async with VoltanaClient(self._address) as client:
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
    # Router experiments: when the fault hit (monotonic), what the router had in flight then,
    # and seconds from its process' restart until it served.
    fault_at_s: float | None = None
    inflight_at_fault: int | None = None
    failed_after_fault: int | None = None
    restart_s: float | None = None
    restart_cpu_s: float | None = None
    # SIGKILL of a router: the records of its requests in flight die with it (their clients
    # got a status); missing records beyond those are lost.
    records_died_with: int = 0
    # Exact books: telemetry's own aggregates must equal the requests that reached the router
    # (nothing counted before the fault); records counted more than once.
    exact_books: bool = False
    double_counted: int | None = None
    # Client-seen TTFT p99 of every request, of those sent before the fault and of those
    # sent from the fault on, ms.
    ttft_p99_ms: float | None = None
    prefault_ttft_p99_ms: float | None = None
    fault_ttft_p99_ms: float | None = None
    # Whether fault_ttft_p99_ms stayed within TTFT_BOUND x the baseline's (None: not judged).
    judge_ttft: bool = False
    ttft_ok: bool | None = None

    def account(self, outcomes: Sequence[Outcome]) -> None:
        self.sent = len(outcomes)
        self.completed = sum(o.status == "OK" for o in outcomes)
        self.failed = dict(
            Counter(o.status for o in outcomes if o.status not in ("OK", "NO_STATUS"))
        )
        self.router_down = sum(o.router_down for o in outcomes)
        self.no_status = sum(o.status == "NO_STATUS" for o in outcomes)

    def account_ttft(self, outcomes: Sequence[Outcome], fault_at_s: float) -> None:
        self.ttft_p99_ms = ttft_p99_ms(outcomes)
        self.prefault_ttft_p99_ms = ttft_p99_ms([o for o in outcomes if o.sent_at_s < fault_at_s])
        self.fault_ttft_p99_ms = ttft_p99_ms([o for o in outcomes if o.sent_at_s >= fault_at_s])


def ttft_p99_ms(outcomes: Sequence[Outcome]) -> float | None:
    ttfts_s = sorted(o.ttft_s for o in outcomes if o.ttft_s is not None)
    if not ttfts_s:
        return None
    return 1000.0 * ttfts_s[min(len(ttfts_s) - 1, int(0.99 * len(ttfts_s)))]


@dataclass
class Options:
    rate_rps: float
    warmup_s: float
    down_s: float
    after_s: float
    timeout_s: float
    burst: int
    burst_timeout_s: float
    slowloris: int = 600
    probe_s: float = 8.0


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


def router_fault(sig: signal.Signals) -> Experiment:
    """One of two routers killed (SIGKILL) or stopped (SIGTERM: its drain) under load that the
    SDK spreads over both; then restarted, timed from its process' start to SERVING."""

    async def run(deployment: Deployment, options: Options, result: Result) -> None:
        if len(deployment.routers) < 2:
            raise RuntimeError("router experiments need --routers 2 (or more)")
        result.inflight_at_fault = await deployment.router_in_flight("router")
        result.fault_at_s = time.monotonic()
        await deployment.signal_and_wait("router", sig)
        result.notes.append(
            f"router stopped {time.monotonic() - result.fault_at_s:.2f} s after the "
            f"{sig.name} with {result.inflight_at_fault} request(s) in flight"
        )
        await asyncio.sleep(options.down_s)
        result.restart_s = await deployment.restart_to_serving("router")
        result.restart_cpu_s = deployment.last_start_cpu_s
        result.recovery_s = result.restart_s
        if sig is signal.SIGKILL:
            result.records_died_with = result.inflight_at_fault or 0

    return run


async def router_restart(deployment: Deployment, options: Options, result: Result) -> None:
    """The only router SIGTERMed and started again: seconds from its process' start until it
    serves (the SDK reconnects on its own)."""
    result.fault_at_s = time.monotonic()
    await deployment.signal_and_wait("router", signal.SIGTERM)
    result.restart_s = await deployment.restart_to_serving("router")
    result.restart_cpu_s = deployment.last_start_cpu_s
    result.recovery_s = time.monotonic() - result.fault_at_s


async def redis_kill(deployment: Deployment, options: Options, result: Result) -> None:
    # Redis restarts empty; telemetry writes the records it had stored again (books.py), so
    # nothing is counted beforehand.
    deployment.kill("redis", signal.SIGKILL)
    await asyncio.sleep(options.down_s)
    back = await deployment.restart("redis")
    await measure_recovery(deployment, back, result)


def books_fault(process: str, sig: signal.Signals, *, judge_ttft: bool = False) -> Experiment:
    """``process`` killed with ``sig`` and brought back: telemetry's own aggregates must then
    hold every request that reached the router exactly once (nothing is counted beforehand, so
    records a restarted-empty Redis lost must have been replayed); ``judge_ttft``: the TTFT p99
    of the requests sent from the fault on must stay within TTFT_BOUND x the baseline's."""
    restart = kill_and_restart(process, sig)

    async def run(deployment: Deployment, options: Options, result: Result) -> None:
        result.exact_books, result.judge_ttft = True, judge_ttft
        if judge_ttft:  # enough requests before the fault for a p99 of the same minutes
            await asyncio.sleep(max(0.0, TTFT_PREFAULT_S - options.warmup_s))
        result.fault_at_s = time.monotonic()
        await restart(deployment, options, result)

    return run


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


# ---- the HTTP door ------------------------------------------------------------------------------

HTTP_MODEL = "llama-3.1-8b"
# (label, method, path, body): bodies the door must refuse with a 4xx, never a 5xx.
_DEEP = b"[" * 100_000 + b"]" * 100_000
HOSTILE_HTTP: list[tuple[str, str, str, bytes]] = [
    ("max_tokens 1e30", "POST", "/v1/completions", b'{"prompt": "x", "max_tokens": 1e30}'),
    ("max_tokens 10^30", "POST", "/v1/completions", b'{"prompt":"x","max_tokens":1' + b"0" * 30 + b"}"),
    ("max_tokens 4301 digits", "POST", "/v1/completions", b'{"max_tokens":' + b"9" * 4301 + b"}"),
    ("max_tokens -1", "POST", "/v1/completions", b'{"prompt": "x", "max_tokens": -1}'),
    ("max_tokens string", "POST", "/v1/completions", b'{"prompt": "x", "max_tokens": "5"}'),
    ("max_tokens list", "POST", "/v1/completions", b'{"prompt": "x", "max_tokens": [5]}'),
    ("temperature 1e300", "POST", "/v1/completions", b'{"prompt": "x", "temperature": 1e300}'),
    ("temperature 1e999 (inf)", "POST", "/v1/completions", b'{"prompt":"x","temperature":1e999}'),
    ("temperature NaN", "POST", "/v1/completions", b'{"prompt": "x", "temperature": NaN}'),
    ("top_p -Infinity", "POST", "/v1/completions", b'{"prompt": "x", "top_p": -Infinity}'),
    ("seed 10^25", "POST", "/v1/completions", b'{"prompt": "x", "seed": 1' + b"0" * 25 + b"}"),
    ("presence_penalty 9", "POST", "/v1/completions", b'{"prompt": "x", "presence_penalty": 9}'),
    ("ttft_slo_ms 1e308", "POST", "/v1/completions", b'{"prompt": "x", "ttft_slo_ms": 1e308}'),
    ("token id 10^30", "POST", "/v1/completions", b'{"prompt": [1' + b"0" * 30 + b"]}"),
    ("negative token id", "POST", "/v1/completions", b'{"prompt": [5, -1]}'),
    ("prompt object", "POST", "/v1/completions", b'{"prompt": {"a": 1}}'),
    ("prompt unpaired surrogate", "POST", "/v1/completions", b'{"prompt": "\\ud800"}'),
    ("stop number", "POST", "/v1/completions", b'{"prompt": "x", "stop": 5}'),
    ("stop surrogate", "POST", "/v1/completions", b'{"prompt": "x", "stop": ["\\udfff"]}'),
    ("200 stop strings", "POST", "/v1/completions",
     json.dumps({"prompt": "x", "stop": ["s"] * 200}).encode()),
    ("stop_token_ids strings", "POST", "/v1/completions",
     b'{"prompt": "x", "stop_token_ids": ["a"]}'),
    ("n 2", "POST", "/v1/completions", b'{"prompt": "x", "n": 2}'),
    ("unknown parameter", "POST", "/v1/completions", b'{"prompt": "x", "frobnicate": 1}'),
    ("deep JSON (100k)", "POST", "/v1/completions", _DEEP),
    ("deep JSON in a field", "POST", "/v1/completions",
     b'{"prompt": "x", "metadata": ' + _DEEP + b"}"),
    ("unbalanced 100k [", "POST", "/v1/completions", b"[" * 100_000),
    ("invalid UTF-8", "POST", "/v1/completions", b'{"prompt": "\xff\xfe\xfd"}'),
    ("UTF-16 body", "POST", "/v1/completions", '{"prompt": "x"}'.encode("utf-16")),
    ("not JSON", "POST", "/v1/completions", b"{not json"),
    ("empty body", "POST", "/v1/completions", b""),
    ("JSON string", "POST", "/v1/completions", b'"hello"'),
    ("JSON null", "POST", "/v1/completions", b"null"),
    ("huge body (5 MB)", "POST", "/v1/completions",
     b'{"prompt": "' + b"x" * (5 * 2**20) + b'"}'),
    ("2 MB of tiny arrays", "POST", "/v1/completions", b"[" + b"[[[[[[[[]]]]]]]]," * 120_000 + b"0]"),
    ("prompt over the token limit", "POST", "/v1/completions",
     json.dumps({"prompt": "word " * 40_000}).encode()),
    ("tools", "POST", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}'),
    ("response_format json", "POST", "/v1/chat/completions",
     b'{"messages": [{"role":"user","content":"x"}], "response_format": {"type": "json_object"}}'),
    ("messages not a list", "POST", "/v1/chat/completions", b'{"messages": "hi"}'),
    ("message role number", "POST", "/v1/chat/completions", b'{"messages": [{"role": 5}]}'),
    ("image content part", "POST", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}'),
    ("model unknown", "POST", "/v1/chat/completions",
     b'{"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}'),
    ("sglang top_k", "POST", "/generate", b'{"text": "x", "sampling_params": {"top_k": 5}}'),
    ("sglang both prompts", "POST", "/generate", b'{"text": "x", "input_ids": [1]}'),
    ("sglang batch", "POST", "/generate", b'{"input_ids": [[1, 2], [3]]}'),
    ("sglang sampling list", "POST", "/generate", b'{"text": "x", "sampling_params": [1]}'),
    ("unknown path", "POST", "/v1/embeddings", b'{"input": "x"}'),
    ("unknown path GET", "GET", "/admin", b""),
    ("path traversal", "GET", "/../../etc/passwd", b""),
    ("model id unknown", "GET", "/v1/models/gpt-4", b""),
    ("wrong method GET", "GET", "/v1/completions", b""),
    ("wrong method DELETE", "DELETE", "/generate", b""),
    ("wrong method PUT", "PUT", "/v1/models", b"{}"),
]  # fmt: skip
# Raw bytes on a connection: what aiohttp's own parser refuses before the app sees it.
HOSTILE_RAW: list[tuple[str, bytes]] = [
    ("garbage request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
    ("header line of 100 KB", b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"),
    ("Content-Length 10^15", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
     b"Content-Length: 1000000000000000\r\n\r\n{}"),
    ("Content-Length twice", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
     b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
    ("bad chunk size", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"),
]  # fmt: skip


async def _raw_exchange(url: str, raw: bytes, timeout_s: float = 15.0) -> tuple[int, bytes]:
    """Send ``raw`` on a new connection; the answer's HTTP status (0 = none before close) and
    its body (what came before the server closed the connection)."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), timeout_s)
        with contextlib.suppress(ConnectionError, TimeoutError):
            while chunk := await asyncio.wait_for(reader.read(65536), 2.0):
                answer += chunk
    except (ConnectionError, TimeoutError):
        return 0, b""
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return status, body


def _is_error_object(answer: Any) -> bool:
    error_object = answer.get("error") if isinstance(answer, dict) else None
    return isinstance(error_object, dict) and set(error_object) == {
        "message", "type", "param", "code",
    }  # fmt: skip


async def hostile_http(deployment: Deployment, options: Options, result: Result) -> None:
    """Every hostile body/path/method of HOSTILE_HTTP and HOSTILE_RAW: 0 answers 5xx; each
    answer of the app is OpenAI's error object; the door then still serves a real request."""
    statuses: Counter[str] = Counter()
    bad: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30.0)) as session:
        for label, method, path, body in HOSTILE_HTTP:
            try:
                async with session.request(method, deployment.http_url + path, data=body) as r:
                    answer = await r.json(content_type=None)
                    status = r.status
            except (aiohttp.ClientError, ValueError, TimeoutError) as error:
                bad.append(f"{label}: {type(error).__name__}")
                continue
            statuses[f"{status // 100}xx"] += 1
            if not 400 <= status < 500 or not _is_error_object(answer):
                bad.append(f"{label}: {status} {str(answer)[:80]}")
        for label, raw in HOSTILE_RAW:
            status, body = await _raw_exchange(deployment.http_url, raw)
            statuses[f"{status // 100}xx" if status else "closed"] += 1
            try:
                shaped = _is_error_object(json.loads(body))
            except ValueError:
                shaped = False
            if status >= 500 or (status and not shaped):
                bad.append(f"{label}: {status} {body[:80]!r}")
        good = {"model": HTTP_MODEL, "prompt": "still serving", "max_tokens": 4}
        async with session.post(deployment.http_url + "/v1/completions", json=good) as r:
            still = r.status
    total = len(HOSTILE_HTTP) + len(HOSTILE_RAW)
    fivexx = statuses.get("5xx", 0)
    result.notes.append(
        f"{total} hostile requests: "
        + ", ".join(f"{n} {k}" for k, n in sorted(statuses.items()))
        + f"; 5xx: {fivexx}; a real request after: HTTP {still}"
    )
    if bad:
        result.notes.append("NOT AS EXPECTED: " + "; ".join(bad))
    if fivexx or bad or still != 200:
        result.failed["HTTP_DOOR"] = len(bad) + fivexx + (still != 200)


@dataclass
class _Held:
    kind: str
    opened_s: float
    answer: bytes = b""
    closed_after_s: float | None = None  # since it began to connect


async def _hold(url: str, source: str, kind: str, until_s: float) -> _Held:
    """One attack connection from ``source``: idle, partial headers or a partial body, held
    until the router closes it (or ``until_s``, monotonic)."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    held = _Held(kind, time.monotonic())
    # From before the connect: the server's clocks start at its accept (idle: the keep-alive
    # timeout) or at the first byte (the header timeout), whichever ends first.
    started_s = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
    except OSError as error:
        held.answer = f"connect failed: {error}".encode()
        return held
    if kind == "partial-header":
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: a")
    elif kind == "partial-body":
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"prompt": "'
        )
    try:
        while time.monotonic() < until_s:
            chunk = await asyncio.wait_for(reader.read(4096), until_s - time.monotonic())
            if not chunk:
                held.closed_after_s = time.monotonic() - started_s
                break
            held.answer += chunk
    except ConnectionError:
        held.closed_after_s = time.monotonic() - started_s
    except TimeoutError:
        pass
    writer.close()
    return held


async def _probe(url: str, seconds: float, workers: int = 4) -> list[float]:
    """Latencies (s) of real completions, ``workers`` at a time, for ``seconds``."""
    latencies: list[float] = []
    failures: Counter[int] = Counter()
    end_s = time.monotonic() + seconds
    body = {"model": HTTP_MODEL, "prompt": "a real request", "max_tokens": 8, "ignore_eos": True}

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < end_s:
            started = time.monotonic()
            async with session.post(url + "/v1/completions", json=body) as response:
                await response.read()
                if response.status != 200:
                    failures[response.status] += 1
                    continue
            latencies.append(time.monotonic() - started)

    timeout = aiohttp.ClientTimeout(total=60.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(workers)))
    if failures:
        raise RuntimeError(f"real requests failed: {dict(failures)}")
    return latencies


def _p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


# The router's default --http-max-connections-per-client.
CAP_PER_CLIENT = 256


async def http_slowloris(deployment: Deployment, options: Options, result: Result) -> None:
    """``slowloris`` connections (a third idle, a third partial headers, a third a partial
    body; each kind from its own loopback address) plus 300 idle ones from one more address to
    hit the per-client cap, while real requests (from 127.0.0.1) run: every attack connection
    is shed within its timeout and the real requests' p99 stays under 2x the baseline."""
    timeout_s = deployment.http_timeout_s
    baseline = await _probe(deployment.http_url, options.probe_s)
    per_kind = max(1, options.slowloris // 3)
    until_s = time.monotonic() + timeout_s + 30.0
    kinds = [("idle", "127.0.0.2"), ("partial-header", "127.0.0.3"), ("partial-body", "127.0.0.4")]
    holds = [
        asyncio.create_task(_hold(deployment.http_url, source, kind, until_s))
        for kind, source in kinds
        for _ in range(per_kind)
    ]
    capped = [
        asyncio.create_task(_hold(deployment.http_url, "127.0.0.5", "over-cap", until_s))
        for _ in range(300)
    ]
    under_attack = await _probe(deployment.http_url, timeout_s + 3.0)
    held = await asyncio.gather(*holds)
    over = await asyncio.gather(*capped)
    for kind, _ in kinds:
        mine = [h for h in held if h.kind == kind]
        closed = [h.closed_after_s for h in mine if h.closed_after_s is not None]
        answered = Counter(
            h.answer.split(b" ", 2)[1].decode() for h in mine if h.answer[:5] == b"HTTP/"
        )
        result.notes.append(
            f"{kind}: {len(closed)}/{len(mine)} shed, {min(closed, default=0):.2f}-"
            f"{max(closed, default=0):.2f} s after connecting (timeout {timeout_s:g} s)"
            + (f", answered {dict(answered)}" if answered else "")
        )
        if len(closed) < len(mine) or max(closed, default=0) > timeout_s + 5.0:
            result.failed[f"SLOW_{kind.upper()}"] = len(mine) - len(closed)
    refused = sum(h.answer.startswith(b"HTTP/1.1 429") for h in over)
    over_closed = [h.closed_after_s for h in over if h.closed_after_s is not None]
    result.notes.append(
        f"300 from one address (cap {CAP_PER_CLIENT}): {refused} refused with 429 at once, "
        f"{len(over_closed)} closed in all (max {max(over_closed, default=0):.2f} s)"
    )
    if refused < 300 - CAP_PER_CLIENT:  # the cap let connections in that it should not have
        result.failed["OVER_CAP_ADMITTED"] = 300 - CAP_PER_CLIENT - refused
    base_p99, attack_p99 = _p99(baseline), _p99(under_attack)
    result.notes.append(
        f"real requests p99 {attack_p99 * 1000:.0f} ms under attack ({len(under_attack)} req) "
        f"vs {base_p99 * 1000:.0f} ms baseline ({len(baseline)} req): "
        f"{attack_p99 / base_p99:.2f}x"
    )
    if attack_p99 >= 2 * base_p99:
        result.failed["P99_OVER_2X"] = 1


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


EXPERIMENTS: dict[str, tuple[str, Experiment]] = {
    "baseline": ("none", no_fault),
    "redis-kill": ("SIGKILL redis-server; restarts empty, telemetry replays", redis_kill),
    "telemetry-kill": ("SIGKILL telemetry", kill_and_restart("telemetry", signal.SIGKILL)),
    "controller-kill": ("SIGKILL controller", controller_kill),
    "agent-kill": ("SIGKILL agent of decode-0", agent_fault("decode-0", signal.SIGKILL)),
    "engine-kill": ("SIGKILL engine decode-0", engine_fault("decode-0", signal.SIGKILL)),
    "telemetry-term": ("SIGTERM telemetry", kill_and_restart("telemetry", signal.SIGTERM)),
    "controller-term": ("SIGTERM controller", kill_and_restart("controller", signal.SIGTERM)),
    "router-term": ("SIGTERM router", kill_and_restart("router", signal.SIGTERM)),
    "router-restart": ("SIGTERM the router, start it at once", router_restart),
    "router-kill-ha": ("SIGKILL one of 2 routers", router_fault(signal.SIGKILL)),
    "router-term-ha": ("SIGTERM one of 2 routers", router_fault(signal.SIGTERM)),
    "engine-term": ("SIGTERM engine decode-0", engine_fault("decode-0", signal.SIGTERM)),
    "agent-term": ("SIGTERM agent of decode-0", agent_fault("decode-0", signal.SIGTERM)),
    "books-redis-kill": (
        "SIGKILL redis-server (restarts empty); exact books",
        books_fault("redis", signal.SIGKILL),
    ),
    "books-redis-term": (
        "SIGTERM redis-server (restarts empty); exact books",
        books_fault("redis", signal.SIGTERM),
    ),
    "books-telemetry-kill": (
        "SIGKILL telemetry; exact books, TTFT p99 vs baseline",
        books_fault("telemetry", signal.SIGKILL, judge_ttft=True),
    ),
    "books-telemetry-term": (
        "SIGTERM telemetry; exact books, TTFT p99 vs baseline",
        books_fault("telemetry", signal.SIGTERM, judge_ttft=True),
    ),
    "poison": ("poisoned telemetry (token holder)", poisoned_telemetry),
    "unauthenticated": ("privileged RPCs without/with a wrong token", unauthenticated),
    "http-hostile": ("hostile HTTP bodies, paths, methods and raw bytes", hostile_http),
    "http-slowloris": ("slow and idle HTTP connections, and one address over the cap",
                       http_slowloris),
    "corrupt-store": ("every Redis key kind corrupted in turn", corrupt_store),
    "redis-hang": ("SIGSTOP redis-server, then SIGCONT", redis_hang),
    "store-unreadable": ("Redis refuses reads (ACL), then allows them", store_unreadable),
}  # fmt: skip

# Experiments that need two active-active routers (--routers 2).
HA_EXPERIMENTS = ("router-kill-ha", "router-term-ha")


async def run_experiment(deployment: Deployment, name: str, options: Options, seed: int) -> Result:
    fault, inject = EXPERIMENTS[name]
    result = Result(name, fault)
    await until(deployment.serving, "the deployment to serve before the experiment", 60.0)
    await asyncio.sleep(1.0)  # no request of the previous experiment finishes in this window
    started_wall = time.time()
    load = PoissonLoad(
        deployment.router_addresses,
        rate_rps=options.rate_rps,
        seed=seed,
        timeout_s=options.timeout_s,
    )
    load_task = asyncio.create_task(load.run(name))
    await asyncio.sleep(options.warmup_s)
    fault_at = time.monotonic()
    try:
        await inject(deployment, options, result)
    finally:
        fault_at = result.fault_at_s or fault_at
        remaining_s = options.after_s - max(0.0, time.monotonic() - fault_at - options.down_s)
        await asyncio.sleep(max(1.0, remaining_s))
        load.stop()
        outcomes = await load_task
    result.account(outcomes)
    if result.fault_at_s is not None:
        account_fault(result, outcomes, result.fault_at_s)
    result.account_ttft(outcomes, fault_at)
    await check_records(deployment, result, started_wall)
    return result


def account_fault(result: Result, outcomes: Sequence[Outcome], fault_at_s: float) -> None:
    """How requests sent after the fault fared: the clients' switch to the other router."""
    after = sorted((o for o in outcomes if o.sent_at_s >= fault_at_s), key=lambda o: o.sent_at_s)
    result.failed_after_fault = sum(o.status != "OK" for o in after)
    if after:
        first = after[0]
        result.notes.append(
            f"{len(after)} sent after the fault, {result.failed_after_fault} failed; the first "
            f"({first.sent_at_s - fault_at_s:.2f} s after) {first.status} in "
            f"{first.finished_at_s - first.sent_at_s:.2f} s"
        )
    if result.restart_s is not None:
        cpu_s = result.restart_cpu_s
        cpu = f" ({cpu_s:.2f} CPU s; load average {os.getloadavg()[0]:.1f})" if cpu_s else ""
        result.notes.append(f"restart to serving {result.restart_s:.2f} s{cpu}")


async def check_records(deployment: Deployment, result: Result, started_wall: float) -> None:
    """Telemetry must hold a record of every request that reached the router."""
    expected = result.sent - result.router_down
    deadline = time.monotonic() + 20.0
    recorded = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            recorded = await deployment.recorded_since(started_wall - 0.5)
            if recorded >= expected:
                break
        await asyncio.sleep(0.5)
    result.recorded = recorded
    missing = max(0, expected - recorded)
    if result.records_died_with:
        died = min(missing, result.records_died_with)
        result.notes.append(f"{died} record(s) died with the killed router (clients had a status)")
        missing -= died
    result.silently_lost = result.no_status + missing
    if result.exact_books:
        result.double_counted = max(0, recorded - expected)
        verdict = "exact" if recorded == expected else "NOT EXACT"
        result.notes.append(
            f"books {verdict}: telemetry holds {recorded} of the {expected} requests that "
            "reached the router"
        )


def judge_ttft(results: Sequence[Result]) -> None:
    """Each ``judge_ttft`` experiment's TTFT p99 from its fault on against the same
    experiment's before the fault (pass or fail), and against the baseline experiment's."""
    baseline = next((r for r in results if r.name == "baseline"), None)
    for r in results:
        if not r.judge_ttft:
            continue
        if r.prefault_ttft_p99_ms is None or r.fault_ttft_p99_ms is None:
            r.ttft_ok = False
            r.notes.append("TTFT p99 not judged: no first token before or after the fault")
            continue
        ratio = r.fault_ttft_p99_ms / r.prefault_ttft_p99_ms
        r.ttft_ok = ratio <= TTFT_BOUND
        note = (
            f"TTFT p99 from the fault on {r.fault_ttft_p99_ms:.0f} ms vs before it "
            f"{r.prefault_ttft_p99_ms:.0f} ms: {ratio:.2f}x "
            f"({'pass' if r.ttft_ok else 'FAIL'}, bound {TTFT_BOUND:g}x)"
        )
        if baseline is not None and baseline.ttft_p99_ms:
            note += (
                f"; vs the baseline experiment's {baseline.ttft_p99_ms:.0f} ms: "
                f"{r.fault_ttft_p99_ms / baseline.ttft_p99_ms:.2f}x"
            )
        r.notes.append(note)


async def run_burst(deployment: Deployment, options: Options) -> Result:
    """``burst`` short streams at once through the router; each has ``burst_timeout_s``."""
    result = Result(
        "burst", f"{options.burst} concurrent streams, {options.burst_timeout_s:g} s deadline"
    )
    await until(deployment.serving, "the deployment to serve", 60.0)
    await asyncio.sleep(1.0)
    started_wall = time.time()
    started = time.monotonic()
    targets = deployment.router_addresses
    result.fault = f"{result.fault} through {len(targets)} router(s)"
    async with VoltanaClient(targets) as client:
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
        if r.ttft_p99_ms is not None:
            details.append(
                f"TTFT p99 {r.ttft_p99_ms:.0f} ms (before the fault "
                f"{r.prefault_ttft_p99_ms or 0:.0f} ms, from it on {r.fault_ttft_p99_ms or 0:.0f} ms)"
            )
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
    needs_routers = [n for n in names if n in HA_EXPERIMENTS]
    if needs_routers and args.routers < 2:
        if args.only:
            print(f"faults.py: {needs_routers} need --routers 2 (or more)", file=sys.stderr)
            return 2
        # The whole set on one router: the active-active ones are a run of their own.
        names = [n for n in names if n not in HA_EXPERIMENTS]
        print(
            f"skipping {', '.join(needs_routers)} (they need --routers 2: python bench/faults.py"
            f" --routers 2 {' '.join('--only ' + n for n in needs_routers)})",
            file=sys.stderr,
        )
    options = Options(
        rate_rps=args.rate,
        warmup_s=args.warmup_s,
        down_s=args.down_s,
        after_s=args.after_s,
        timeout_s=args.timeout_s,
        burst=args.burst,
        burst_timeout_s=args.burst_timeout_s,
        slowloris=args.slowloris,
        probe_s=args.probe_s,
    )
    workdir = Path(tempfile.mkdtemp(prefix="voltana-faults-"))
    deployment = Deployment(
        workdir,
        speedup=args.speedup,
        drain_s=args.drain_s,
        http_timeout_s=args.http_timeout_s,
        routers=args.routers,
    )
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
    judge_ttft(results)
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
    failed = [
        r.name
        for r in results
        if (r.silently_lost or 0) > 0 or (r.double_counted or 0) > 0 or r.ttft_ok is False
    ]
    return 1 if failed else 0


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
    parser.add_argument(
        "--routers",
        type=int,
        default=1,
        help="active-active routers (the *-ha experiments need 2); the SDK load spreads over all",
    )
    parser.add_argument("--burst-timeout-s", type=float, default=60.0)
    parser.add_argument(
        "--slowloris", type=int, default=600, help="slow connections of http-slowloris"
    )
    parser.add_argument(
        "--http-timeout-s", type=float, default=3.0,
        help="the router's HTTP header, body and keep-alive timeouts",
    )  # fmt: skip
    parser.add_argument("--probe-s", type=float, default=8.0, help="baseline of real requests")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
