"""Read a trace file (or the embedded default trace) into requests, detecting its format.

Every loaded workload is sorted by arrival (stable), starts at 0.0 s and is numbered 0..n-1.
"""

from __future__ import annotations

import gzip
import zlib
from importlib import resources
from pathlib import Path
from typing import Literal, get_args

from voltana.errors import UnknownNameError
from voltana.workloads.azure import looks_like_azure_header, parse_azure_csv
from voltana.workloads.errors import TraceFormatError, shown
from voltana.workloads.mooncake import looks_like_mooncake_line, parse_mooncake_jsonl
from voltana.workloads.records import TraceRecord, build_requests
from voltana.workloads.request import TraceRequest

TraceFormat = Literal["azure", "mooncake"]
TRACE_FORMATS: tuple[str, ...] = get_args(TraceFormat)

DEFAULT_TRACE_NAME = "azure_llm_2023_conv_10min.csv"
DEFAULT_BACKWARDS_TOLERANCE_S = 1.0
# Traces shipped in voltana/data (see its README for source, license and attribution), by the
# short name `--trace` accepts.
SHIPPED_TRACES: dict[str, str] = {
    "azure-conv": "azure_llm_2023_conv.csv.gz",
    "azure-code": "azure_llm_2023_code.csv.gz",
    "azure-conv-10min": DEFAULT_TRACE_NAME,
}

_GZIP_MAGIC = b"\x1f\x8b"


def load_trace(
    path: str | Path,
    *,
    trace_format: TraceFormat | None = None,
    backwards_tolerance_s: float = DEFAULT_BACKWARDS_TOLERANCE_S,
) -> list[TraceRequest]:
    """Requests of the trace file at ``path`` (Azure CSV or Mooncake JSONL, optionally gzipped).

    ``trace_format=None`` detects the format from the content, not the file name.
    Raises TraceFormatError (file missing, unreadable, empty or malformed).
    """
    source = str(path)
    return parse_trace_text(
        _read_text(Path(path), source),
        source,
        trace_format=trace_format,
        backwards_tolerance_s=backwards_tolerance_s,
    )


def load_default_trace() -> list[TraceRequest]:
    """The embedded default workload: the first 10 minutes of the Azure 2023 conversation trace."""
    return load_shipped_trace("azure-conv-10min")


def is_shipped_trace(name: str) -> bool:
    return name in SHIPPED_TRACES


def load_shipped_trace(name: str) -> list[TraceRequest]:
    """A trace shipped with Voltana, by short name (``azure-conv``, ``azure-code``, ...)."""
    try:
        file_name = SHIPPED_TRACES[name]
    except KeyError:
        raise UnknownNameError("shipped trace", name, SHIPPED_TRACES) from None
    resource = resources.files("voltana").joinpath("data", file_name)
    source = f"<shipped {name}: {file_name}>"
    return parse_trace_text(_decode(resource.read_bytes(), source), source)


def parse_trace_text(
    text: str,
    source: str,
    *,
    trace_format: TraceFormat | None = None,
    backwards_tolerance_s: float = DEFAULT_BACKWARDS_TOLERANCE_S,
) -> list[TraceRequest]:
    """Requests of a trace held in ``text``; ``source`` names it in error messages."""
    chosen = detect_format(text, source) if trace_format is None else trace_format
    records: list[TraceRecord]
    if chosen == "azure":
        records = parse_azure_csv(text, source)
    elif chosen == "mooncake":
        records = parse_mooncake_jsonl(text, source)
    else:
        raise UnknownNameError("trace format", str(chosen), TRACE_FORMATS)
    return build_requests(records, source, backwards_tolerance_s)


def detect_format(text: str, source: str) -> TraceFormat:
    """The format of a trace, judged by its first non-blank line."""
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if looks_like_mooncake_line(line):
            return "mooncake"
        if looks_like_azure_header(line):
            return "azure"
        raise TraceFormatError(
            source,
            line_number,
            "unknown trace format: expected an Azure CSV header "
            "'TIMESTAMP,ContextTokens,GeneratedTokens' or Mooncake JSON lines "
            f'(\'{{"timestamp": ..., "input_length": ..., ...}}\'), got {shown(line.strip())}',
        )
    raise TraceFormatError(source, None, "file is empty")


def _read_text(path: Path, source: str) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        shipped = ", ".join(SHIPPED_TRACES)
        raise TraceFormatError(
            source, None, f"no such file (traces shipped with Voltana, by name: {shipped})"
        ) from None
    except IsADirectoryError:
        raise TraceFormatError(source, None, "is a directory, not a trace file") from None
    except OSError as error:
        raise TraceFormatError(source, None, f"cannot read: {error.strerror or error}") from None
    return _decode(data, source)


def _decode(data: bytes, source: str) -> str:
    if data.startswith(_GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise TraceFormatError(source, None, f"corrupt gzip data: {error}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise TraceFormatError(source, line, "not UTF-8 text") from None
