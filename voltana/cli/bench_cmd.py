"""`voltana bench`: replay a workload in real time through a running router with the SDK.

Each request is sent at its trace arrival time as ``input_ids`` of its input length with
``max_new_tokens`` = its output length and ``ignore_eos``; TTFT and ITL are measured here, on
the client. Energy is the increase of every instance's GPU energy counter in telemetry between
the start and the end of the run (``--telemetry``; without it energy is reported as unknown).
The report and the ``--json`` schema are those of ``voltana simulate``; with ``--slo-class`` a
share of the requests is sent with that class's own targets (the same requests, with the same
``--seed``, as simulate's) and attainment is reported per class, each against the targets it was
sent with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from voltana.cli.options import (
    add_slo_args,
    add_slo_class_arg,
    add_workload_shaping_args,
    positive_float,
    positive_int,
    slo_from_args,
    with_slo_class_from_args,
    workload_from_args,
)
from voltana.cli.outputs import check_output_path, report_stream, write_text
from voltana.cli.progress import ProgressBar
from voltana.cli.security_opts import (
    add_api_key_args,
    add_security_args,
    api_key_from_args,
    security_from_args,
)
from voltana.contract.state import SloTarget
from voltana.errors import ConfigError, VoltanaError
from voltana.flags.values import host_port, host_ports
from voltana.report import (
    RunOutcome,
    add_savings,
    format_table,
    summarize,
    weighted_percentiles,
)
from voltana.rpc import RpcSecurity
from voltana.sdk import (
    AuthenticationError,
    DeadlineExceededError,
    GenerationSummary,
    InvalidRequestError,
    RequestCancelledError,
    ServerError,
    UnavailableError,
    VoltanaClient,
    VoltanaClientError,
)
from voltana.workloads import TraceRequest, summarize_workload
from voltana.workloads.classes import DEFAULT_CLASS

if TYPE_CHECKING:  # the engine client is imported where used: `voltana bench --help` stays fast
    from voltana.engine import SglangHttpClient

T = TypeVar("T")

EPILOG = """\
examples:
  voltana bench --target 127.0.0.1:50051 --telemetry 127.0.0.1:50052 \\
      --trace synthetic:poisson:rate=5,duration=60,input=512,output=128 --json out.json
  voltana bench --target router:50051 --trace azure-conv --duration-s 120 \\
      --rate-scale 0.5 --max-concurrency 256 --policy-label voltana

Latencies are wall-clock times measured by this client. Against `voltana up --sim --speedup X`
with X > 1 the engines run X times faster than real hardware would, so compare runs at one
speedup (1 for figures that mean milliseconds on the simulated GPU).
"""

# Why a request did not complete, as counted in `rejected_by_reason`.
_ERROR_REASONS: tuple[tuple[type[VoltanaClientError], str], ...] = (
    (InvalidRequestError, "invalid_request"),
    (UnavailableError, "unavailable"),
    (DeadlineExceededError, "deadline_exceeded"),
    (RequestCancelledError, "cancelled"),
    (AuthenticationError, "unauthenticated"),
    (ServerError, "server_error"),
)
_COMPLETED_FINISH_REASONS = ("length", "stop")
# Token ids of the synthetic prompts: well inside every common vocabulary, away from specials.
_PROMPT_TOKEN_BASE = 1000
_PROMPT_TOKEN_SPAN = 20_000


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "bench",
        help="replay a trace in real time through a running router; same report as simulate",
        description="Replay a workload in real time through a Voltana router with the client "
        "SDK, measure TTFT and ITL on the client and energy from telemetry, and report them "
        "like `voltana simulate`.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--target",
        type=host_ports,
        required=True,
        metavar="HOST:PORT[,HOST:PORT...]",
        help="router address (several active-active routers: comma-separated; the SDK fails "
        "over between them)",
    )
    parser.add_argument(
        "--telemetry",
        type=host_port,
        metavar="HOST:PORT",
        help="telemetry address, to measure GPU energy (default: energy not measured)",
    )
    parser.add_argument(
        "--trace",
        required=True,
        help="trace file, shipped trace name (azure-conv, azure-code) or synthetic:... "
        "(as for simulate)",
    )
    add_workload_shaping_args(parser)
    load = parser.add_argument_group("client")
    load.add_argument(
        "--max-concurrency",
        type=positive_int,
        help="requests in flight at most; later ones wait (default: unlimited)",
    )
    load.add_argument(
        "--request-timeout-s",
        type=positive_float,
        default=600.0,
        help="deadline of each request (default: %(default)s)",
    )
    load.add_argument(
        "--vocab-size",
        type=positive_int,
        metavar="N",
        help="the served model's vocabulary: prompt token ids stay below N (default: ids "
        f"{_PROMPT_TOKEN_BASE}..{_PROMPT_TOKEN_BASE + _PROMPT_TOKEN_SPAN - 1}; real SGLang "
        "crashes on an id outside its vocabulary)",
    )
    load.add_argument(
        "--connect-timeout-s",
        type=positive_float,
        default=10.0,
        help="give up when the router does not answer within this (default: %(default)s)",
    )
    add_slo_args(parser)
    add_slo_class_arg(parser)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="draws which requests --slo-class takes (default: 0, as for simulate)",
    )
    add_security_args(parser, client_only=True)
    add_api_key_args(parser, server=False)
    output = parser.add_argument_group("output")
    output.add_argument(
        "--policy-label",
        default="live",
        metavar="NAME",
        help="column name of this run in the report (default: %(default)s)",
    )
    output.add_argument(
        "--json",
        metavar="OUT.json",
        help="write the results as JSON ('-' = stdout; the table then goes to stderr)",
    )
    output.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(handler=run)


# ---- measuring one request -------------------------------------------------------------------


@dataclass
class RequestResult:
    """What the client saw of one request."""

    completed: bool
    error_reason: str = ""
    ttft_ms: float = 0.0
    mean_itl_ms: float = 0.0
    output_tokens: int = 0
    # Token-level ITL: gap per token and how many tokens saw it.
    token_itl_ms: list[float] = field(default_factory=list)
    token_itl_weights: list[float] = field(default_factory=list)
    finished_at_s: float = 0.0
    # GPU energy the router attributed to the request (active, idle), J; None when unknown.
    energy_j: tuple[float, float] | None = None
    # Its SLO class (voltana.workloads.classes) and the targets it was sent with; "" / None:
    # the cluster SLO.
    slo_class: str = ""
    slo: SloTarget | None = None
    # The instances that served it (prefill then decode; a colocated one once).
    instances: tuple[str, ...] = ()


def prompt_ids(request: TraceRequest, vocab_size: int | None = None) -> list[int]:
    """A deterministic prompt of exactly ``request.input_tokens`` token ids, each below
    ``vocab_size`` when given (away from the first ids, where special tokens live)."""
    base, span = _PROMPT_TOKEN_BASE, _PROMPT_TOKEN_SPAN
    if vocab_size is not None and base + span > vocab_size:
        base = min(base, vocab_size // 4)
        span = max(1, vocab_size - base)
    offset = request.request_id * 7919
    return [base + (offset + i) % span for i in range(request.input_tokens)]


def error_reason(error: BaseException) -> str:
    for error_class, reason in _ERROR_REASONS:
        if isinstance(error, error_class):
            return reason
    return "client_error"


async def send_one(
    client: VoltanaClient,
    request: TraceRequest,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
    vocab_size: int | None = None,
) -> RequestResult:
    """Send one request and time its token stream; never raises for a failed request."""
    sent_s = clock()
    first_s: float | None = None
    last_s = sent_s
    tokens = 0
    result = RequestResult(completed=False)
    summary: GenerationSummary | None = None
    if request.slo is not None:
        # What the router holds a request's own targets to (no per-1k allowance of its own).
        result.slo_class = request.slo_class
        result.slo = SloTarget(ttft_ms=request.slo.ttft_ms, itl_ms=request.slo.itl_ms)
    stream = client.generate(
        input_ids=prompt_ids(request, vocab_size),
        max_new_tokens=request.output_tokens,
        ignore_eos=True,
        ttft_slo_ms=None if result.slo is None else result.slo.ttft_ms,
        itl_slo_ms=None if result.slo is None else result.slo.itl_ms,
        timeout_s=timeout_s,
    )
    try:
        async for event in stream:
            now_s = clock()
            if isinstance(event, GenerationSummary):
                summary = event
                break
            count = max(1, len(event.token_ids))
            if first_s is None:
                first_s = now_s
                if count > 1:  # tokens that arrived together with the first one
                    result.token_itl_ms.append(0.0)
                    result.token_itl_weights.append(count - 1)
            else:
                result.token_itl_ms.append((now_s - last_s) * 1000.0 / count)
                result.token_itl_weights.append(count)
            tokens += count
            last_s = now_s
    except VoltanaError as error:
        result.error_reason = error_reason(error)
    finally:
        await stream.aclose()
    result.finished_at_s = clock()
    if result.error_reason:
        return result
    if summary is None:
        result.error_reason = "incomplete"
    elif summary.finish_reason not in _COMPLETED_FINISH_REASONS:
        result.error_reason = f"finish_{summary.finish_reason or 'unknown'}"
    elif first_s is None:
        result.error_reason = "no_tokens"
    if result.error_reason:
        return result
    assert summary is not None and first_s is not None
    tokens = max(tokens, summary.completion_tokens)
    result.completed = True
    result.output_tokens = tokens
    result.instances = tuple(
        dict.fromkeys(i for i in (summary.prefill_instance, summary.decode_instance) if i)
    )
    if summary.energy_j is not None:
        idle_j = summary.idle_energy_j or 0.0
        result.energy_j = (summary.energy_j - idle_j, idle_j)
    result.ttft_ms = (first_s - sent_s) * 1000.0
    result.mean_itl_ms = (last_s - first_s) * 1000.0 / (tokens - 1) if tokens > 1 else 0.0
    return result


# ---- replaying a workload --------------------------------------------------------------------


@dataclass
class ReplayResult:
    results: list[RequestResult]
    started_s: float
    finished_s: float
    # Wall seconds between the two energy readings around the replay (None: not measured).
    metered_s: float | None = None

    @property
    def duration_s(self) -> float:
        return max(0.0, self.finished_s - self.started_s)

    @property
    def energy_window_s(self) -> float:
        """What the energy figure covers: the readings' span when energy was read (a short
        replay's own span would leave the readings' lag out and overstate the power)."""
        if self.metered_s is None:
            return self.duration_s
        return max(self.duration_s, self.metered_s)


async def replay(
    client: VoltanaClient,
    requests: Sequence[TraceRequest],
    *,
    max_concurrency: int | None = None,
    timeout_s: float = 600.0,
    on_done: Callable[[int], None] | None = None,
    vocab_size: int | None = None,
) -> ReplayResult:
    """Send every request at its arrival time (relative to now); wait for all of them."""
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    done = 0

    async def run_one(request: TraceRequest) -> RequestResult:
        nonlocal done
        try:
            if limit is None:
                return await send_one(client, request, timeout_s, vocab_size=vocab_size)
            async with limit:
                return await send_one(client, request, timeout_s, vocab_size=vocab_size)
        finally:
            done += 1
            if on_done is not None:
                on_done(done)

    started_s = time.monotonic()
    start_loop_s = loop.time()
    tasks: list[asyncio.Task[RequestResult]] = []
    try:
        for request in requests:
            delay_s = start_loop_s + request.arrival_s - loop.time()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            tasks.append(asyncio.create_task(run_one(request)))
        results = list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finished_s = max((r.finished_at_s for r in results), default=started_s)
    return ReplayResult(results, started_s, finished_s)


# ---- energy from telemetry -------------------------------------------------------------------


@dataclass(frozen=True)
class EnergyReading:
    """Every instance's GPU energy counter (J) as telemetry last received it, and the engine
    URL each instance registered."""

    energy_j: dict[str, float]
    engine_urls: dict[str, str]
    # GPUs per instance (a tensor-parallel one runs on several).
    gpus: dict[str, int] = field(default_factory=dict)
    # Each instance's phase: prefill, decode or unified (colocated).
    phases: dict[str, str] = field(default_factory=dict)


async def read_energy(telemetry_address: str, security: RpcSecurity | None = None) -> EnergyReading:
    from voltana.services.telemetry import TelemetryClient

    async with TelemetryClient(telemetry_address, security=security) as client:
        snapshot, infos = await client.snapshot_with_endpoints()
    return EnergyReading(
        energy_j={state.instance_id: state.energy_j for state in snapshot.states()},
        engine_urls={i: info.engine_url for i, info in infos.items() if info.engine_url},
        gpus={i: max(1, len(info.gpu_refs)) for i, info in infos.items()},
        phases={state.instance_id: state.phase.value for state in snapshot.states()},
    )


def instance_figures(
    results: Sequence[RequestResult],
    before: EnergyReading | None,
    after: EnergyReading | None,
) -> dict[str, dict[str, Any]]:
    """Per instance: its phase (None without telemetry), the completed requests it served
    and its GPUs' energy over the run (None when unmeasured)."""
    served = Counter(i for r in results if r.completed for i in r.instances)
    phases = after.phases if after is not None else {}
    figures: dict[str, dict[str, Any]] = {}
    for instance_id in sorted(set(served) | set(phases)):
        energy_j = None
        if before is not None and after is not None:
            start_j, end_j = before.energy_j.get(instance_id), after.energy_j.get(instance_id)
            if start_j is not None and end_j is not None and end_j > 0:
                energy_j = max(0.0, end_j - start_j)
        figures[instance_id] = {
            "phase": phases.get(instance_id),
            "requests": served.get(instance_id, 0),
            "energy_j": energy_j,
        }
    return figures


def describe_instances(figures: Mapping[str, Mapping[str, Any]]) -> str:
    """One line: each instance's phase, requests served and energy."""
    parts = []
    for instance_id, figure in figures.items():
        phase = f" ({figure['phase']})" if figure["phase"] else ""
        energy = figure["energy_j"]
        kj = f", {energy / 1000.0:.2f} kJ" if energy is not None else ""
        parts.append(f"{instance_id}{phase} {figure['requests']} requests{kj}")
    return "per instance: " + "; ".join(parts)


def energy_delta_j(
    before: dict[str, float],
    after: dict[str, float],
    gpus: Mapping[str, int] | None = None,
) -> tuple[float | None, int]:
    """Energy drawn by the instances present at both readings whose counter runs (telemetry
    sums a tensor-parallel instance's GPUs), and how many GPUs they run on (``gpus`` per
    instance, 1 when unknown); (None, 0) when no instance measured any energy."""
    measured = sorted(i for i in set(before) & set(after) if after[i] > 0)
    if not measured:
        return None, 0
    # A counter that went backwards (an engine restarted) adds nothing rather than subtracting.
    energy_j = sum(max(0.0, after[i] - before[i]) for i in measured)
    return energy_j, sum((gpus or {}).get(i, 1) for i in measured)


async def ask_engines(
    engine_urls: dict[str, str], ask: Callable[[SglangHttpClient, str], Awaitable[T]]
) -> list[T]:
    """``ask`` every distinct engine URL; engines this host cannot reach are left out."""
    from voltana.engine import EngineError, SglangHttpClient

    answers: list[T] = []
    async with SglangHttpClient(connect_timeout_s=2.0) as http:
        for url in sorted(set(engine_urls.values())):
            try:
                answers.append(await asyncio.wait_for(ask(http, url), 5.0))
            except (EngineError, TimeoutError):
                continue
    return answers


async def engine_speedup(engine_urls: dict[str, str]) -> float:
    """How much faster than wall time the engines run: simulated engines report their
    speedup in /get_server_info (``voltana_sim.speedup``); real SGLang servers, and engines
    this host cannot reach, count as 1. ConfigError when the engines disagree."""
    speedups: set[float] = set()
    for info in await ask_engines(engine_urls, lambda http, url: http.server_info(url)):
        sim = info.get("voltana_sim")
        speedup = sim.get("speedup") if isinstance(sim, dict) else None
        speedups.add(float(speedup) if isinstance(speedup, int | float) else 1.0)
    if len(speedups) > 1:
        raise ConfigError(
            f"the engines run at different speedups ({sorted(speedups)}); energy per wall second "
            "would mix time bases - benchmark one speedup at a time"
        )
    return speedups.pop() if speedups else 1.0


async def host_stall_s(engine_urls: dict[str, str]) -> float | None:
    """Simulated seconds the simulated engines' GPUs sat idle with work waiting because their
    host ran late (summed over engines; None when no engine reports it: real SGLang)."""
    from voltana.engine.stats import HOST_STALL_METRIC

    stalls = [
        sample.value
        for samples in await ask_engines(engine_urls, lambda http, url: http.metric_samples(url))
        for sample in samples
        if sample.name == HOST_STALL_METRIC
    ]
    return sum(stalls) if stalls else None


# ---- the command -----------------------------------------------------------------------------


def outcome_of(
    replay_result: ReplayResult,
    requests: int,
    label: str,
    energy_j: float | None,
    num_gpus: int,
    speedup: float = 1.0,
) -> RunOutcome:
    """The run's figures. With engines ``speedup`` times faster than wall time, the GPUs'
    energy covers that many more (simulated) seconds, so duration and power are on the
    engines' time base too (latencies stay wall time, as the client measured them)."""
    completed = [r for r in replay_result.results if r.completed]
    errors = Counter(r.error_reason for r in replay_result.results if not r.completed)
    request_energy = [r.energy_j for r in completed if r.energy_j is not None]
    classed = any(r.slo is not None for r in replay_result.results)
    return RunOutcome(
        policy=label,
        requests=requests,
        ttft_ms=[r.ttft_ms for r in completed],
        mean_itl_ms=[r.mean_itl_ms for r in completed],
        output_tokens=sum(r.output_tokens for r in completed),
        energy_j=energy_j,
        duration_s=replay_result.energy_window_s * speedup,
        num_gpus=num_gpus,
        rejected=dict(sorted(errors.items())),
        token_itl_ms=[gap for r in completed for gap in r.token_itl_ms],
        token_itl_weights=[w for r in completed for w in r.token_itl_weights],
        # Only when every completed request reports it (a partial sum would mislead).
        request_energy_j=(
            request_energy if completed and len(request_energy) == len(completed) else None
        ),
        slo_targets=[r.slo for r in completed] if classed else (),
        slo_classes=[r.slo_class or DEFAULT_CLASS for r in completed] if classed else (),
        requests_by_class=(
            dict(Counter(r.slo_class or DEFAULT_CLASS for r in replay_result.results))
            if classed
            else {}
        ),
    )


def _stats(values: Sequence[float], weights: Sequence[float] | None = None) -> dict[str, Any]:
    """Mean and p50/p90/p99 (weighted: each value counts ``weights[i]`` times)."""
    p50, p90, p99 = weighted_percentiles(values, weights, (0.5, 0.9, 0.99))
    total = sum(weights) if weights is not None else float(len(values))
    if weights is None:
        mean = sum(values) / total if total else None
    else:
        mean = sum(v * w for v, w in zip(values, weights, strict=True)) / total if total else None
    return {"mean": mean, "p50": p50, "p90": p90, "p99": p99}


def client_latency_ms(outcome: RunOutcome) -> dict[str, dict[str, Any]]:
    """The client's latency figures with their means, for comparing with other load
    generators (bench/load_generators.py): TTFT per request, token-level ITL (every gap
    weighed by the tokens that saw it, as ``itl_ms``) and each request's mean ITL (its time
    per output token after the first, what other tools call TPOT)."""
    return {
        "ttft": _stats(outcome.ttft_ms),
        "itl": _stats(outcome.token_itl_ms, outcome.token_itl_weights),
        "request_mean_itl": _stats(outcome.mean_itl_ms),
    }


def result_row(outcome: RunOutcome, args: argparse.Namespace) -> dict[str, Any]:
    # Unknown energy (no --telemetry) stays None in every energy figure; the table shows "-".
    rows = [summarize(outcome, slo_from_args(args))]
    add_savings(rows)
    return rows[0]


async def bench(
    args: argparse.Namespace,
    requests: list[TraceRequest],
    security: RpcSecurity,
    api_key: str | None = None,
) -> tuple[dict[str, Any], float]:
    """The result row, and how much faster than wall time the engines ran."""
    client = VoltanaClient(args.target, api_key=api_key, tls=security.tls)
    async with client:
        await client.wait_until_ready(args.connect_timeout_s)
        energy_before = await read_energy(args.telemetry, security) if args.telemetry else None
        metered_from_s = time.monotonic()
        stall_before_s = (
            await host_stall_s(energy_before.engine_urls) if energy_before is not None else None
        )
        progress = None if args.quiet else ProgressBar(f"{args.policy_label:>16}")
        total = len(requests)
        replayed = await replay(
            client,
            requests,
            max_concurrency=args.max_concurrency,
            timeout_s=args.request_timeout_s,
            on_done=None if progress is None else (lambda done: progress.update(done / total)),
            vocab_size=args.vocab_size,
        )
        energy_j: float | None = None
        stalled_s: float | None = None
        num_gpus = 0
        speedup = 1.0
        energy_after: EnergyReading | None = None
        if energy_before is not None:
            energy_after = await read_energy(args.telemetry, security)
            # Energy covers the readings' span, not only the replay's: power is taken over it.
            replayed.metered_s = time.monotonic() - metered_from_s
            stall_after_s = await host_stall_s(energy_after.engine_urls)
            if stall_after_s is not None:
                stalled_s = max(0.0, stall_after_s - (stall_before_s or 0.0))
            if stalled_s:
                print(
                    f"the simulated engines lost {stalled_s:.2f} s (simulated) to a host too "
                    "busy for them (GPUs idle with work waiting): the latencies include it",
                    file=sys.stderr,
                )
            energy_j, num_gpus = energy_delta_j(
                energy_before.energy_j, energy_after.energy_j, energy_after.gpus
            )
            speedup = await engine_speedup(energy_after.engine_urls)
            if energy_j is None:
                print("no instance reported GPU energy: energy is not measured", file=sys.stderr)
            if speedup != 1.0:
                print(
                    f"the engines run {speedup:g}x faster than wall time: energy, power and "
                    "duration are on their (simulated) time base, latencies are wall time",
                    file=sys.stderr,
                )
    outcome = outcome_of(replayed, total, args.policy_label, energy_j, num_gpus, speedup)
    row = result_row(outcome, args)
    row["sim_host_stall_s"] = stalled_s
    row["instances"] = instance_figures(replayed.results, energy_before, energy_after)
    if row["instances"]:
        print(describe_instances(row["instances"]), file=sys.stderr)
    row["client_latency_ms"] = client_latency_ms(outcome)
    return row, speedup


def run(args: argparse.Namespace) -> int:
    if args.json:
        check_output_path(args.json, "--json")
    slo = slo_from_args(args)
    requests = with_slo_class_from_args(args, workload_from_args(args), slo, seed=args.seed)
    workload = summarize_workload(requests)
    print(f"workload: {args.trace} x{args.rate_scale:g} - {workload.describe()}", file=sys.stderr)
    print(
        f"target: router {args.target}, telemetry {args.telemetry or '- (energy not measured)'}; "
        f"SLO TTFT {slo.ttft_ms:g} ms, ITL {slo.itl_ms:g} ms",
        file=sys.stderr,
    )
    # Reading telemetry needs no token; TLS (and a token, when given) apply to every call.
    security = security_from_args(args, required=False)
    row, speedup = asyncio.run(bench(args, requests, security, api_key_from_args(args)))
    if row["rejected"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in row["rejected_by_reason"].items())
        print(f"requests that did not complete: {reasons}", file=sys.stderr)
    print(format_table([row]), file=report_stream(args.json))
    if args.json:
        document = {
            "config": {
                "target": args.target,
                "telemetry": args.telemetry,
                "trace": args.trace,
                "rate_scale": args.rate_scale,
                "start_s": args.start_s,
                "duration_s": args.duration_s,
                "max_requests": args.max_requests,
                "max_concurrency": args.max_concurrency,
                "request_timeout_s": args.request_timeout_s,
                "ttft_slo_ms": slo.ttft_ms,
                "itl_slo_ms": slo.itl_ms,
                "slo_class": args.slo_class,
                "seed": args.seed,
                "policy_label": args.policy_label,
                # Engines this much faster than wall time: duration and power are on their
                # (simulated) time base, latencies are wall time.
                "engine_speedup": speedup,
                "workload": workload.to_dict(),
            },
            "results": [row],
        }
        write_text(args.json, json.dumps(document, indent=2), "--json")
    return 0
