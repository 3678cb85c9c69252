"""SLO classes in a workload: interactive chat and batch jobs sharing one cluster.

A request without a class is served against the cluster's SLO; a request with one carries its
own targets, which the router places by and the clock laws of the instances serving it honour
(voltana.control.serving). `with_slo_class` marks a deterministic share of a workload.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from voltana.contract.state import SloTarget, slo_problem
from voltana.errors import ConfigError
from voltana.workloads.request import TraceRequest

DEFAULT_CLASS = "default"  # how reports name the requests served against the cluster SLO


@dataclass(frozen=True, slots=True)
class SloClass:
    """A named set of targets, given relative to the cluster SLO (a batch class: 4x the ITL)."""

    name: str
    fraction: float  # of the workload's requests, 0..1
    itl_factor: float = 1.0
    ttft_factor: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or self.name == DEFAULT_CLASS:
            raise ConfigError(f"an SLO class needs a name other than {DEFAULT_CLASS!r}")
        if not (math.isfinite(self.fraction) and 0.0 <= self.fraction <= 1.0):
            raise ConfigError(
                f"class {self.name!r}: fraction must be in [0, 1], got {self.fraction:g}"
            )
        for label, factor in (("itl", self.itl_factor), ("ttft", self.ttft_factor)):
            if not (math.isfinite(factor) and factor > 0):
                raise ConfigError(
                    f"class {self.name!r}: {label} factor must be > 0, got {factor:g}"
                )

    def targets(self, cluster_slo: SloTarget) -> SloTarget:
        slo = SloTarget(
            ttft_ms=cluster_slo.ttft_ms * self.ttft_factor,
            itl_ms=cluster_slo.itl_ms * self.itl_factor,
            ttft_ms_per_1k_tokens=cluster_slo.ttft_ms_per_1k_tokens * self.ttft_factor,
        )
        problem = slo_problem(slo)
        if problem is not None:
            raise ConfigError(f"class {self.name!r}: {problem}")
        return slo


def with_slo_class(
    requests: Sequence[TraceRequest], slo_class: SloClass, cluster_slo: SloTarget, seed: int = 0
) -> list[TraceRequest]:
    """The workload with a ``slo_class.fraction`` share of its requests, drawn with ``seed``
    independently of their sizes and arrival times, in ``slo_class``."""
    targets = slo_class.targets(cluster_slo)
    draw = random.Random(f"slo-class:{slo_class.name}:{seed}").random
    return [
        replace(r, slo_class=slo_class.name, slo=targets) if draw() < slo_class.fraction else r
        for r in requests
    ]


def class_name(request: TraceRequest) -> str:
    return request.slo_class or DEFAULT_CLASS


def parse_slo_class(text: str) -> SloClass:
    """``NAME:FRACTION:ITL_FACTOR[:TTFT_FACTOR]``, e.g. ``batch:0.3:4`` (30 % of requests with
    a 4x looser ITL target)."""
    parts = text.split(":")
    if not 3 <= len(parts) <= 4:
        raise ConfigError(
            f"--slo-class {text!r}: expected NAME:FRACTION:ITL_FACTOR[:TTFT_FACTOR], "
            "e.g. batch:0.3:4"
        )
    try:
        numbers = [float(part) for part in parts[1:]]
    except ValueError:
        raise ConfigError(f"--slo-class {text!r}: FRACTION and factors must be numbers") from None
    return SloClass(parts[0], *numbers)
