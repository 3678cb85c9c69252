"""`voltana profile`: measure a latency/power profile through SGLang and the node agent."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from voltana.cli.options import positive_float, positive_int
from voltana.cli.security_opts import add_security_args, security_from_args
from voltana.errors import ConfigError
from voltana.hardware import MODEL_CATALOG, get_model, load_hf_config
from voltana.perf.measured import MeasuredProfile
from voltana.profiler import Profiler, ProfileSettings
from voltana.profiler.runner import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_CONTEXT_TOKENS,
    DEFAULT_PROMPT_TOKENS,
)

EPILOG = """\
examples:
  voltana profile --engine-url http://127.0.0.1:30000 --agent 127.0.0.1:50054 \\
      --model llama-3.1-8b --out h100-llama8b.csv
  voltana profile --engine-url http://sglang:30000 --agent agent:50054 --gpu-index 0 \\
      --gpu-index 1 --model-config /models/qwen3-32b/config.json --clocks 990,1395,1980 --out p.csv

Profile a regular SGLang instance (no --disaggregation-mode) that nothing else sends work to,
with --enable-metrics, and stop the controller meanwhile: clocks are set through the agent's
leases and every GPU goes back to its default clock at the end, also on Ctrl-C. Then run
`voltana simulate|up|serve controller|serve router --profile OUT.csv`.
"""


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be >= 1")
    return values


def _csv(values: tuple[int, ...]) -> str:
    return ",".join(str(value) for value in values)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "profile",
        help="measure a latency/power profile of a GPU through SGLang and its node agent",
        description="Sweep SM clocks (through the node agent) x prompt lengths x decode batch "
        "sizes against a running SGLang instance; write a measured profile CSV. Progress goes "
        "to stderr.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_argument_group("what to profile")
    target.add_argument("--engine-url", required=True, help="the SGLang server's URL")
    target.add_argument("--agent", required=True, metavar="HOST:PORT", help="its node agent")
    target.add_argument(
        "--gpu-index",
        type=int,
        action="append",
        metavar="N",
        help="the instance's GPU on that agent, repeatable for tensor parallelism (default: 0)",
    )
    target.add_argument("--model", help=f"model the instance serves: {', '.join(MODEL_CATALOG)}")
    target.add_argument(
        "--model-config", metavar="CONFIG_JSON", help="Hugging Face config.json of the model"
    )
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--clocks", type=_int_list, help="SM clocks to profile, MHz (comma list)")
    sweep.add_argument(
        "--clock-count",
        type=positive_int,
        default=5,
        help="without --clocks: this many clocks from half the default clock up (default: 5)",
    )
    sweep.add_argument(
        "--prompt-tokens",
        type=_int_list,
        default=DEFAULT_PROMPT_TOKENS,
        help=f"prefill lengths (default: {_csv(DEFAULT_PROMPT_TOKENS)})",
    )
    sweep.add_argument(
        "--batch-sizes",
        type=_int_list,
        default=DEFAULT_BATCH_SIZES,
        help=f"decode batch sizes (default: {_csv(DEFAULT_BATCH_SIZES)})",
    )
    sweep.add_argument(
        "--context-tokens",
        type=_int_list,
        default=DEFAULT_CONTEXT_TOKENS,
        help=f"prompt length of each decode stream (default: {_csv(DEFAULT_CONTEXT_TOKENS)})",
    )
    timing = parser.add_argument_group("timing (wall seconds)")
    timing.add_argument("--idle-window-s", type=positive_float, default=1.0)
    timing.add_argument("--prefill-window-s", type=positive_float, default=1.0)
    timing.add_argument("--decode-window-s", type=positive_float, default=2.0)
    timing.add_argument("--settle-s", type=float, default=0.5, help="after each clock change")
    parser.add_argument("--out", required=True, metavar="PROFILE.csv", help="where to write it")
    add_security_args(parser, client_only=True)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if bool(args.model) == bool(args.model_config):
        raise ConfigError("name the model the instance serves: --model or --model-config")
    model = load_hf_config(args.model_config) if args.model_config else get_model(args.model)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: no such directory {out.parent}")
    settings = ProfileSettings(
        engine_url=args.engine_url,
        agent_address=args.agent,
        gpu_indices=tuple(args.gpu_index or (0,)),
        model=model,
        clocks_mhz=args.clocks or (),
        clock_count=args.clock_count,
        prompt_tokens=args.prompt_tokens,
        batch_sizes=args.batch_sizes,
        context_tokens=args.context_tokens,
        idle_window_s=args.idle_window_s,
        prefill_window_s=args.prefill_window_s,
        decode_window_s=args.decode_window_s,
        settle_s=args.settle_s,
        security=security_from_args(args, required=False),
    )
    profile = asyncio.run(_profile(settings))
    profile.write(out)
    print(f"wrote {out}: {len(profile.table.points)} points", file=sys.stderr)
    return 0


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _profile(settings: ProfileSettings) -> MeasuredProfile:
    """The profile; SIGINT/SIGTERM stop it (clocks are reset on the way out)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(Profiler(settings, _progress).run())
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        _progress("interrupted; clocks are back at their defaults")
        raise KeyboardInterrupt from None
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
