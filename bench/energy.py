"""The evaluation matrix: every policy, offline and live, on a matrix of workloads and loads.

Offline (default): workloads {azure-conv, azure-code, lmsys-like, sharegpt-like, bursty, ramp} x
loads {light, moderate, heavy} x hardware {A100 Llama-3.1-8B, H100 Llama-3.1-8B, A100 Qwen3-32B
TP2}, 2 prefill + 2 decode instances, through the simulator of the live control loop. A load is a
fraction (30/60/90%) of the workload's SLO capacity on that hardware: the largest rate
multiplier at which static-max still attains 99% of the joint SLO. Each row compares static-max,
static-best (the cheapest fixed prefill/decode clock pair in hindsight), the published method and
its ablations, and Voltana; a row where static-max itself misses 99% is called infeasible.
Each workload's SLO is printed with it (the code trace's TTFT target grows with the prompt).

    python bench/energy.py [--quick] [--jobs 2] [--json OUT.json]
    python bench/energy.py --workloads lmsys-like --hardware 0 --loads moderate

Every policy's clocks stay inside the range where the power/latency model is calibrated
(docs/power-model.md) unless --allow-extrapolated-clocks; each row's headline is voltana's
saving against static-best searched for voltana's own router (static-best+voltana-router),
with round-robin's static-best beside it, and clock changes per GPU per minute.

That matrix is the *development* split: constants are tuned there and only there. The *test*
split (--split test) is drawn afresh from --seed (voltana/sim/heldout.py: random workload family
and parameters, SLO pair, load, hardware and a model mismatch of up to 15 % per phase) and run
once, until --rows feasible rows are done; never choose a constant by looking at its results.

    python bench/energy.py --split test --seed $RANDOM --rows 60 [--jobs 2] [--json OUT.json]

Colocated instances (--unified N): the same matrix on N colocated (unified) instances instead
of 2 prefill + 2 decode (SGLang without disaggregation; docs/policies.md).

    python bench/energy.py --unified 4 --workloads azure-conv,lmsys-like --hardware 0 \
        --loads light,moderate

Live (--live): a slice of three workloads at moderate load on 2P2D A100 Llama-3.1-8B, replayed
in real time through `voltana up --sim` (speedup 1) with `voltana bench`, next to the simulator
on the very same requests, for static-max, voltana-paper and voltana: SLO attainment, TTFT
p90/p99 and energy, live beside offline, and the simulated seconds the live engines lost to a
host too busy for them ("stall s"). --busy runs a CPU-bound process beside the stack.

    python bench/energy.py --live [--live-duration-s 60] [--live-max-rps 20] [--busy]
                           [--workloads lmsys-like] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from voltana.errors import UnknownNameError
from voltana.sim.cluster import ClusterConfig
from voltana.sim.compare import compare_policies
from voltana.sim.evaluate import (
    HARDWARE,
    LOADS,
    POLICIES,
    Row,
    format_matrix,
    run_row,
    slo_capacity,
    workloads,
)
from voltana.sim.heldout import (
    CaseResult,
    draw_case,
    format_split_summary,
    run_case,
    split_summary,
)
from voltana.workloads.request import TraceRequest

LIVE_WORKLOADS = ("azure-conv", "lmsys-like", "bursty")
LIVE_POLICIES = ("static-max", "voltana-paper", "voltana")
# Requests per second the whole simulated stack and its client sustain on a 2-core host
# (measured: LMSYS-like at 10 req/s, every policy 100 % live; at 20 req/s static-max falls to
# 88.7 % with 13 s of engine stalls).
LIVE_MAX_RPS = 10.0


# ---- offline -------------------------------------------------------------------------------


def shape_overrides(unified: int) -> dict[str, int]:
    """The cluster's instances: the matrix' 2 prefill + 2 decode, or ``unified`` colocated."""
    if unified:
        return {"num_prefill": 0, "num_decode": 0, "num_unified": unified}
    return {}


def capacity_job(job: tuple[str, int, int]) -> tuple[str, int, float, float]:
    name, hardware_index, unified = job
    started = time.perf_counter()
    workload, hardware = workloads()[name], HARDWARE[hardware_index]
    config = hardware.cluster(workload.slo, **shape_overrides(unified))
    capacity = slo_capacity(workload, config, hardware.perf())
    return name, hardware_index, capacity, time.perf_counter() - started


def row_job(job: tuple[str, int, str, float, bool, int]) -> tuple[Row, float]:
    name, hardware_index, load, multiplier, extrapolate, unified = job
    started = time.perf_counter()
    row = run_row(
        workloads()[name],
        HARDWARE[hardware_index],
        load,
        multiplier,
        POLICIES,
        config_overrides={"allow_extrapolated_clocks": extrapolate, **shape_overrides(unified)},
    )
    return row, time.perf_counter() - started


def verdict_lines(rows: Sequence[Row]) -> list[str]:
    lines = []
    for row in rows:
        if not row.feasible:
            lines.append(f"{row.workload:<14} {row.hardware:<24} {row.load:<9} infeasible")
            continue
        verdict = row.verdict()
        voltana = row.result("voltana")
        slo = row.slo
        target = (
            ""
            if slo is None
            else f" [TTFT {slo.ttft_ms:.0f}"
            + (f"+{slo.ttft_ms_per_1k_tokens:.0f}/1k" if slo.ttft_ms_per_1k_tokens else "")
            + f" ms, ITL {slo.itl_ms:.0f} ms]"
        )
        gain = verdict["savings_vs_static_best"]
        lines.append(
            f"{row.workload:<14} {row.hardware:<24} {row.load:<9}{target} voltana "
            + (f"{100 * gain:+5.1f}% vs static-best (same router), " if gain is not None else "")
            + f"{100 * voltana['energy_savings_vs_first']:5.1f}% vs static-max at "
            f"{100 * voltana['slo_attainment']:6.2f}% SLO, "
            f"{voltana.get('clock_changes_per_gpu_per_min') or 0:.1f} changes/GPU/min: "
            f"{'SLO ok' if verdict['slo_ok'] else 'SLO MISSED'}, "
            f"{'<= static-best' if verdict['beats_static_best'] else '> static-best'}, "
            + (
                f"{verdict['lead_points']:+.1f} pt vs {verdict['strongest_ablation']}"
                if verdict["lead_points"] is not None
                else "no paper ablation meets the SLO bar"
            )
        )
    return lines


def run_offline(args: argparse.Namespace) -> dict[str, Any]:
    names = args.workloads.split(",") if args.workloads else list(workloads())
    indices = [int(i) for i in args.hardware.split(",")] if args.hardware else range(len(HARDWARE))
    if args.quick:
        indices = [0]
    loads = args.loads.split(",") if args.loads else list(LOADS)
    for name, spec in workloads().items():
        if name in names:
            print(
                f"{name}: {spec.description}; SLO TTFT {spec.slo.ttft_ms:g} ms"
                + (
                    f" + {spec.slo.ttft_ms_per_1k_tokens:g} ms per 1k prompt tokens"
                    if spec.slo.ttft_ms_per_1k_tokens
                    else ""
                )
                + f", ITL {spec.slo.itl_ms:g} ms",
                file=sys.stderr,
            )
    started = time.perf_counter()
    capacities: dict[tuple[str, int], float] = {}
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        jobs = [(name, index, args.unified) for name, index in itertools.product(names, indices)]
        for name, index, capacity, wall_s in pool.map(capacity_job, jobs):
            capacities[name, index] = capacity
            print(
                f"capacity {name} on {HARDWARE[index].label}: x{capacity:.3g} ({wall_s:.0f} s)",
                file=sys.stderr,
            )
        row_jobs = [
            (
                name,
                index,
                load,
                capacities[name, index] * LOADS[load],
                args.allow_extrapolated,
                args.unified,
            )
            for name, index, load in itertools.product(names, indices, loads)
            if capacities[name, index] > 0
        ]
        rows: list[Row] = []
        for n, (row, wall_s) in enumerate(pool.map(row_job, row_jobs), start=1):
            rows.append(row)
            print(
                f"[{n}/{len(row_jobs)}] {row.workload} {row.hardware} {row.load} ({wall_s:.0f} s)",
                file=sys.stderr,
            )
            if args.json:  # a long run interrupted keeps the rows it finished
                partial = offline_document(
                    capacities,
                    rows,
                    complete=n == len(row_jobs),
                    allow_extrapolated=args.allow_extrapolated,
                    unified=args.unified,
                )
                Path(args.json).write_text(json.dumps(partial, indent=2) + "\n")
    print(format_matrix(rows))
    print()
    print("\n".join(verdict_lines(rows)))
    print(f"\n{len(rows)} rows in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return offline_document(
        capacities,
        rows,
        complete=True,
        allow_extrapolated=args.allow_extrapolated,
        unified=args.unified,
    )


def offline_document(
    capacities: dict[tuple[str, int], float],
    rows: Sequence[Row],
    *,
    complete: bool,
    allow_extrapolated: bool = False,
    unified: int = 0,
) -> dict[str, Any]:
    return {
        "complete": complete,
        "allow_extrapolated_clocks": allow_extrapolated,
        "cluster": f"{unified}U" if unified else "2P2D",
        "capacities": {f"{n}|{HARDWARE[i].label}": c for (n, i), c in capacities.items()},
        "rows": [row.as_dict() for row in rows],
    }


# ---- test split ----------------------------------------------------------------------------

# The test split's policies: the baseline, the fixed clocks with voltana's own router (the rival
# that isolates the value of dynamic control), the published method's variants, and voltana.
TEST_POLICIES = (
    "static-max",
    "static-best+voltana-router",
    "voltana-paper",
    "voltana-paper+voltana-router",
    "voltana-paper-m0+full-range+voltana-router",
    "voltana",
)
TEST_FIXED_RIVAL = "static-best+voltana-router"


def test_case_job(job: tuple[int, int]) -> tuple[CaseResult, float]:
    seed, index = job
    started = time.perf_counter()
    result = run_case(draw_case(seed, index), TEST_POLICIES)
    return result, time.perf_counter() - started


def fixed_rival(row: Row) -> dict[str, Any] | None:
    """The fixed clocks searched for voltana's own router, where the row has them."""
    try:
        return row.result(TEST_FIXED_RIVAL)
    except UnknownNameError:
        return None


def run_test_split(args: argparse.Namespace) -> dict[str, Any]:
    seed = args.seed
    wanted = args.rows
    most = args.max_draws or 3 * wanted
    print(
        f"test split: seed {seed}, until {wanted} feasible rows (at most {most} drawn), "
        f"{args.jobs} workers",
        file=sys.stderr,
    )
    started = time.perf_counter()
    results: list[CaseResult] = []
    document: dict[str, Any] = {}
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        drawn = 0
        pending: set[Future[tuple[CaseResult, float]]] = set()
        while True:
            feasible = sum(1 for r in results if r.feasible)
            # Keep every worker busy while the feasible rows may still fall short.
            while drawn < most and len(pending) < args.jobs and feasible + len(pending) < wanted:
                pending.add(pool.submit(test_case_job, (seed, drawn)))
                drawn += 1
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                result, wall_s = future.result()
                results.append(result)
                feasible = sum(1 for r in results if r.feasible)
                elapsed_s = time.perf_counter() - started
                eta = elapsed_s / max(1, feasible) * max(0, wanted - feasible)
                print(
                    f"[{feasible}/{wanted} feasible, {len(results)} drawn] "
                    f"{result.case.name} {result.case.hardware_label}: "
                    + ("feasible" if result.feasible else "infeasible")
                    + f" ({wall_s:.0f} s; ~{eta / 60:.0f} min left)",
                    file=sys.stderr,
                )
            results.sort(key=lambda r: r.case.index)
            document = test_document(seed, results, complete=False)
            if args.json:  # an interrupted run keeps the rows it finished
                Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    document = test_document(seed, results, complete=True)
    rows = [r.row for r in results if r.row is not None]
    print(format_matrix(rows))
    print()
    print(format_split_summary(document["summary"], TEST_FIXED_RIVAL))
    print(f"\n{len(results)} rows drawn in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return document


def test_document(seed: int, results: Sequence[CaseResult], *, complete: bool) -> dict[str, Any]:
    return {
        "split": "test",
        "seed": seed,
        "complete": complete,
        "policies": list(TEST_POLICIES),
        "summary": split_summary(results, fixed_rival=fixed_rival),
        "rows": [result.as_dict() for result in results],
    }


# ---- live ----------------------------------------------------------------------------------


def write_jsonl(requests: Sequence[TraceRequest], path: Path) -> None:
    """The requests as a Mooncake-format trace (what `voltana bench --trace` replays)."""
    with path.open("w") as handle:
        for request in requests:
            record = {
                "timestamp": round(request.arrival_s * 1000.0, 3),
                "input_length": request.input_tokens,
                "output_length": request.output_tokens,
            }
            handle.write(json.dumps(record) + "\n")


@contextlib.contextmanager
def cpu_hog(enabled: bool) -> Iterator[None]:
    """A CPU-bound process beside the stack (the machine is not ours alone)."""
    if not enabled:
        yield
        return
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def live_run(policy: str, trace: Path, slo_ms: tuple[float, float], busy: bool) -> dict[str, Any]:
    """`voltana up --sim` with the policy, `voltana bench` replaying the trace through it."""
    ttft_ms, itl_ms = slo_ms
    slo_flags = ["--ttft-slo-ms", f"{ttft_ms:g}", "--itl-slo-ms", f"{itl_ms:g}"]
    up = subprocess.Popen(
        ["voltana", "up", "--sim", "--prefill", "2", "--decode", "2", "--policy", policy,
         "--gpu", "a100-80g", "--model", "llama-3.1-8b", *slo_flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    try:
        addresses: dict[str, str] = {}
        assert up.stdout is not None
        for line in up.stdout:
            if line.startswith("#"):
                break
            name, _, address = line.strip().partition("  ")
            addresses[name.strip()] = address.strip()
        if "router" not in addresses:
            raise RuntimeError(f"voltana up did not start (exit {up.poll()})")
        with tempfile.TemporaryDirectory() as folder, cpu_hog(busy):
            out = Path(folder) / "bench.json"
            subprocess.run(
                ["voltana", "bench", "--target", addresses["router"],
                 "--telemetry", addresses["telemetry"], "--trace", str(trace),
                 "--policy-label", policy, "--json", str(out), "--quiet", *slo_flags],
                check=True,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            document = json.loads(out.read_text())
        return dict(document["results"][0])
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()


def live_slice(
    workload: Any, multiplier: float, duration_s: float, max_rps: float
) -> tuple[float, list[TraceRequest]]:
    """The first ``duration_s`` of the workload at ``multiplier``, slowed to at most
    ``max_rps`` on average: the whole live stack (router, telemetry, controller, engines and
    the client) shares this host's CPUs, and past what they can serve every policy's TTFT
    is the host's queue, not the GPUs'."""
    requests = [r for r in workload.build(multiplier) if r.arrival_s < duration_s]
    rate_rps = len(requests) / duration_s
    if max_rps > 0 and rate_rps > max_rps:
        multiplier *= max_rps / rate_rps
        requests = [r for r in workload.build(multiplier) if r.arrival_s < duration_s]
    return multiplier, requests


def run_live(args: argparse.Namespace) -> dict[str, Any]:
    hardware = HARDWARE[0]
    perf = hardware.perf()
    table: list[dict[str, Any]] = []
    names = args.workloads.split(",") if args.workloads else list(LIVE_WORKLOADS)
    for name in names:
        workload = workloads()[name]
        config: ClusterConfig = hardware.cluster(workload.slo)
        capacity = slo_capacity(workload, config, perf)
        multiplier, requests = live_slice(
            workload, capacity * LOADS["moderate"], args.live_duration_s, args.live_max_rps
        )
        if multiplier < capacity * LOADS["moderate"]:
            print(
                f"live: {name} slowed from x{capacity * LOADS['moderate']:.3g} to "
                f"x{multiplier:.3g} (--live-max-rps {args.live_max_rps:g})",
                file=sys.stderr,
            )
        _, offline = compare_policies(LIVE_POLICIES, requests, config, perf)
        with tempfile.TemporaryDirectory() as folder:
            trace = Path(folder) / f"{name}.jsonl"
            write_jsonl(requests, trace)
            for policy, offline_row in zip(LIVE_POLICIES, offline, strict=True):
                print(f"live: {name} x{multiplier:.3g} {policy} ...", file=sys.stderr)
                live_row = live_run(
                    policy, trace, (workload.slo.ttft_ms, workload.slo.itl_ms), args.busy
                )
                table.append(
                    {
                        "workload": name,
                        "multiplier": multiplier,
                        "requests": len(requests),
                        "policy": policy,
                        "offline": offline_row,
                        "live": live_row,
                    }
                )
    header = (
        f"{'workload':<12} {'policy':<14} {'SLO off/live':>16} {'TTFT p90 off/live':>18} "
        f"{'TTFT p99 off/live':>18} {'kJ off/live':>16} {'energy Δ':>8} {'stall s':>8}"
    )
    lines = [header, "-" * len(header)]
    for entry in table:
        offline_row, live_row = entry["offline"], entry["live"]

        def pair(
            key: str,
            scale: float = 1.0,
            fmt: str = ".1f",
            rows: tuple[dict[str, Any], dict[str, Any]] = (offline_row, live_row),
        ) -> str:
            values = (row.get(key) for row in rows)
            return "/".join("-" if v is None else format(v * scale, fmt) for v in values)

        def p(row: dict[str, Any], q: str) -> str:
            value = (row.get("ttft_ms") or {}).get(q)
            return "-" if value is None else f"{value:.0f}"

        energy_off, energy_live = offline_row["energy_j"], live_row.get("energy_j")
        delta = (
            f"{100 * (energy_live / energy_off - 1):+.1f}%" if energy_live and energy_off else "-"
        )
        # Simulated seconds the live engines' GPUs idled with work waiting on a late host.
        stalled_s = live_row.get("sim_host_stall_s")
        stall = "-" if stalled_s is None else f"{stalled_s:.2f}"
        lines.append(
            f"{entry['workload']:<12} {entry['policy']:<14} "
            f"{pair('slo_attainment', 100, '.2f'):>16} "
            f"{p(offline_row, 'p90') + '/' + p(live_row, 'p90'):>18} "
            f"{p(offline_row, 'p99') + '/' + p(live_row, 'p99'):>18} "
            f"{pair('energy_j', 1e-3):>16} {delta:>8} {stall:>8}"
        )
    print("\n".join(lines))
    return {"busy": args.busy, "duration_s": args.live_duration_s, "rows": table}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--split",
        choices=("dev", "test"),
        default="dev",
        help="dev: the fixed matrix (tune here); test: rows drawn afresh from --seed (report)",
    )
    parser.add_argument("--seed", type=int, help="test split: the seed it is drawn from")
    parser.add_argument(
        "--rows", type=int, default=60, help="test split: feasible rows to run (default: 60)"
    )
    parser.add_argument(
        "--max-draws", type=int, help="test split: rows to draw at most (default: 3 x --rows)"
    )
    parser.add_argument("--quick", action="store_true", help="A100 Llama-3.1-8B only")
    parser.add_argument("--workloads", help=f"comma-separated, of {', '.join(workloads())}")
    parser.add_argument(
        "--hardware", help=f"comma-separated indices of {[h.label for h in HARDWARE]}"
    )
    parser.add_argument("--loads", help=f"comma-separated, of {', '.join(LOADS)}")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--live", action="store_true", help="live beside offline (see above)")
    parser.add_argument("--live-duration-s", type=float, default=60.0)
    parser.add_argument(
        "--live-max-rps",
        type=float,
        default=LIVE_MAX_RPS,
        help="live: slow a workload's slice to at most this many requests/s, what this host's "
        f"CPUs can serve through the whole stack (default: {LIVE_MAX_RPS:g}; 0 = no cap)",
    )
    parser.add_argument("--busy", action="store_true", help="live: a CPU hog beside the stack")
    parser.add_argument(
        "--allow-extrapolated-clocks",
        dest="allow_extrapolated",
        action="store_true",
        help="offline: let policies use clocks outside the model's calibrated range "
        "(figures marked '*'; default: the calibrated range only)",
    )
    parser.add_argument(
        "--unified",
        type=int,
        default=0,
        metavar="N",
        help="offline matrix: N colocated instances instead of 2 prefill + 2 decode",
    )
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args()
    if args.unified < 0 or (args.unified and (args.live or args.split == "test")):
        parser.error("--unified N (N >= 1) runs the offline development matrix only")
    if args.split == "test" and args.seed is None:
        parser.error("--split test needs --seed (draw it afresh: --seed $RANDOM)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    if args.live:
        document = run_live(args)
    elif args.split == "test":
        document = run_test_split(args)
    else:
        document = run_offline(args)
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
