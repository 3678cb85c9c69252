"""Workloads: real traces (Azure CSV, Mooncake JSONL), an embedded default, synthetic ones.

``load_workload`` is the one entry point the CLI and the simulator need.
"""

from __future__ import annotations

from pathlib import Path

from voltana.errors import ConfigError
from voltana.workloads.errors import TraceFormatError
from voltana.workloads.loader import (
    DEFAULT_TRACE_NAME,
    SHIPPED_TRACES,
    TRACE_FORMATS,
    TraceFormat,
    detect_format,
    is_shipped_trace,
    load_default_trace,
    load_shipped_trace,
    load_trace,
    parse_trace_text,
)
from voltana.workloads.request import TraceRequest
from voltana.workloads.summary import WorkloadSummary, summarize_workload
from voltana.workloads.synthetic import (
    ARRIVAL_PROCESSES,
    ArrivalProcess,
    SyntheticSpec,
    TokenLengths,
    generate_synthetic,
)
from voltana.workloads.synthetic_spec import (
    SYNTHETIC_PREFIX,
    format_synthetic_spec,
    is_synthetic_spec,
    parse_synthetic_spec,
)
from voltana.workloads.transforms import (
    cap_count,
    cap_duration,
    cut_window,
    renumbered,
    scale_rate,
)

__all__ = [
    "ARRIVAL_PROCESSES",
    "DEFAULT_TRACE_NAME",
    "SHIPPED_TRACES",
    "SYNTHETIC_PREFIX",
    "TRACE_FORMATS",
    "ArrivalProcess",
    "SyntheticSpec",
    "TokenLengths",
    "TraceFormat",
    "TraceFormatError",
    "TraceRequest",
    "WorkloadSummary",
    "cap_count",
    "cap_duration",
    "cut_window",
    "detect_format",
    "format_synthetic_spec",
    "generate_synthetic",
    "is_shipped_trace",
    "is_synthetic_spec",
    "load_default_trace",
    "load_shipped_trace",
    "load_trace",
    "load_workload",
    "parse_synthetic_spec",
    "parse_trace_text",
    "renumbered",
    "scale_rate",
    "summarize_workload",
]


def load_workload(
    path: str | Path | None = None,
    *,
    rate_scale: float = 1.0,
    start_s: float | None = None,
    end_s: float | None = None,
    duration_s: float | None = None,
    max_requests: int | None = None,
) -> list[TraceRequest]:
    """The requests to replay, sorted by arrival, first at 0.0 s, numbered 0..n-1.

    ``path``: a trace file (format detected from its content, gzipped or not), the short name of
    a trace shipped with Voltana (``azure-conv``, ``azure-code``: the whole Azure LLM inference
    traces 2023; ``azure-conv-10min``), a ``synthetic:...`` string (see
    ``voltana.workloads.synthetic_spec``), or None for the embedded default trace.
    Steps, in this order:
    1. ``start_s``/``end_s`` keep arrivals in [start_s, end_s) of the *original* trace time;
    2. ``rate_scale`` divides arrival times (2.0 replays the trace at twice its rate);
    3. ``duration_s`` keeps arrivals in [0, duration_s) of the *replay* (scaled) time;
    4. ``max_requests`` keeps the first ones.
    Raises TraceFormatError for a bad file, ConfigError for bad arguments or an empty result.
    """
    _check_arguments(rate_scale, start_s, end_s, duration_s, max_requests)
    if path is None:
        source = f"<embedded {DEFAULT_TRACE_NAME}>"
        requests = load_default_trace()
    elif isinstance(path, str) and is_synthetic_spec(path):
        source = path
        requests = generate_synthetic(parse_synthetic_spec(path))
    elif isinstance(path, str) and is_shipped_trace(path) and not Path(path).exists():
        source = path
        requests = load_shipped_trace(path)
    else:
        source = str(path)
        requests = load_trace(path)
    if start_s is not None or end_s is not None:
        requests = cut_window(requests, start_s or 0.0, end_s)
    if rate_scale != 1.0:
        requests = scale_rate(requests, rate_scale)
    if duration_s is not None:
        requests = cap_duration(requests, duration_s)
    if max_requests is not None:
        requests = cap_count(requests, max_requests)
    if not requests:
        raise ConfigError(f"workload {source} holds no requests in the chosen window")
    return requests


def _check_arguments(
    rate_scale: float,
    start_s: float | None,
    end_s: float | None,
    duration_s: float | None,
    max_requests: int | None,
) -> None:
    """Fail on bad arguments before reading anything (the transforms check them again)."""
    empty: list[TraceRequest] = []
    scale_rate(empty, rate_scale)
    if start_s is not None or end_s is not None:
        cut_window(empty, start_s or 0.0, end_s)
    if duration_s is not None:
        cap_duration(empty, duration_s)
    if max_requests is not None:
        cap_count(empty, max_requests)
