"""`voltana` command line: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterable, Sequence
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


# Which module registers each command. A command line naming one imports only that module:
# a service's process (a router restart above all) starts without the simulator, the stack and
# the other commands' imports.
COMMAND_MODULES = {
    "simulate": "simulate_cmd",
    "evaluate": "evaluate_cmd",
    "model": "model_cmd",
    "doctor": "doctor_cmd",
    "up": "up_cmd",
    "bench": "bench_cmd",
    "serve": "serve_cmd",
    "token": "token_cmd",
    "profile": "profile_cmd",
    "health": "health_cmd",
    "compose": "compose_cmd",
}
# Those needing the gRPC stack; absent pieces are simply not offered.
_OPTIONAL_MODULES = frozenset(
    {"up_cmd", "bench_cmd", "serve_cmd", "token_cmd", "profile_cmd", "health_cmd", "compose_cmd"}
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser: every command, or only ``command`` (a key of COMMAND_MODULES)."""
    parser = OneLineErrorParser(
        prog="voltana",
        description="SLO-aware, energy-efficient control plane for PD-disaggregated LLM serving.",
        epilog=START_HERE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"voltana {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = [COMMAND_MODULES[command]] if command in COMMAND_MODULES else COMMAND_MODULES.values()
    for module in _command_modules(names):
        module.register(commands)
    return parser


def _command_modules(names: Iterable[str]) -> list[ModuleType]:
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(f"voltana.cli.{name}"))
        except ModuleNotFoundError as exc:
            if name not in _OPTIONAL_MODULES or exc.name != f"voltana.cli.{name}":
                raise
    return modules


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(arguments[0] if arguments else None)
    args = parser.parse_args(arguments)
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
