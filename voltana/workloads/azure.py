"""Reader for the Azure LLM inference trace CSV (Azure Public Dataset, 2023 and 2024 releases).

Header ``TIMESTAMP,ContextTokens,GeneratedTokens`` (column order free, names case-insensitive,
extra columns ignored); TIMESTAMP is a wall-clock datetime such as ``2023-11-16 18:15:46.6805900``.
Python's datetime keeps only 6 fractional digits, so the fraction is parsed separately and kept
to the nanosecond. LF and CRLF line endings are both accepted; blank lines are skipped.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime

from voltana.workloads.errors import TraceFormatError, shown
from voltana.workloads.records import TraceRecord, parse_token_count

TIMESTAMP_COLUMN = "TIMESTAMP"
INPUT_COLUMN = "ContextTokens"
OUTPUT_COLUMN = "GeneratedTokens"
AZURE_COLUMNS = (TIMESTAMP_COLUMN, INPUT_COLUMN, OUTPUT_COLUMN)

_NS_PER_S = 1_000_000_000
_MAX_FRACTION_DIGITS = 9
_EPOCH_ORDINAL = datetime(1970, 1, 1).toordinal()


def looks_like_azure_header(line: str) -> bool:
    """Whether a first line names a TIMESTAMP column (then it is read, and checked, as Azure)."""
    names = {cell.strip().strip('"').lower() for cell in line.split(",")}
    return TIMESTAMP_COLUMN.lower() in names


def parse_azure_csv(text: str, source: str) -> list[TraceRecord]:
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[TraceRecord] = []
    try:
        header = _first_nonblank_row(reader)
        if header is None:
            raise TraceFormatError(source, None, "file is empty")
        time_index, input_index, output_index = _column_indexes(header, source, reader.line_num)
        needed_fields = max(time_index, input_index, output_index) + 1
        for row in reader:
            if _is_blank(row):
                continue
            line = reader.line_num
            if len(row) < needed_fields:
                raise TraceFormatError(
                    source, line, f"expected {len(header)} fields, got {len(row)}: {shown(row)}"
                )
            records.append(
                TraceRecord(
                    time_ns=parse_azure_timestamp_ns(row[time_index], source, line),
                    input_tokens=parse_token_count(row[input_index], INPUT_COLUMN, source, line),
                    output_tokens=parse_token_count(row[output_index], OUTPUT_COLUMN, source, line),
                    line=line,
                )
            )
    except csv.Error as error:
        raise TraceFormatError(source, reader.line_num, f"bad CSV: {error}") from None
    return records


def parse_azure_timestamp_ns(text: str, source: str, line: int) -> int:
    """Nanoseconds since 1970-01-01 of a TIMESTAMP; a naive datetime is read as UTC."""
    whole, dot, fraction = text.strip().partition(".")
    fraction_ns = 0
    if dot:
        if not fraction.isdigit() or not fraction.isascii():
            raise _bad_timestamp(text, source, line)
        fraction_ns = int(fraction[:_MAX_FRACTION_DIGITS].ljust(_MAX_FRACTION_DIGITS, "0"))
    try:
        moment = datetime.fromisoformat(whole)
    except ValueError:
        raise _bad_timestamp(text, source, line) from None
    whole_s = (
        (moment.toordinal() - _EPOCH_ORDINAL) * 86_400
        + moment.hour * 3_600
        + moment.minute * 60
        + moment.second
    )
    offset = moment.utcoffset()
    if offset is not None:
        whole_s -= int(offset.total_seconds())
    return whole_s * _NS_PER_S + moment.microsecond * 1_000 + fraction_ns


def _bad_timestamp(text: str, source: str, line: int) -> TraceFormatError:
    return TraceFormatError(
        source,
        line,
        f"{TIMESTAMP_COLUMN} {shown(text)} is not a datetime like '2023-11-16 18:15:46.6805900'",
    )


def _column_indexes(header: list[str], source: str, line: int) -> tuple[int, int, int]:
    positions = {name.strip().strip("\ufeff").lower(): index for index, name in enumerate(header)}
    indexes = []
    for column in AZURE_COLUMNS:
        index = positions.get(column.lower())
        if index is None:
            raise TraceFormatError(
                source,
                line,
                f"header lacks column {column!r} (expected {','.join(AZURE_COLUMNS)}, "
                f"found {','.join(header)})",
            )
        indexes.append(index)
    return indexes[0], indexes[1], indexes[2]


def _first_nonblank_row(reader: Iterator[list[str]]) -> list[str] | None:
    for row in reader:
        if not _is_blank(row):
            return row
    return None


def _is_blank(row: list[str]) -> bool:
    return not any(cell.strip() for cell in row)
