"""`voltana token`: make the control-plane token (and the Redis password) for a deployment.

Without flags it prints one new token. With ``--env-file PATH`` it writes an env file that
``docker compose`` reads (``.env`` next to docker-compose.yml, or ``--env-file``): it adds
VOLTANA_CONTROL_TOKEN and VOLTANA_REDIS_PASSWORD when missing, keeps every other line, never
prints the secrets, and leaves the file readable by its owner only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from voltana.cli.security_opts import REDIS_PASSWORD_ENV
from voltana.errors import ConfigError
from voltana.rpc.auth import TOKEN_ENV, generate_token

SECRETS = (TOKEN_ENV, REDIS_PASSWORD_ENV)

EPILOG = """\
examples:
  voltana token                          # print a new token
  voltana token --env-file .env          # create/complete the env file docker compose reads
  voltana token --env-file .env --rotate # replace both secrets (restart every service after)
  VOLTANA_CONTROL_TOKEN=$(voltana token) voltana serve telemetry ...
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "token",
        help="make the control-plane token (or an env file with it for docker compose)",
        description="Print a new random control-plane token, or write one (and a Redis "
        "password) into an env file for docker compose.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--env-file",
        metavar="PATH",
        help=f"add {' and '.join(SECRETS)} to this env file (created with mode 600 if missing)",
    )
    parser.add_argument(
        "--rotate",
        action="store_true",
        help="with --env-file: replace the secrets already there",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.env_file is None:
        if args.rotate:
            raise ConfigError("--rotate needs --env-file")
        print(generate_token())
        return 0
    written = write_env_file(Path(args.env_file), rotate=args.rotate)
    if written:
        print(f"wrote {', '.join(written)} to {args.env_file}", file=sys.stderr)
    else:
        print(
            f"{args.env_file} already has {', '.join(SECRETS)} (--rotate replaces them)",
            file=sys.stderr,
        )
    return 0


def write_env_file(path: Path, *, rotate: bool = False) -> list[str]:
    """Add (or with ``rotate`` replace) the secrets in ``path``; returns the names written."""
    try:
        lines = path.read_text().splitlines() if path.exists() else []
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    present = {line.partition("=")[0].strip() for line in lines if "=" in line}
    written = [name for name in SECRETS if rotate or name not in present]
    if not written:
        return []
    kept = [line for line in lines if line.partition("=")[0].strip() not in written]
    kept += [f"{name}={generate_token()}" for name in written]
    _write_private(path, "\n".join(kept) + "\n")
    return written


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a file only its owner can read."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as file:
                file.write(text)
            os.chmod(temporary, 0o600)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror}") from None
