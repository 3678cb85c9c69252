"""Reader for the Mooncake trace format (JSON Lines).

One JSON object per line: ``timestamp`` (milliseconds, any origin), ``input_length`` and
``output_length`` (tokens). Other keys (``hash_ids``, ...) are ignored; blank lines are skipped.
"""

from __future__ import annotations

import json
import math

from voltana.workloads.errors import TraceFormatError, shown
from voltana.workloads.records import TraceRecord, checked_token_count

TIMESTAMP_KEY = "timestamp"
INPUT_KEY = "input_length"
OUTPUT_KEY = "output_length"

_NS_PER_MS = 1_000_000


def looks_like_mooncake_line(line: str) -> bool:
    return line.lstrip().startswith("{")


def parse_mooncake_jsonl(text: str, source: str) -> list[TraceRecord]:
    records: list[TraceRecord] = []
    # Split on "\n" only: str.splitlines would also split on separators JSON allows in strings.
    for line_number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise TraceFormatError(
                source, line_number, f"invalid JSON: {error.msg} (column {error.colno})"
            ) from None
        if not isinstance(entry, dict):
            raise TraceFormatError(
                source, line_number, f"expected a JSON object, got {type(entry).__name__}"
            )
        time_ms = _number(entry, TIMESTAMP_KEY, source, line_number)
        records.append(
            TraceRecord(
                time_ns=round(time_ms * _NS_PER_MS),
                input_tokens=_token_count(entry, INPUT_KEY, source, line_number),
                output_tokens=_token_count(entry, OUTPUT_KEY, source, line_number),
                line=line_number,
            )
        )
    if not records:
        raise TraceFormatError(source, None, "file is empty")
    return records


def _number(entry: dict[str, object], key: str, source: str, line: int) -> float:
    value = _required(entry, key, source, line)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TraceFormatError(source, line, f"{key} {shown(value)} is not a finite number")
    return value


def _token_count(entry: dict[str, object], key: str, source: str, line: int) -> int:
    value = _required(entry, key, source, line)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TraceFormatError(source, line, f"{key} {shown(value)} is not an integer")
    return checked_token_count(value, key, source, line)


def _required(entry: dict[str, object], key: str, source: str, line: int) -> object:
    if key not in entry:
        raise TraceFormatError(
            source, line, f"missing key {key!r} (have {', '.join(sorted(entry)) or 'none'})"
        )
    return entry[key]
