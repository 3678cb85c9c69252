"""Periodic push of an engine's ``InstanceState`` to whatever collects it (e.g. telemetry).

The engine only knows the ``InstanceSampleSink`` protocol, so it does not depend on gRPC or on
the telemetry service; the telemetry client implements ``send``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from voltana.contract.state import InstanceState

logger = logging.getLogger(__name__)


@runtime_checkable
class InstanceSampleSink(Protocol):
    async def send(self, state: InstanceState) -> None:
        """Deliver one state; raising only skips this sample (the reporter goes on)."""
        ...


async def report_periodically(
    source: Callable[[], InstanceState], sink: InstanceSampleSink, interval_s: float
) -> None:
    """Send ``source()`` to ``sink`` every ``interval_s`` wall seconds until cancelled."""
    failing = False
    while True:
        try:
            await sink.send(source())
            if failing:
                logger.info("instance sample sink works again")
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a flaky sink must not stop the engine; say so once per outage
            if not failing:
                logger.warning("sending an instance sample failed: %s", exc)
            failing = True
        await asyncio.sleep(interval_s)
