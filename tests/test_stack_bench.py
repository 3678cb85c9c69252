"""`voltana bench` against a running in-process stack: the simulate report and --json schema,
energy from telemetry, and every request accounted for."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from voltana.cli.bench_cmd import client_latency_ms, energy_delta_j, error_reason, prompt_ids
from voltana.contract.state import SloTarget
from voltana.report import RunOutcome, summarize
from voltana.sdk import InvalidRequestError, ServerError, UnavailableError
from voltana.stack import SimStack, SimStackSettings
from voltana.workloads import TraceRequest, load_workload
from voltana.workloads.classes import parse_slo_class, with_slo_class

BENCH_TIMEOUT_S = 60.0
# What `voltana simulate --json` writes per policy (voltana.report.summarize).
RESULT_KEYS = set(summarize(RunOutcome("x", 1, [1.0], [1.0], 1, 1.0, 1.0, 1), SloTarget()).keys())


@pytest.fixture
async def stack() -> AsyncIterator[SimStack]:
    settings = SimStackSettings(
        prefill=1,
        decode=1,
        speedup=5.0,
        report_interval_ms=100.0,
        sample_interval_ms=100,
        snapshot_interval_ms=50,
        drain_timeout_s=0.5,
    )
    async with SimStack(settings) as running:
        yield running


def write_trace(path: Path) -> Path:
    """Eight small requests over 0.7 s, one asking for more tokens than the router allows."""
    lines = [
        {"timestamp": 100 * i, "input_length": 128 + 16 * i, "output_length": 12} for i in range(8)
    ]
    lines[5]["output_length"] = 20_000  # above the router's max_new_tokens_limit
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


async def run_bench(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voltana.cli.main",
        "bench",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), BENCH_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.mark.e2e
async def test_bench_prints_the_simulate_table_and_json(stack: SimStack, tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "tiny.jsonl")
    out = tmp_path / "bench.json"
    code, stdout, stderr = await run_bench(
        "--target",
        stack.router_address,
        "--telemetry",
        stack.telemetry_address,
        "--trace",
        str(trace),
        "--policy-label",
        "static-max",
        "--json",
        str(out),
    )
    assert code == 0, stderr
    table = stdout.splitlines()
    assert table[0].split() == ["static-max"]
    labels = [line.split("  ")[0].strip() for line in table[2:]]
    assert labels[:4] == ["requests", "completed", "rejected", "energy (kJ)"]
    assert "SLO attainment" in labels
    assert "invalid_request: 1" in stderr  # the failed request is named on stderr

    document = json.loads(out.read_text())
    assert set(document) == {"config", "results"}
    assert document["config"]["target"] == stack.router_address
    (row,) = document["results"]
    assert set(row) == RESULT_KEYS | {"sim_host_stall_s", "instances", "client_latency_ms"}
    assert row["policy"] == "static-max"
    assert row["requests"] == 8
    assert row["completed"] == 7
    assert row["rejected"] == 1 and row["rejected_by_reason"] == {"invalid_request": 1}
    assert row["energy_j"] > 0
    # What the simulated engines lost to a late host is measured (0 on an idle machine, but
    # never unknown: they report it).
    assert row["sim_host_stall_s"] is not None and row["sim_host_stall_s"] >= 0
    # The engines run 5x faster than wall time, so their GPUs' energy covers 5x the wall
    # duration: power per GPU stays an A100's (idle ~60 W, TDP 400 W), not 5x that.
    assert document["config"]["engine_speedup"] == 5.0
    assert 50.0 < row["avg_power_w"] < 150.0
    assert row["energy_per_output_token_j"] == pytest.approx(row["energy_j"] / (7 * 12))
    assert row["ttft_ms"]["p50"] > 0 and row["itl_ms"]["p50"] > 0
    # The same percentiles with their means, for bench/load_generators.py.
    latency = row["client_latency_ms"]
    assert set(latency) == {"ttft", "itl", "request_mean_itl"}
    assert latency["ttft"]["p50"] == row["ttft_ms"]["p50"]
    assert latency["itl"]["p99"] == row["itl_ms"]["p99"]
    assert all(latency[name]["mean"] > 0 for name in latency)
    assert 0.0 <= row["slo_attainment"] <= 7 / 8


@pytest.mark.e2e
async def test_bench_sends_a_class_its_own_targets_and_reports_attainment_per_class(
    stack: SimStack, tmp_path: Path
) -> None:
    trace = write_trace(tmp_path / "tiny.jsonl")
    out = tmp_path / "bench.json"
    code, _, stderr = await run_bench(
        "--target",
        stack.router_address,
        "--trace",
        str(trace),
        "--slo-class",
        "batch:0.5:4",
        "--seed",
        "3",
        "--json",
        str(out),
        "--quiet",
    )
    assert code == 0, stderr
    document = json.loads(out.read_text())
    assert document["config"]["slo_class"] == "batch:0.5:4" and document["config"]["seed"] == 3
    (row,) = document["results"]
    # The same requests simulate --slo-class takes with this seed.
    offline = with_slo_class(
        load_workload(str(trace)), parse_slo_class("batch:0.5:4"), SloTarget(), seed=3
    )
    batch = sum(r.slo_class == "batch" for r in offline)
    assert 0 < batch < 8
    by_class = row["slo_classes"]
    assert {name: figures["requests"] for name, figures in by_class.items()} == {
        "batch": batch,
        "default": 8 - batch,
    }
    assert sum(figures["completed"] for figures in by_class.values()) == 7
    # A bad class spec is one line and exit 2, before anything is sent.
    code, _, stderr = await run_bench(
        "--target", stack.router_address, "--trace", str(trace), "--slo-class", "batch:2:4"
    )
    assert code == 2 and "fraction" in stderr and "Traceback" not in stderr


@pytest.mark.e2e
async def test_bench_without_telemetry_reports_unknown_energy(
    stack: SimStack, tmp_path: Path
) -> None:
    trace = tmp_path / "two.jsonl"
    trace.write_text(
        '{"timestamp": 0, "input_length": 64, "output_length": 4}\n'
        '{"timestamp": 50, "input_length": 64, "output_length": 4}\n'
    )
    out = tmp_path / "bench.json"
    code, stdout, stderr = await run_bench(
        "--target", stack.router_address, "--trace", str(trace), "--json", str(out), "--quiet"
    )
    assert code == 0, stderr
    (row,) = json.loads(out.read_text())["results"]
    assert row["completed"] == 2 and row["rejected"] == 0
    assert row["energy_j"] is None and row["avg_power_w"] is None
    assert row["sim_host_stall_s"] is None  # engines found through telemetry only
    assert row["energy_per_output_token_j"] is None and row["energy_savings_vs_first"] is None
    lines = stdout.splitlines()
    for label in ("energy (kJ)", "savings vs first", "J / output token", "avg power / GPU (W)"):
        line = next(line for line in lines if line.startswith(label))
        assert line.split()[-1] == "-", line
    assert "nan" not in stdout


@pytest.mark.e2e
async def test_bench_against_nothing_fails_in_one_line(tmp_path: Path) -> None:
    trace = tmp_path / "one.jsonl"
    trace.write_text('{"timestamp": 0, "input_length": 8, "output_length": 2}\n')
    code, _, stderr = await run_bench(
        "--target", "127.0.0.1:1", "--trace", str(trace), "--quiet", "--connect-timeout-s", "0.5"
    )
    assert code == 2
    assert stderr.strip().splitlines()[-1].startswith("voltana bench: error:")


@pytest.mark.unit
def test_prompt_ids_have_the_trace_length_and_valid_ids() -> None:
    ids = prompt_ids(TraceRequest(request_id=3, arrival_s=0.0, input_tokens=300, output_tokens=1))
    assert len(ids) == 300 and min(ids) >= 1000 and max(ids) < 21_000
    assert ids == prompt_ids(TraceRequest(3, 5.0, 300, 9))  # deterministic
    # --vocab-size: a small model's vocabulary (an id outside it kills a real SGLang server).
    small = prompt_ids(TraceRequest(3, 0.0, 300, 1), vocab_size=512)
    assert len(small) == 300 and min(small) >= 128 and max(small) < 512
    assert prompt_ids(TraceRequest(3, 0.0, 300, 1), vocab_size=128_256) == ids


@pytest.mark.unit
def test_client_latency_has_means_and_weighs_token_gaps_by_their_tokens() -> None:
    outcome = RunOutcome(
        policy="live",
        requests=2,
        ttft_ms=[40.0, 60.0],
        mean_itl_ms=[10.0, 13.0],
        output_tokens=8,
        energy_j=None,
        duration_s=1.0,
        num_gpus=0,
        # Request 1: three single-token gaps of 10 ms; request 2: a 12 ms gap, then 14 ms
        # spread over 2 tokens that came in one chunk (and 0 ms for a token that came with
        # the first one).
        token_itl_ms=[10.0, 10.0, 10.0, 0.0, 12.0, 14.0],
        token_itl_weights=[1, 1, 1, 1, 1, 2],
    )
    latency = client_latency_ms(outcome)
    assert latency["ttft"]["mean"] == 50.0 and latency["ttft"]["p50"] == 50.0
    assert latency["itl"]["mean"] == pytest.approx((30.0 + 0.0 + 12.0 + 28.0) / 7)
    assert latency["itl"]["p50"] == 10.0 and latency["itl"]["p99"] == 14.0
    assert latency["request_mean_itl"]["mean"] == 11.5
    # The percentiles are those of the table's columns.
    row = summarize(outcome, SloTarget(ttft_ms=800.0, itl_ms=50.0))
    assert latency["itl"]["p50"] == row["itl_ms"]["p50"]
    assert latency["ttft"]["p99"] == row["ttft_ms"]["p99"]


@pytest.mark.unit
def test_energy_counts_instances_seen_twice_and_never_goes_negative() -> None:
    before = {"a": 100.0, "b": 50.0, "gone": 10.0}
    after = {"a": 160.0, "b": 40.0, "new": 5.0}
    assert energy_delta_j(before, after) == (60.0, 2)
    # A tensor-parallel instance's energy is its GPUs' sum; the GPU count follows it.
    assert energy_delta_j(before, after, {"a": 2}) == (60.0, 3)


@pytest.mark.unit
def test_energy_nobody_measured_is_unknown_not_zero() -> None:
    # Instances without a node agent report no GPU energy: their counters stay 0.
    assert energy_delta_j({"a": 0.0, "b": 0.0}, {"a": 0.0, "b": 0.0}) == (None, 0)
    assert energy_delta_j({}, {}) == (None, 0)
    assert energy_delta_j({"a": 0.0, "b": 5.0}, {"a": 0.0, "b": 9.0}) == (4.0, 1)


@pytest.mark.unit
def test_error_reasons() -> None:
    assert error_reason(InvalidRequestError("x")) == "invalid_request"
    assert error_reason(UnavailableError("x")) == "unavailable"
    assert error_reason(ServerError("x")) == "server_error"
    assert error_reason(ValueError("x")) == "client_error"
