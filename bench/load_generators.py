"""Real load generators against Voltana's HTTP door, beside `voltana bench`.

Starts `voltana up --sim` (a fixed PD layout, static-max clocks, speedup 1) and replays one
request shape through it with three clients in turn:

1. `voltana bench` (the SDK over gRPC; the reference),
2. SGLang's own `bench_serving` (the real `sglang` package, `--backend sglang`: SGLang's native
   `/generate`, streamed; `--bench-serving-backend sglang-oai` sends `/v1/completions`),
3. NVIDIA's `aiperf` (`/v1/completions`, streamed),

each with the same shape: fixed prompt and output token counts (`ignore_eos`), Poisson arrivals
at the same rate, the same number of requests. It prints their TTFT, ITL and per-request mean
ITL (mean/p50/p99) side by side with each tool's ratio to `voltana bench`, and passes when every
tool completed every request with no error and its medians are within the tolerance (10 %).

    PYTHONPATH=. python3 bench/load_generators.py [--rounds 2] [--requests 60] [--rate 2] [--json OUT]

What each tool measures (all on the client, all wall time; compared like with like):

- TTFT: from just before the request is sent to the first streamed chunk with output text.
  voltana bench: the SDK's first token event; bench_serving: `ttft` (its clock starts before
  the POST); aiperf: `time_to_first_token` (from `request_start_ns`).
- ITL, token level: the gap between consecutive streamed chunks, divided among the tokens of
  the later chunk, over every token of every request. voltana bench: `itl_ms` (each gap
  weighed by its tokens); bench_serving `--backend sglang`: `itl` (chunk gap / new tokens,
  repeated per token; with `sglang-oai` one entry per chunk); aiperf: `inter_chunk_latency`
  (one entry per chunk). The door streams one token per chunk unless the router read two
  from the engine at once (a busy host; the run notes how often from aiperf's chunk counts),
  so per chunk is per token.
- Per-request mean ITL ("TPOT"): (last token - first token) / (output tokens - 1) per request,
  then mean/p50/p99 over requests. voltana bench: `client_latency_ms.request_mean_itl`;
  bench_serving: `tpot` (from its latency, which ends at the stream's last event); aiperf:
  `inter_token_latency` (its "ITL" is this per-request figure, not the token-level one).

Only the medians decide pass/fail (they are steady over ~100 requests; means and p99 move
with a few slow requests on a shared host and are shown for information).

Tokenizer: every tool needs a Hugging Face tokenizer to make prompts of N tokens, and nothing
can be downloaded. The simulated engines count a prompt's tokens by their own rule (each
whitespace-separated word in pieces of 4 characters, voltana/engine/tokenizer.py), so this
script writes a tokenizer that follows that rule exactly: a pre-tokenizer cutting every word
into 4-character pieces and a word-level vocabulary of 1-2 character pieces (others are
`<u>`), decoding to pieces joined by spaces. A prompt a tool makes of N of its tokens is then
N tokens for the router and the engines (the server's `usage.prompt_tokens` is shown to prove
it). Output tokens are counted from the server (`--use-server-token-count`, SGLang's
`meta_info.completion_tokens`).

The tools live in their own virtual environments (never the system Python): SGLang in
$VOLTANA_SGLANG_PYTHON (default /root/.cache/voltana/sglang-venv/bin/python), aiperf in
$VOLTANA_AIPERF (default /root/.cache/voltana/loadgen-venv/bin/aiperf; `python3 -m venv
/root/.cache/voltana/loadgen-venv && /root/.cache/voltana/loadgen-venv/bin/pip install
aiperf==0.13.0`). A missing one stops the run before anything starts (one line, exit code 2).
Exit code 0: pass, 1: a tool failed or disagreed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SGLANG_PYTHON = "/root/.cache/voltana/sglang-venv/bin/python"
DEFAULT_AIPERF = "/root/.cache/voltana/loadgen-venv/bin/aiperf"
READY_TIMEOUT_S = 90.0
STATS = ("mean", "p50", "p99")
# The medians that decide pass/fail.
COMPARED = (("ttft", "p50"), ("itl", "p50"), ("tpot", "p50"))
METRIC_LABELS = {
    "ttft": "TTFT",
    "itl": "ITL (token gaps)",
    "tpot": "mean ITL per request",
}


class UsageError(Exception):
    """Bad input or a missing tool: one line on stderr, exit code 2."""


# ---- the tokenizer ---------------------------------------------------------------------------


def write_tokenizer(folder: Path) -> Path:
    """A Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) that counts tokens
    the way the simulated engines do: every whitespace-separated word in pieces of 4
    characters. Decoding joins pieces with spaces, so N ids decode to N words of 1-4
    characters: N tokens for the router and the engines."""
    folder.mkdir(parents=True, exist_ok=True)
    special = ["<s>", "</s>", "<u>"]
    letters = string.ascii_lowercase
    pieces = [*letters, *(a + b for a in letters for b in letters), *string.digits]
    pieces += list(".,;:!?'\"()-")
    vocab = {token: index for index, token in enumerate(special + pieces)}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": index,
                "content": token,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for index, token in enumerate(special)
        ],
        "normalizer": None,
        # The matches are the tokens (invert), the whitespace between them is dropped.
        "pre_tokenizer": {
            "type": "Split",
            "pattern": {"Regex": "\\S{1,4}"},
            "behavior": "Removed",
            "invert": True,
        },
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<u>"},
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<u>",
        "model_max_length": 1_000_000,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


# ---- processes -------------------------------------------------------------------------------


def tool_env(*, keep_pythonpath: bool, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    if keep_pythonpath:
        env["PYTHONPATH"] = os.environ.get("PYTHONPATH") or str(REPO)
    else:  # a tool's own venv must not see this checkout's packages
        env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def voltana_command(*args: str) -> list[str]:
    # -P: the working directory does not go first on sys.path; PYTHONPATH decides the checkout.
    return [sys.executable, "-P", "-m", "voltana.cli.main", *args]


@contextmanager
def sim_stack(args: argparse.Namespace, log: Path) -> Iterator[dict[str, str]]:
    """`voltana up --sim` on free ports; yields the addresses it prints."""
    command = voltana_command(
        "up", "--sim", "--prefill", str(args.prefill), "--decode", str(args.decode),
        "--gpu", args.gpu, "--model", args.model, "--policy", "static-max", "--speedup", "1",
        "--router-port", "0", "--telemetry-port", "0", "--controller-port", "0",
        "--http-port", "0", "--no-metrics",
    )  # fmt: skip
    with log.open("w") as stderr:
        process = subprocess.Popen(
            command,
            env=tool_env(keep_pythonpath=True),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        addresses: dict[str, str] = {"command": " ".join(command[2:])}
        assert process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        for line in process.stdout:
            if line.startswith("#"):
                break
            name, _, address = line.strip().partition("  ")
            addresses[name.strip()] = address.strip()
            if time.monotonic() > deadline:
                break
        if "router.http" not in addresses:
            raise RuntimeError(f"voltana up did not start (exit {process.poll()}): {tail(log)}")
        wait_healthy(addresses["router.http"])
        yield addresses
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_healthy(http_url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(http_url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the router's HTTP door at {http_url} never became healthy")
        time.sleep(0.5)


def warm_up(http_url: str, input_tokens: int, output_tokens: int, count: int = 3) -> None:
    """A few requests through the door before anything is measured."""
    body = {
        "text": " ".join(["ab"] * input_tokens),
        "sampling_params": {"max_new_tokens": output_tokens, "ignore_eos": True},
    }
    for _ in range(count):
        request = urllib.request.Request(
            http_url + "/generate",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


@dataclass
class ToolRun:
    """One tool's run and what it measured (ms)."""

    name: str
    endpoint: str
    command: list[str]
    version: str = ""
    sent: int = 0
    completed: int = 0
    errors: int = 0
    prompt_tokens: float | None = None
    output_tokens: float | None = None
    stats: dict[str, dict[str, float | None]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # What the router measured of the same requests (telemetry's aggregates over the run):
    # TTFT from the request's arrival at the router, the median of per-request mean ITL.
    router: dict[str, float | None] = field(default_factory=dict)
    wall_s: float = 0.0
    loadavg_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    loadavg_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # Each round's own figures, when this run combines several.
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "command": self.command,
            "version": self.version,
            "sent": self.sent,
            "completed": self.completed,
            "errors": self.errors,
            "prompt_tokens_per_request": self.prompt_tokens,
            "output_tokens_per_request": self.output_tokens,
            "latency_ms": self.stats,
            "problems": self.problems,
            "notes": self.notes,
            "router_side_ms": self.router,
            "wall_s": self.wall_s,
            "loadavg_before": self.loadavg_before,
            "loadavg_after": self.loadavg_after,
            **({"rounds": self.rounds} if self.rounds else {}),
        }


def router_side(telemetry: str, window_s: float) -> dict[str, float | None]:
    """Telemetry's cluster aggregate over the last ``window_s``: the router's own TTFT (from
    the request's arrival at the router) and per-request mean ITL medians."""
    import asyncio

    import grpc

    from voltana.rpc import create_channel
    from voltana.v1 import telemetry_pb2, telemetry_pb2_grpc

    async def ask() -> Any:
        channel = create_channel(telemetry)
        try:
            stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
            request = telemetry_pb2.GetAggregatesRequest(window_s=window_s)
            return await stub.GetAggregates(request, timeout=10.0)
        finally:
            await channel.close()

    try:
        cluster = asyncio.run(ask()).cluster
    except grpc.RpcError:
        return {}
    return {
        "completed": float(cluster.completed_requests),
        "ttft_p50": cluster.p50_ttft_ms if cluster.HasField("p50_ttft_ms") else None,
        "tpot_p50": cluster.p50_itl_ms if cluster.HasField("p50_itl_ms") else None,
    }


def run_tool(
    run: ToolRun,
    env: dict[str, str],
    log: Path,
    timeout_s: float,
    parse: Callable[[ToolRun], None],
    telemetry: str,
) -> ToolRun:
    print(f"{run.name}: {' '.join(run.command)}", file=sys.stderr)
    run.loadavg_before = os.getloadavg()
    started = time.monotonic()
    with log.open("w") as output:
        try:
            code = subprocess.run(
                run.command, env=env, stdout=output, stderr=subprocess.STDOUT, timeout=timeout_s
            ).returncode
        except subprocess.TimeoutExpired:
            code = None
    run.wall_s = time.monotonic() - started
    run.loadavg_after = os.getloadavg()
    run.router = router_side(telemetry, run.wall_s)
    if code != 0:
        what = f"timed out after {timeout_s:.0f} s" if code is None else f"exit code {code}"
        run.problems.append(f"{run.name} {what}")
        print(f"{run.name} {what}; the end of its output:\n{tail(log)}", file=sys.stderr)
    try:
        parse(run)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        run.problems.append(f"cannot read {run.name}'s results: {type(error).__name__}: {error}")
    if run.completed < run.sent:
        run.problems.append(f"{run.name} completed {run.completed} of {run.sent} requests")
    if run.errors:
        run.problems.append(f"{run.name} saw {run.errors} failed requests")
    figures = ", ".join(
        f"{METRIC_LABELS[metric]} p50 {fmt(run.stats.get(metric, {}).get('p50'))} ms"
        for metric in METRIC_LABELS
    )
    print(
        f"{run.name}: {run.completed}/{run.sent} completed in {run.wall_s:.0f} s, {figures} "
        f"(load average {run.loadavg_before[0]:.2f} -> {run.loadavg_after[0]:.2f})",
        file=sys.stderr,
    )
    return run


def version_of(command: Sequence[str], env: dict[str, str] | None = None) -> str:
    """The last line a version probe prints ("?" when it fails)."""
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=60,
            env=env if env is not None else tool_env(keep_pythonpath=False),
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "?"


# ---- the three tools -------------------------------------------------------------------------


def poisson_trace(args: argparse.Namespace, seed: int) -> str:
    return (
        f"synthetic:poisson:rate={args.rate:g},count={args.requests},"
        f"input={args.input_tokens},output={args.output_tokens},seed={seed}"
    )


def run_voltana_bench(
    args: argparse.Namespace, stack: dict[str, str], work: Path, seed: int
) -> ToolRun:
    out = work / "voltana-bench.json"
    command = voltana_command(
        "bench", "--target", stack["router"], "--telemetry", stack["telemetry"],
        "--trace", poisson_trace(args, seed), "--policy-label", "voltana-bench",
        "--json", str(out), "--quiet",
    )  # fmt: skip
    run = ToolRun("voltana bench", "gRPC Generate (SDK)", command, sent=args.requests)
    env = tool_env(keep_pythonpath=True)
    run.version = "voltana " + version_of(
        [sys.executable, "-P", "-c", "import voltana; print(voltana.__version__)"], env
    )

    def parse(run: ToolRun) -> None:
        (row,) = json.loads(out.read_text())["results"]
        run.completed, run.errors = int(row["completed"]), int(row["rejected"])
        latency = row["client_latency_ms"]
        run.stats = {
            "ttft": pick(latency["ttft"]),
            "itl": pick(latency["itl"]),
            "tpot": pick(latency["request_mean_itl"]),
        }
        # The SDK sends exactly --input-tokens ids and asks for --output-tokens (ignore_eos);
        # a request that ended with fewer would not count as completed.
        run.prompt_tokens = float(args.input_tokens)
        run.output_tokens = float(args.output_tokens)

    return run_tool(
        run, env, work / "voltana-bench.log", tool_timeout_s(args), parse, stack["telemetry"]
    )


def pick(values: dict[str, Any], names: Sequence[str] = STATS) -> dict[str, float | None]:
    return {name: (None if values.get(name) is None else float(values[name])) for name in names}


def run_bench_serving(
    args: argparse.Namespace, stack: dict[str, str], work: Path, seed: int, tokenizer: Path
) -> ToolRun:
    out = work / "bench-serving.jsonl"
    backend = args.bench_serving_backend
    endpoint = {"sglang": "/generate", "sglang-oai": "/v1/completions"}[backend]
    command = [
        args.sglang_python, "-m", "sglang.bench_serving", "--backend", backend,
        # --model is only read locally (its chat template); requests name the served model.
        "--base-url", stack["router.http"], "--model", str(tokenizer),
        "--served-model-name", args.served_model,
        "--tokenizer", str(tokenizer), "--dataset-name", "random-ids",
        "--random-input-len", str(args.input_tokens),
        "--random-output-len", str(args.output_tokens), "--random-range-ratio", "1.0",
        "--num-prompts", str(args.requests), "--request-rate", f"{args.rate:g}",
        "--seed", str(seed), "--output-file", str(out), "--output-details",
        "--disable-tqdm", "--warmup-requests", "1",
    ]  # fmt: skip
    run = ToolRun("bench_serving", f"HTTP {endpoint}", command, sent=args.requests)
    run.version = "sglang " + version_of(
        [args.sglang_python, "-c", "import importlib.metadata as m; print(m.version('sglang'))"]
    )

    def parse(run: ToolRun) -> None:
        # One JSON line per run; the last one is this run's.
        result = json.loads(out.read_text().strip().splitlines()[-1])
        run.completed = int(result["completed"])
        run.errors = sum(1 for error in result.get("errors", []) if error)
        run.stats = {
            metric: {
                "mean": float(result[f"mean_{key}_ms"]),
                "p50": float(result[f"median_{key}_ms"]),
                "p99": float(result[f"p99_{key}_ms"]),
            }
            for metric, key in (("ttft", "ttft"), ("itl", "itl"), ("tpot", "tpot"))
        }
        if run.completed:
            # Both from the server: meta_info.prompt_tokens / completion_tokens.
            run.prompt_tokens = result["total_input_tokens"] / run.completed
            run.output_tokens = result["total_output_tokens"] / run.completed

    env = tool_env(keep_pythonpath=False, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return run_tool(
        run, env, work / "bench-serving.log", tool_timeout_s(args), parse, stack["telemetry"]
    )


def run_aiperf(
    args: argparse.Namespace, stack: dict[str, str], work: Path, seed: int, tokenizer: Path
) -> ToolRun:
    artifacts = work / "aiperf"
    command = [
        args.aiperf, "profile", "--model", args.served_model, "--url", stack["router.http"],
        "--endpoint-type", "completions", "--streaming", "--tokenizer", str(tokenizer),
        "--isl", str(args.input_tokens), "--isl-stddev", "0",
        "--osl", str(args.output_tokens), "--osl-stddev", "0",
        "--request-rate", f"{args.rate:g}", "--arrival-pattern", "poisson",
        "--request-count", str(args.requests), "--random-seed", str(seed),
        "--extra-inputs", "ignore_eos:true", "--use-server-token-count",
        "--ui-type", "none", "--artifact-dir", str(artifacts),
        # No DCGM/NVML scraping and no Prometheus polling of <url>/metrics (the router's
        # metrics are on their own port): fewer aiperf processes competing for the CPUs.
        "--no-gpu-telemetry", "--no-server-metrics",
    ]  # fmt: skip
    run = ToolRun("aiperf", "HTTP /v1/completions", command, sent=args.requests)
    run.version = "aiperf " + version_of([args.aiperf, "--version"])

    def parse(run: ToolRun) -> None:
        result = json.loads((artifacts / "profile_export_aiperf.json").read_text())
        finished = int(result["completed_request_count"]["avg"])  # successes and errors
        # The same errors, as a rate and as a summary by kind: whichever says more.
        run.errors = max(
            round(result["request_error_rate"]["avg"] * finished / 100.0),
            sum(int(entry.get("count", 1)) for entry in result.get("error_summary", [])),
        )
        run.completed = finished - run.errors
        run.stats = {
            "ttft": pick(aiperf_stats(result["time_to_first_token"])),
            "itl": pick(aiperf_stats(result["inter_chunk_latency"])),
            "tpot": pick(aiperf_stats(result["inter_token_latency"])),
        }
        run.prompt_tokens = float(result["usage_prompt_tokens"]["avg"])
        run.output_tokens = float(result["usage_completion_tokens"]["avg"])
        gaps = chunks_per_request(artifacts / "profile_export.jsonl")
        if gaps is not None and run.output_tokens and gaps < run.output_tokens - 1:
            # The router sends what one read from the engine brought as one chunk: on a busy
            # host two tokens sometimes share one, and that gap then counts once, not twice.
            run.notes.append(
                f"aiperf: {gaps + 1:.2f} chunks per request for {run.output_tokens:g} tokens "
                "(a few chunks held 2 tokens; its chunk gaps are token gaps otherwise)"
            )

    # Not HF_HUB_OFFLINE: aiperf 0.13 then looks a local tokenizer folder up in the Hugging
    # Face cache and fails; a local path is loaded without the network either way.
    env = tool_env(keep_pythonpath=False, HF_HUB_DISABLE_TELEMETRY="1")
    return run_tool(run, env, work / "aiperf.log", tool_timeout_s(args), parse, stack["telemetry"])


def aiperf_stats(metric: dict[str, Any]) -> dict[str, Any]:
    return {"mean": metric.get("avg"), "p50": metric.get("p50"), "p99": metric.get("p99")}


def chunks_per_request(records: Path) -> float | None:
    """Mean number of inter-chunk gaps per request in aiperf's per-request records."""
    counts = []
    for line in records.read_text().splitlines():
        gaps = json.loads(line).get("metrics", {}).get("inter_chunk_latency", {}).get("value")
        if isinstance(gaps, list):
            counts.append(len(gaps))
    return sum(counts) / len(counts) if counts else None


def tool_timeout_s(args: argparse.Namespace) -> float:
    return args.requests / args.rate * 3 + 180.0


# ---- the report ------------------------------------------------------------------------------


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def verdict(runs: Sequence[ToolRun], tolerance: float) -> tuple[bool, list[str]]:
    reference, others = runs[0], runs[1:]
    failures = [problem for run in runs for problem in run.problems]
    for run in others:
        for metric, stat in COMPARED:
            r = ratio(
                run.stats.get(metric, {}).get(stat), reference.stats.get(metric, {}).get(stat)
            )
            if r is None:
                failures.append(f"{run.name}: no {METRIC_LABELS[metric]} {stat}")
            elif abs(r - 1.0) > tolerance:
                failures.append(
                    f"{run.name}: {METRIC_LABELS[metric]} {stat} is {r:.3f}x voltana bench's "
                    f"(beyond +/-{tolerance:.0%})"
                )
    return not failures, failures


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def table(runs: Sequence[ToolRun]) -> str:
    reference = runs[0]
    header = ["", *(f"{run.name}" for run in runs)]
    rows: list[list[str]] = [
        ["endpoint", *(run.endpoint for run in runs)],
        ["version", *(run.version for run in runs)],
        ["completed / sent", *(f"{run.completed}/{run.sent}" for run in runs)],
        ["failed requests", *(str(run.errors) for run in runs)],
        [
            "prompt / output tokens",
            *(f"{fmt(run.prompt_tokens, '.0f')} / {fmt(run.output_tokens, '.0f')}" for run in runs),
        ],
        [
            "load avg (1 min) before/after",
            *(f"{run.loadavg_before[0]:.2f}/{run.loadavg_after[0]:.2f}" for run in runs),
        ],
    ]
    for metric, label in METRIC_LABELS.items():
        for stat in STATS:
            cells = [f"{label} {stat} (ms)"]
            for index, run in enumerate(runs):
                value = run.stats.get(metric, {}).get(stat)
                cell = fmt(value)
                if index:
                    r = ratio(value, reference.stats.get(metric, {}).get(stat))
                    cell += f" ({fmt(r, '.3f')}x)"
                cells.append(cell)
            rows.append(cells)
    for key, label in (("ttft_p50", "TTFT p50"), ("tpot_p50", "mean ITL per request p50")):
        rows.append([f"router-side {label} (ms)", *(fmt(run.router.get(key)) for run in runs)])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(header)).rstrip()]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return "\n".join(lines)


# ---- the command -----------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run voltana bench, SGLang's bench_serving and aiperf against `voltana up "
        "--sim` with one request shape and compare their TTFT/ITL.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    shape = parser.add_argument_group("request shape (the same for every tool)")
    shape.add_argument(
        "--requests",
        type=positive_int,
        default=60,
        help="requests per tool and round (default: %(default)s)",
    )
    shape.add_argument(
        "--rounds",
        type=positive_int,
        default=2,
        help="rounds; in each the tools take turns, and every figure is the median of the "
        "rounds' (default: %(default)s)",
    )
    shape.add_argument(
        "--rate",
        type=positive_float,
        default=2.0,
        help="Poisson arrival rate, requests/s (default: %(default)s)",
    )
    shape.add_argument(
        "--input-tokens",
        type=positive_int,
        default=256,
        help="prompt tokens per request (default: %(default)s)",
    )
    shape.add_argument(
        "--output-tokens",
        type=positive_int,
        default=32,
        help="output tokens per request, ignore_eos (default: %(default)s)",
    )
    shape.add_argument(
        "--seed", type=int, default=1, help="every tool's random seed (default: %(default)s)"
    )
    stack = parser.add_argument_group("the simulated stack")
    stack.add_argument(
        "--prefill", type=positive_int, default=1, help="prefill instances (default: %(default)s)"
    )
    stack.add_argument(
        "--decode", type=positive_int, default=1, help="decode instances (default: %(default)s)"
    )
    stack.add_argument("--gpu", default="a100-80g", help="GPU type (default: %(default)s)")
    stack.add_argument(
        "--model",
        default="llama-3.1-8b",
        help="model; also the served model name (default: %(default)s)",
    )
    tools = parser.add_argument_group("tools")
    tools.add_argument(
        "--sglang-python",
        default=os.environ.get("VOLTANA_SGLANG_PYTHON", DEFAULT_SGLANG_PYTHON),
        help="Python of a venv with the real sglang package (default: $VOLTANA_SGLANG_PYTHON "
        "or %(default)s)",
    )
    tools.add_argument(
        "--bench-serving-backend",
        choices=("sglang", "sglang-oai"),
        default="sglang",
        help="sglang: native /generate; sglang-oai: /v1/completions (default: %(default)s)",
    )
    tools.add_argument(
        "--aiperf",
        default=os.environ.get("VOLTANA_AIPERF", DEFAULT_AIPERF),
        help="the aiperf executable of its own venv (default: $VOLTANA_AIPERF or %(default)s)",
    )
    tools.add_argument(
        "--skip",
        action="append",
        choices=("bench_serving", "aiperf"),
        default=[],
        help="leave a tool out (repeatable); voltana bench always runs",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--tolerance",
        type=positive_float,
        default=0.10,
        help="allowed relative difference of the medians (default: %(default)s)",
    )
    out.add_argument(
        "--json", metavar="OUT", help="write the figures, commands and verdict as JSON"
    )
    out.add_argument(
        "--work-dir",
        type=Path,
        help="keep the tools' logs and raw results here (default: a temporary folder)",
    )
    args = parser.parse_args(argv)
    args.served_model = args.model
    return args


def check_tools(args: argparse.Namespace) -> None:
    if "bench_serving" not in args.skip:
        python = Path(args.sglang_python)
        if not (python.is_file() and os.access(python, os.X_OK)):
            raise UsageError(
                f"bench_serving needs the real sglang package: no Python at {python} "
                "(--sglang-python or $VOLTANA_SGLANG_PYTHON; or --skip bench_serving)"
            )
        probe = subprocess.run(
            [str(python), "-c", "import importlib.util as u, sys; "
             "sys.exit(u.find_spec('sglang') is None or u.find_spec('transformers') is None)"],
            env=tool_env(keep_pythonpath=False),
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        if probe.returncode != 0:
            raise UsageError(
                f"bench_serving needs the sglang and transformers packages, which {python} "
                "lacks (install sglang into that venv, or --skip bench_serving)"
            )
    if "aiperf" not in args.skip:
        aiperf = Path(args.aiperf)
        if not (aiperf.is_file() and os.access(aiperf, os.X_OK)):
            venv = Path(DEFAULT_AIPERF).parent.parent
            raise UsageError(
                f"aiperf is not installed at {aiperf} (put it in a venv of its own: python3 -m "
                f"venv {venv} && {venv}/bin/pip install aiperf==0.13.0; --aiperf or "
                "$VOLTANA_AIPERF names another; or --skip aiperf)"
            )
    if args.json:
        folder = Path(args.json).resolve().parent
        if not folder.is_dir():
            raise UsageError(f"--json {args.json}: no such folder {folder}")


def combine(rounds: Sequence[ToolRun]) -> ToolRun:
    """One tool's rounds as one run: counts summed, each statistic the median of the rounds'
    (one round: its own figures)."""
    first = rounds[0]
    run = ToolRun(first.name, first.endpoint, first.command, version=first.version)
    run.sent = sum(r.sent for r in rounds)
    run.completed = sum(r.completed for r in rounds)
    run.errors = sum(r.errors for r in rounds)
    for attribute in ("prompt_tokens", "output_tokens"):
        values = [getattr(r, attribute) for r in rounds if getattr(r, attribute) is not None]
        setattr(run, attribute, sum(values) / len(values) if values else None)
    for metric in METRIC_LABELS:
        run.stats[metric] = {}
        for stat in STATS:
            values = [v for r in rounds if (v := r.stats.get(metric, {}).get(stat)) is not None]
            run.stats[metric][stat] = median(values) if values else None
    run.problems = [problem for r in rounds for problem in r.problems]
    run.notes = [note for r in rounds for note in r.notes]
    for key in ("ttft_p50", "tpot_p50"):
        values = [v for r in rounds if (v := r.router.get(key)) is not None]
        run.router[key] = median(values) if values else None
    run.wall_s = sum(r.wall_s for r in rounds)
    run.loadavg_before, run.loadavg_after = first.loadavg_before, rounds[-1].loadavg_after
    run.rounds = [r.to_dict() for r in rounds]
    return run


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    tokenizer = write_tokenizer(work / "tokenizer")
    by_tool: dict[str, list[ToolRun]] = {}
    with sim_stack(args, work / "voltana-up.log") as stack:
        print(f"stack: {stack['command']} (HTTP door {stack['router.http']})", file=sys.stderr)
        warm_up(stack["router.http"], args.input_tokens, args.output_tokens)
        # Round after round, the tools take turns, so a change of the host's load while the
        # benchmark runs falls on all of them; each round draws new arrivals (seed + round).
        for index in range(args.rounds):
            folder = work / f"round-{index + 1}"
            folder.mkdir(parents=True, exist_ok=True)
            seed = args.seed + index
            rounds = [run_voltana_bench(args, stack, folder, seed)]
            if "bench_serving" not in args.skip:
                rounds.append(run_bench_serving(args, stack, folder, seed, tokenizer))
            if "aiperf" not in args.skip:
                rounds.append(run_aiperf(args, stack, folder, seed, tokenizer))
            for run in rounds:
                by_tool.setdefault(run.name, []).append(run)
        stack_command = stack["command"]
    runs = [combine(rounds) for rounds in by_tool.values()]
    passed, failures = verdict(runs, args.tolerance)
    print(table(runs))
    over = f"the median of {args.rounds} rounds' " if args.rounds > 1 else ""
    print(
        f"\ncompared: {over}{', '.join(f'{METRIC_LABELS[m]} {s}' for m, s in COMPARED)} of "
        f"each tool against voltana bench's, within +/-{args.tolerance:.0%}; every request "
        "completed with no error"
    )
    for note in (note for run in runs for note in run.notes):
        print(f"note: {note}")
    print("PASS" if passed else "FAIL: " + "; ".join(failures))
    return {
        "config": {
            "stack": stack_command,
            "rounds": args.rounds,
            "requests_per_round": args.requests,
            "rate_rps": args.rate,
            "arrivals": "poisson",
            "input_tokens": args.input_tokens,
            "output_tokens": args.output_tokens,
            "seed": args.seed,
            "tolerance": args.tolerance,
            "compared": [f"{metric}.{stat}" for metric, stat in COMPARED],
        },
        "tools": {run.name: run.to_dict() for run in runs},
        "passed": passed,
        "failures": failures,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_tools(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        document = benchmark(args, args.work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="voltana-loadgen-") as folder:
            document = benchmark(args, Path(folder))
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0 if document["passed"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
