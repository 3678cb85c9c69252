"""Run the telemetry service: ``python -m voltana.services.telemetry [--redis-url URL]``.

The same as ``voltana serve telemetry`` (one set of flags, logging, tracing and security
options).
"""

from __future__ import annotations

import sys

from voltana.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["serve", "telemetry", *sys.argv[1:]]))
