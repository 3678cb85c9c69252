"""Front-door throughput: Voltana's router (gRPC and HTTP) against direct-to-engine and SGLang's
router, at rising Poisson rates until each saturates, with CPU per request per process.

Every part is its own process, so /proc/<pid>/stat tells whose CPU a request costs:

- ``stack``: ``voltana up --sim`` (telemetry, controller, node agents and the simulated prefill
  and decode engines, sped up so that their simulated work is negligible; its own router idles);
- ``voltana-router``: ``voltana serve router`` on that stack's telemetry and controller
  (placement notices on), serving gRPC and the HTTP door;
- ``sglang-router``: SGLang's model gateway (``pip install sglang-router``) in PD mode on the
  same two engines (started by bench/sglang_router_pd.py's helper);
- ``load``: this process, the open-loop client (plain aiohttp and a raw gRPC stub, so it is
  the same code whichever checkout is measured).

The code under test is whatever ``PYTHONPATH`` selects (the child processes inherit it), so the
same script measures another checkout: ``PYTHONPATH=/path/to/main python bench/router_overhead.py``.
A rate step is *sustained* when every request succeeds, all of them finish within the step's
drain time, and the median TTFT stays under ``--saturation-factor`` times the direct path's at
the lowest rate (the median, not p99: on a shared host the tail is other processes' stalls,
while an overloaded router's queue lifts the median too); the sweep of a path stops at its
first step that is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc.aio
import numpy as np
from sglang_router_pd import free_port, sglang_router

from voltana.v1 import router_pb2, router_pb2_grpc

PROMPT_TOKENS = 256
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT_S = 90.0
# Requests still running this long after a step's last arrival count as not finished.
DRAIN_S = 5.0
MAX_IN_FLIGHT = 4000

RequestFn = Callable[[], Awaitable[float]]


# ---- processes -------------------------------------------------------------------------------


def process_tree(root_pid: int) -> list[int]:
    """``root_pid`` and its descendants (a launcher's workers count as the launcher)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_s(root_pid: int) -> float:
    """User plus system CPU seconds of the process tree so far (every thread)."""
    total_ticks = 0
    for pid in process_tree(root_pid):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total_ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return total_ticks / CLOCK_TICKS_PER_S


@contextlib.contextmanager
def child(command: Sequence[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def voltana_command(*args: str) -> list[str]:
    # -P: the working directory does not go first on sys.path, so PYTHONPATH (or the installed
    # package) decides which checkout runs, wherever the bench is started from.
    return [sys.executable, "-P", "-m", "voltana.cli.main", *args]


def read_addresses(process: subprocess.Popen[str]) -> dict[str, str]:
    """The ``name  address`` lines ``voltana up`` prints, up to its ``#`` summary line."""
    assert process.stdout is not None
    addresses: dict[str, str] = {}
    deadline = time.monotonic() + READY_TIMEOUT_S
    for line in process.stdout:
        if line.startswith("#"):
            return addresses
        name, _, address = line.strip().partition("  ")
        addresses[name] = address.strip()
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"voltana up exited ({process.poll()}) before printing its addresses")


@dataclass
class Deployment:
    """The processes of one run and how to reach them."""

    stack_pid: int
    router_pid: int
    router_grpc: str
    router_http: str
    prefill_url: str
    prefill_bootstrap_host: str
    prefill_bootstrap_port: int
    decode_url: str
    sglang_pid: int = 0
    sglang_url: str = ""


@contextlib.asynccontextmanager
async def deployment(speedup: float, policy: str) -> AsyncIterator[Deployment]:
    env = {**os.environ, "VOLTANA_CONTROL_TOKEN": secrets.token_hex(16)}
    stack_command = voltana_command(
        "up", "--sim", "--prefill", "1", "--decode", "1", "--speedup", f"{speedup:g}",
        "--policy", policy, "--no-metrics", "--no-http",
    )  # fmt: skip
    with child(stack_command, env) as stack:
        addresses = await asyncio.to_thread(read_addresses, stack)
        prefill = next(name for name in addresses if name.endswith(".bootstrap"))
        prefill_id = prefill.removesuffix(".bootstrap")
        decode_id = next(
            name.removesuffix(".engine")
            for name in addresses
            if name.endswith(".engine") and not name.startswith(prefill_id)
        )
        bootstrap_host, _, bootstrap_port = addresses[prefill].rpartition(":")
        grpc_port, http_port = free_port(), free_port()
        router_command = voltana_command(
            "serve", "router", "--listen", f"127.0.0.1:{grpc_port}", "--http-port", str(http_port),
            "--telemetry", addresses["telemetry"], "--controller", addresses["controller"],
            "--policy", policy, "--no-metrics",
        )  # fmt: skip
        with child(router_command, env) as router:
            found = Deployment(
                stack_pid=stack.pid,
                router_pid=router.pid,
                router_grpc=f"127.0.0.1:{grpc_port}",
                router_http=f"http://127.0.0.1:{http_port}",
                prefill_url=addresses[f"{prefill_id}.engine"],
                prefill_bootstrap_host=bootstrap_host,
                prefill_bootstrap_port=int(bootstrap_port),
                decode_url=addresses[f"{decode_id}.engine"],
            )
            workers = [
                "--pd-disaggregation",
                "--prefill", found.prefill_url, str(found.prefill_bootstrap_port),
                "--decode", found.decode_url,
            ]  # fmt: skip
            async with sglang_router(workers) as sglang_url:
                found.sglang_url = sglang_url
                found.sglang_pid = sglang_pid(sglang_url)
                yield found


def sglang_pid(url: str) -> int:
    """The pid listening on the SGLang router's port (its launcher's child or itself)."""
    port = int(url.rsplit(":", 1)[1])
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            parts = line.split()
            if int(parts[1].split(":")[1], 16) == port and parts[3] == "0A":  # LISTEN
                inodes.add(parts[9])
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                link = os.readlink(f"/proc/{entry}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(entry)
    raise RuntimeError(f"no process listens on {url}")


# ---- one request per path --------------------------------------------------------------------


def generate_body(max_new_tokens: int) -> dict[str, Any]:
    return {
        "input_ids": list(range(1000, 1000 + PROMPT_TOKENS)),
        "sampling_params": {"max_new_tokens": max_new_tokens, "ignore_eos": True},
        "stream": True,
    }


async def http_stream_ttft_ms(session: aiohttp.ClientSession, url: str, body: Any) -> float:
    """POST an SGLang streaming /generate; TTFT of its first data event (ms)."""
    started = time.perf_counter()
    ttft_ms = float("nan")
    async with session.post(url + "/generate", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
        done = False
        async for line in response.content:
            if not line.startswith(b"data:"):
                continue
            if b"[DONE]" in line:
                done = True
            elif ttft_ms != ttft_ms:
                ttft_ms = (time.perf_counter() - started) * 1000.0
    if not done or ttft_ms != ttft_ms:
        raise RuntimeError("the stream ended without tokens or [DONE]")
    return ttft_ms


def request_paths(
    where: Deployment,
    session: aiohttp.ClientSession,
    stub: router_pb2_grpc.RouterServiceStub,
    max_new_tokens: int,
) -> dict[str, RequestFn]:
    body = generate_body(max_new_tokens)
    grpc_request = router_pb2.GenerateRequest(
        input_ids=router_pb2.TokenIds(ids=body["input_ids"]),
        max_new_tokens=max_new_tokens,
        ignore_eos=True,
    )

    async def direct() -> float:
        # What a PD router does (and bench/sglang_router_pd.py's direct path): the same body
        # to both engines with one bootstrap room; TTFT from the decode's stream.
        pd_body = {
            **body,
            "bootstrap_host": where.prefill_bootstrap_host,
            "bootstrap_port": where.prefill_bootstrap_port,
            "bootstrap_room": random.getrandbits(63),
        }

        async def prefill() -> None:
            async with session.post(where.prefill_url + "/generate", json=pd_body) as response:
                await response.read()

        prefill_task = asyncio.create_task(prefill())
        try:
            return await http_stream_ttft_ms(session, where.decode_url, pd_body)
        finally:
            await prefill_task

    async def voltana_grpc() -> float:
        started = time.perf_counter()
        ttft_ms = float("nan")
        completed = False
        async for response in stub.Generate(grpc_request):
            if response.HasField("chunk"):
                if ttft_ms != ttft_ms:
                    ttft_ms = (time.perf_counter() - started) * 1000.0
            elif response.HasField("completion"):
                completed = True
        if not completed:
            raise RuntimeError("the gRPC stream ended without a completion")
        return ttft_ms

    return {
        "direct": direct,
        "voltana-grpc": voltana_grpc,
        "voltana-http": lambda: http_stream_ttft_ms(session, where.router_http, body),
        "sglang-router": lambda: http_stream_ttft_ms(session, where.sglang_url, body),
    }


# ---- rate steps ------------------------------------------------------------------------------


@dataclass
class Step:
    path: str
    rate_rps: float
    sent: int
    ttft_ms: list[float] = field(default_factory=list)
    errors: int = 0
    unfinished: int = 0
    first_error: str = ""
    duration_s: float = 0.0
    # CPU seconds per process over the step (arrivals and drain).
    cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def completed(self) -> int:
        return len(self.ttft_ms)

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.ttft_ms, q)) if self.ttft_ms else float("nan")

    def sustained(self, ttft_limit_ms: float) -> bool:
        return (
            self.errors == 0
            and self.unfinished == 0
            and self.completed == self.sent
            and self.percentile_ms(50) <= ttft_limit_ms
        )


async def run_step(
    path: str,
    request: RequestFn,
    rate_rps: float,
    duration_s: float,
    processes: dict[str, int],
    rng: random.Random,
) -> Step:
    """Poisson arrivals at ``rate_rps`` for ``duration_s``, open loop."""
    arrivals: list[float] = []
    at_s = 0.0
    while True:
        at_s += rng.expovariate(rate_rps)
        if at_s >= duration_s:
            break
        arrivals.append(at_s)
    step = Step(path, rate_rps, len(arrivals))
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        try:
            step.ttft_ms.append(await request())
        except Exception as error:
            step.errors += 1
            step.first_error = step.first_error or f"{type(error).__name__}: {error}"[:200]

    cpu_before = {name: cpu_s(pid) for name, pid in processes.items()}
    loop = asyncio.get_running_loop()
    started = loop.time()
    for offset_s in arrivals:
        delay_s = started + offset_s - loop.time()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if len(tasks) >= MAX_IN_FLIGHT:
            step.unfinished += 1
            continue
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=DRAIN_S)
        step.unfinished += len(pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    step.duration_s = loop.time() - started
    step.cpu_s = {name: cpu_s(pid) - cpu_before[name] for name, pid in processes.items()}
    return step


@dataclass
class Sweep:
    """Every step of every path at one output length, and each process's idle CPU rate."""

    max_new_tokens: int
    steps: dict[str, list[Step]]
    idle_cpu_per_s: dict[str, float]
    ttft_limit_ms: float
    # Per router, one request at a time (see sequential()).
    sequential: dict[str, Sequential] = field(default_factory=dict)

    def saturation_rps(self, path: str) -> float:
        sustained = [s.rate_rps for s in self.steps[path] if s.sustained(self.ttft_limit_ms)]
        return max(sustained, default=0.0)

    def cpu_ms_per_request(self, path: str, process: str) -> float:
        """CPU the process spent on the path's sustained steps beyond its idle rate, per
        request."""
        steps = [s for s in self.steps[path] if s.sustained(self.ttft_limit_ms)] or self.steps[
            path
        ][:1]
        busy_s = sum(s.cpu_s[process] - self.idle_cpu_per_s[process] * s.duration_s for s in steps)
        requests = sum(s.completed for s in steps)
        return 1000.0 * max(0.0, busy_s) / requests if requests else float("nan")


@dataclass(frozen=True)
class Sequential:
    """One router, one request at a time, each after the same request sent direct."""

    cpu_ms_per_request: float
    ttft_overhead_p50_ms: float
    ttft_overhead_p99_ms: float


async def sequential(
    paths: dict[str, RequestFn], processes_of: dict[str, dict[str, int]], requests: int
) -> dict[str, Sequential]:
    """Per router: its CPU per request with one request at a time (its idle rate taken off),
    and the TTFT it adds over the direct path, each routed request right after a direct one so
    that host noise hits both alike. The steadiest figures on a shared host: no queue, and no
    step's noise decides them."""
    routers = {"voltana-grpc": "router", "voltana-http": "router", "sglang-router": "sglang-router"}
    result: dict[str, Sequential] = {}
    for path, process in routers.items():
        pid = processes_of[path][process]
        for _ in range(5):
            await paths[path]()
        idle_per_s = (await measure_idle({process: pid}, 1.0))[process]
        direct_ms, routed_ms = [], []
        started_s, before_s = time.monotonic(), cpu_s(pid)
        for _ in range(requests):
            direct_ms.append(await paths["direct"]())
            routed_ms.append(await paths[path]())
        busy_s = cpu_s(pid) - before_s - idle_per_s * (time.monotonic() - started_s)
        d50, d99 = np.percentile(direct_ms, [50, 99])
        r50, r99 = np.percentile(routed_ms, [50, 99])
        result[path] = Sequential(
            1000.0 * max(0.0, busy_s) / requests, float(r50 - d50), float(r99 - d99)
        )
    return result


async def measure_idle(processes: dict[str, int], seconds: float) -> dict[str, float]:
    before = {name: cpu_s(pid) for name, pid in processes.items()}
    await asyncio.sleep(seconds)
    return {name: (cpu_s(pid) - before[name]) / seconds for name, pid in processes.items()}


async def sweep(
    paths: dict[str, RequestFn],
    processes_of: dict[str, dict[str, int]],
    rates_rps: Sequence[float],
    step_s: float,
    warmup: int,
    max_new_tokens: int,
    saturation_factor: float,
) -> Sweep:
    for request in paths.values():  # warm connections and code paths
        for _ in range(warmup):
            await request()
    every = {name: pid for processes in processes_of.values() for name, pid in processes.items()}
    idle = await measure_idle(every, 2.0)
    rng = random.Random(max_new_tokens)
    steps: dict[str, list[Step]] = {path: [] for path in paths}
    ttft_limit_ms = float("inf")
    running = set(paths)
    for rate_rps in rates_rps:
        # Every path at this rate back to back, so host noise hits them alike.
        for path in [p for p in paths if p in running]:
            step = await run_step(path, paths[path], rate_rps, step_s, processes_of[path], rng)
            steps[path].append(step)
            if path == "direct" and ttft_limit_ms == float("inf"):
                ttft_limit_ms = saturation_factor * step.percentile_ms(50)
            status = "ok" if step.sustained(ttft_limit_ms) else "SATURATED"
            print(
                f"  {max_new_tokens:>3} tok  {path:<13} {rate_rps:6.0f} req/s: "
                f"{step.completed}/{step.sent} done, {step.errors} errors, TTFT p50 "
                f"{step.percentile_ms(50):7.2f} p99 {step.percentile_ms(99):8.2f} ms  {status}"
                + (f"  ({step.first_error})" if step.first_error else ""),
                flush=True,
            )
            if status != "ok":
                running.discard(path)
        if not running - {"direct"} and "direct" in running and len(paths) > 1:
            running.discard("direct")  # nothing left to compare with
        if not running:
            break
    return Sweep(max_new_tokens, steps, idle, ttft_limit_ms)


# ---- report ----------------------------------------------------------------------------------


def report(result: Sweep, low_rate_rps: float, table: Callable[..., str]) -> str:
    steps = result.steps
    direct_low = next((s for s in steps["direct"] if s.rate_rps == low_rate_rps), None)
    rows = []
    for path, path_steps in steps.items():
        low = next((s for s in path_steps if s.rate_rps == low_rate_rps), None)
        router_process = {"voltana-grpc": "router", "voltana-http": "router"}.get(path, path)
        router_cpu = (
            result.cpu_ms_per_request(path, router_process)
            if router_process in path_steps[0].cpu_s
            else float("nan")
        )
        overhead = (
            (
                f"{low.percentile_ms(50) - direct_low.percentile_ms(50):+.2f} / "
                f"{low.percentile_ms(99) - direct_low.percentile_ms(99):+.2f}"
            )
            if low is not None and direct_low is not None and path != "direct"
            else "-"
        )
        rows.append(
            [
                path,
                f"{result.saturation_rps(path):.0f}",
                overhead,
                f"{router_cpu:.2f}" if router_cpu == router_cpu else "-",
                f"{result.cpu_ms_per_request(path, 'stack'):.2f}",
                f"{result.cpu_ms_per_request(path, 'load'):.2f}",
            ]
        )
    header = [
        "path",
        "sustained req/s",
        f"TTFT overhead p50 / p99 at {low_rate_rps:g} req/s (ms)",
        "router CPU ms/req",
        "stack CPU ms/req",
        "client CPU ms/req",
    ]
    lines = [table(header, rows)]
    grpc_cpu = result.cpu_ms_per_request("voltana-grpc", "router")
    http_cpu = result.cpu_ms_per_request("voltana-http", "router")
    sglang_cpu = result.cpu_ms_per_request("sglang-router", "sglang-router")
    sglang_rps = result.saturation_rps("sglang-router")
    lines.append(
        f"   router CPU per request vs sglang-router: gRPC {grpc_cpu / sglang_cpu:.2f}x, "
        f"HTTP {http_cpu / sglang_cpu:.2f}x; sustained rate vs sglang-router: gRPC "
        f"{result.saturation_rps('voltana-grpc') / sglang_rps:.2f}x, HTTP "
        f"{result.saturation_rps('voltana-http') / sglang_rps:.2f}x"
        if sglang_cpu > 0 and sglang_rps > 0
        else "   (no sglang-router figures to compare with)"
    )
    if result.sequential:
        rows = [
            [
                path,
                f"{one.cpu_ms_per_request:.2f}",
                f"{one.ttft_overhead_p50_ms:+.2f} / {one.ttft_overhead_p99_ms:+.2f}",
            ]
            for path, one in result.sequential.items()
        ]
        lines.append("   one request at a time:")
        lines.append(table(["path", "router CPU ms/req", "TTFT overhead p50 / p99 (ms)"], rows))
        sglang = result.sequential.get("sglang-router")
        if sglang is not None and sglang.cpu_ms_per_request > 0:
            ratios = ", ".join(
                f"{path} {result.sequential[path].cpu_ms_per_request / sglang.cpu_ms_per_request:.2f}x"
                for path in ("voltana-grpc", "voltana-http")
                if path in result.sequential
            )
            lines.append(f"   router CPU per request vs sglang-router, one at a time: {ratios}")
    lines.append(
        f"   saturated: median TTFT above {result.ttft_limit_ms:.1f} ms (x direct's at the lowest "
        "rate), an error, or requests unfinished 5 s after the last arrival"
    )
    return "\n".join(lines)


async def throughput(
    *,
    speedup: float,
    policy: str,
    output_tokens: Sequence[int],
    rates_rps: Callable[[int], Sequence[float]],
    step_s: float,
    warmup: int,
    saturation_factor: float,
    sequential_requests: Callable[[int], int],
) -> list[Sweep]:
    if importlib.util.find_spec("sglang_router") is None:
        raise SystemExit("needs the SGLang router: pip install sglang-router")
    results = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        deployment(speedup, policy) as where,
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        grpc.aio.insecure_channel(where.router_grpc) as channel,
    ):
        stub = router_pb2_grpc.RouterServiceStub(channel)
        me = os.getpid()
        stack = {"stack": where.stack_pid, "load": me}
        processes_of = {
            "direct": stack,
            "voltana-grpc": {**stack, "router": where.router_pid},
            "voltana-http": {**stack, "router": where.router_pid},
            "sglang-router": {**stack, "sglang-router": where.sglang_pid},
        }
        await wait_for_router(stub)
        for tokens in output_tokens:
            paths = request_paths(where, session, stub, tokens)
            print(f"-- {tokens} output tokens", flush=True)
            result = await sweep(
                paths, processes_of, rates_rps(tokens), step_s, warmup, tokens, saturation_factor
            )
            if sequential_requests(tokens) > 0:
                result.sequential = await sequential(
                    paths, processes_of, sequential_requests(tokens)
                )
            results.append(result)
    return results


async def wait_for_router(stub: router_pb2_grpc.RouterServiceStub) -> None:
    request = router_pb2.GenerateRequest(
        input_ids=router_pb2.TokenIds(ids=[1000, 1001]), max_new_tokens=1
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            async for _ in stub.Generate(request, timeout=5.0):
                pass
            return
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise RuntimeError("the Voltana router did not become ready") from None
            await asyncio.sleep(0.3)
