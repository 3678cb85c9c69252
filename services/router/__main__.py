"""Run the router: ``python -m voltana.services.router --telemetry HOST:PORT [options]``.

The same as ``voltana serve router`` (one set of flags, logging and tracing options).
"""

from __future__ import annotations

import sys

from voltana.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["serve", "router", *sys.argv[1:]]))
