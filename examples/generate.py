"""Stream one generation from a Voltana router and print it.

python examples/generate.py 127.0.0.1:50051 "Tell me about GPUs" --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from voltana.sdk import GenerationSummary, VoltanaClient, VoltanaClientError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Stream one generation from a Voltana router.")
    parser.add_argument("address", help="router address, host:port")
    parser.add_argument("prompt", nargs="?", default="Explain GPU clock scaling in one paragraph.")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--ttft-slo-ms", type=float, default=None)
    parser.add_argument("--itl-slo-ms", type=float, default=None)
    parser.add_argument("--timeout-s", type=float, default=60.0)
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    async with VoltanaClient(args.address, timeout_s=args.timeout_s) as client:
        try:
            async for event in client.generate(
                args.prompt,
                max_new_tokens=args.max_new_tokens,
                ttft_slo_ms=args.ttft_slo_ms,
                itl_slo_ms=args.itl_slo_ms,
            ):
                if isinstance(event, GenerationSummary):
                    print(
                        f"\n\n[{event.request_id}] {event.completion_tokens} tokens, "
                        f"finish={event.finish_reason}, TTFT {event.ttft_ms:.1f} ms, "
                        f"mean ITL {event.mean_itl_ms:.2f} ms, "
                        f"prefill={event.prefill_instance} decode={event.decode_instance}"
                    )
                else:
                    print(event.text, end="", flush=True)
        except VoltanaClientError as error:
            print(f"\nerror: {error}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
