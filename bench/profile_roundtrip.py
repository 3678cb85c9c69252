"""`voltana profile` against the simulated GPU, and the profile against the simulated GPU's model.

A simulated SGLang engine (null mode) and a sim-backend node agent share one simulated GPU whose
physics is the analytical model; the profiler measures it through HTTP and the agent's lease and
sample RPCs, as on hardware. Reported: the largest relative error of the profiled model's
latency and power against the analytical model at every profiled point (target: 3%), and how
long the sweep took.

    python bench/profile_roundtrip.py [--gpu a100-80g] [--model llama-3.1-8b] [--tp 1]
        [--speedup 4] [--out profile.csv]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from voltana.engine import SimEngineSettings
from voltana.profiler import ProfileSettings
from voltana.profiler.roundtrip import profile_simulated_gpu, roundtrip_errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--gpu", default="a100-80g")
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--speedup", type=float, default=4.0)
    parser.add_argument("--clocks", default="1410,1215,1005,810")
    parser.add_argument("--out", help="also write the measured profile here")
    args = parser.parse_args()
    # Simulated time stays exact through host stalls of up to 2 s (a loaded machine).
    engine = SimEngineSettings(
        gpu_key=args.gpu,
        model_key=args.model,
        tp=args.tp,
        speedup=args.speedup,
        catch_up_wall_s=2.0,
    )
    from voltana.hardware import get_model

    settings = ProfileSettings(
        engine_url="",
        agent_address="",
        model=get_model(args.model).with_tensor_parallel(args.tp),
        clocks_mhz=tuple(int(c) for c in args.clocks.split(",")),
        prompt_tokens=(128, 512, 2048, 4096),
        batch_sizes=(1, 8, 32, 64, 128),
        context_tokens=(512, 2048),
        idle_window_s=0.5,
        prefill_window_s=0.5,
        decode_window_s=1.0,
        settle_s=0.1,
    )
    started = time.monotonic()
    profile, truth = asyncio.run(
        profile_simulated_gpu(engine, settings, lambda line: print(line, file=sys.stderr))
    )
    elapsed_s = time.monotonic() - started
    errors = roundtrip_errors(profile, truth)
    if args.out:
        profile.write(Path(args.out))
    print(
        f"{args.gpu} {args.model} TP{args.tp}, engine x{args.speedup:g}: {len(errors)} points "
        f"in {elapsed_s:.0f} s"
    )
    for phase in ("prefill", "decode", "idle"):
        rows = [e for e in errors if e.phase == phase]
        worst_latency = max(rows, key=lambda e: e.latency_error)
        worst_power = max(rows, key=lambda e: e.power_error)
        print(
            f"  {phase:<8} max latency error {worst_latency.latency_error:6.2%} "
            f"(at {worst_latency.sm_clock_mhz} MHz, batch {worst_latency.batch_size}, "
            f"{worst_latency.tokens} tokens); max power error {worst_power.power_error:6.2%} "
            f"(at {worst_power.sm_clock_mhz} MHz, batch {worst_power.batch_size}, "
            f"{worst_power.tokens} tokens)"
        )
    overall = max(max(e.latency_error, e.power_error) for e in errors)
    print(f"  max error over every point: {overall:.2%} (target 3%)")


if __name__ == "__main__":
    main()
