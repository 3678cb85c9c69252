"""Run the telemetry service: ``python -m voltana.services.telemetry [--redis-url URL]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Sequence

from voltana.services.telemetry.service import TelemetryService
from voltana.services.telemetry.settings import TelemetrySettings

_LOG = logging.getLogger("voltana.telemetry")


def parse_settings(argv: Sequence[str] | None = None) -> TelemetrySettings:
    defaults = TelemetrySettings()
    parser = argparse.ArgumentParser(prog="python -m voltana.services.telemetry")
    parser.add_argument("--listen", default="0.0.0.0:50052", help="host:port to serve on")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("VOLTANA_REDIS_URL") or None,
        help="redis://host:port/db (default: $VOLTANA_REDIS_URL; unset = in-memory store)",
    )
    parser.add_argument("--redis-key-prefix", default=defaults.redis_key_prefix)
    parser.add_argument("--series-cap", type=int, default=defaults.series_cap)
    parser.add_argument("--window-s", type=float, default=defaults.window_s)
    parser.add_argument("--watch-min-interval-ms", type=int, default=defaults.watch_min_interval_ms)
    args = parser.parse_args(argv)
    return TelemetrySettings(
        listen_address=args.listen,
        redis_url=args.redis_url,
        redis_key_prefix=args.redis_key_prefix,
        series_cap=args.series_cap,
        window_s=args.window_s,
        watch_min_interval_ms=args.watch_min_interval_ms,
    )


async def serve(settings: TelemetrySettings) -> None:
    """Serve until SIGINT/SIGTERM, then stop (watch streams end at once)."""
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_requested.set)
    async with TelemetryService(settings) as service:
        store = f"redis at {settings.redis_url}" if settings.redis_url else "in memory"
        _LOG.info("telemetry serving on %s (store %s)", service.address, store)
        await stop_requested.wait()


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(parse_settings(argv)))


if __name__ == "__main__":
    main()
