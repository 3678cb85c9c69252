"""`voltana` command line: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import NoReturn

from voltana import __version__
from voltana.errors import VoltanaError

Handler = Callable[[argparse.Namespace], int]

START_HERE = """\
start here (no GPU needed):
  voltana simulate --policy static-max --policy static:1005   # offline, the embedded trace
  voltana up --sim                       # the whole stack on loopback; router 127.0.0.1:50051
  voltana bench --target 127.0.0.1:50051 --telemetry 127.0.0.1:50052 \\
      --trace synthetic:poisson:rate=5,duration=60,input=512,output=128
  voltana model --list                   # the GPUs and models the catalogs know

Every command documents its flags: voltana COMMAND --help. Bad input ends with exit code 2
and one line on stderr.
"""


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (no usage block) and exit 2.

    Sub-command parsers inherit it (argparse builds them with the parent's class).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from voltana.cli import doctor_cmd, evaluate_cmd, model_cmd, simulate_cmd

    parser = OneLineErrorParser(
        prog="voltana",
        description="SLO-aware, energy-efficient control plane for PD-disaggregated LLM serving.",
        epilog=START_HERE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"voltana {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (simulate_cmd, evaluate_cmd, model_cmd, doctor_cmd, *_service_commands()):
        module.register(commands)
    return parser


def _service_commands() -> list[ModuleType]:
    """Commands that need the gRPC stack; absent pieces are simply not offered."""
    modules = []
    for name in (
        "up_cmd",
        "bench_cmd",
        "serve_cmd",
        "token_cmd",
        "profile_cmd",
        "health_cmd",
        "compose_cmd",
    ):
        try:
            modules.append(__import__(f"voltana.cli.{name}", fromlist=["register"]))
        except ModuleNotFoundError as exc:
            if exc.name != f"voltana.cli.{name}":
                raise
    return modules


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except VoltanaError as exc:
        print(f"voltana {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"voltana {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
