"""Just enough of the Prometheus text format (0.0.4) to expose and read SGLang's metrics."""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_labels(labels: Mapping[str, str]) -> str:
    """``{a="x",b="y"}`` in sorted order, or ``""`` without labels."""
    if not labels:
        return ""
    inner = ",".join(f'{name}="{_escape(labels[name])}"' for name in sorted(labels))
    return "{" + inner + "}"


def format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def render_gauge(name: str, help_text: str, value: float, labels: Mapping[str, str]) -> list[str]:
    return [
        f"# HELP {name} {help_text}",
        f"# TYPE {name} gauge",
        f"{name}{format_labels(labels)} {format_value(value)}",
    ]


def render_counter(name: str, help_text: str, value: float, labels: Mapping[str, str]) -> list[str]:
    return [
        f"# HELP {name} {help_text}",
        f"# TYPE {name} counter",
        f"{name}{format_labels(labels)} {format_value(value)}",
    ]


@dataclass
class Histogram:
    """A cumulative-bucket histogram as Prometheus exposes it."""

    name: str
    help_text: str
    buckets: Sequence[float]
    _counts: list[int] = field(init=False)
    _sum: float = field(init=False, default=0.0)
    _count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if list(self.buckets) != sorted(self.buckets):
            raise ValueError(f"histogram {self.name}: buckets must be ascending")
        self._counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf

    @property
    def count(self) -> int:
        return self._count

    @property
    def sum(self) -> float:
        return self._sum

    def observe(self, value: float, count: int = 1) -> None:
        if count <= 0:
            return
        self._counts[bisect.bisect_left(self.buckets, value)] += count
        self._sum += value * count
        self._count += count

    def render(self, labels: Mapping[str, str]) -> list[str]:
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, bucket_count in zip([*self.buckets, math.inf], self._counts, strict=True):
            cumulative += bucket_count
            bucket_labels = {**labels, "le": format_value(bound)}
            lines.append(f"{self.name}_bucket{format_labels(bucket_labels)} {cumulative}")
        lines.append(f"{self.name}_sum{format_labels(labels)} {format_value(self._sum)}")
        lines.append(f"{self.name}_count{format_labels(labels)} {self._count}")
        return lines


@dataclass(frozen=True, slots=True)
class PrometheusSample:
    name: str
    labels: Mapping[str, str]
    value: float


class PrometheusParseError(ValueError):
    """A line of the exposition text is not a valid sample."""


def _parse_labels(text: str, start: int, line: str) -> tuple[dict[str, str], int]:
    """Parse ``{...}`` starting at ``text[start] == '{'``; returns labels and the index after."""
    labels: dict[str, str] = {}
    position = start + 1
    while True:
        while position < len(text) and text[position] in " ,":
            position += 1
        if position < len(text) and text[position] == "}":
            return labels, position + 1
        match = _LABEL_NAME.match(text, position)
        if match is None or text[match.end() : match.end() + 2] != '="':
            raise PrometheusParseError(f"bad label in {line!r}")
        position = match.end() + 2
        value_chars: list[str] = []
        while True:
            if position >= len(text):
                raise PrometheusParseError(f"unterminated label value in {line!r}")
            char = text[position]
            if char == "\\" and position + 1 < len(text):
                escaped = text[position + 1]
                value_chars.append("\n" if escaped == "n" else escaped)
                position += 2
            elif char == '"':
                position += 1
                break
            else:
                value_chars.append(char)
                position += 1
        labels[match.group()] = "".join(value_chars)


def parse_prometheus_text(text: str) -> list[PrometheusSample]:
    """Every sample in ``text`` (comments and blank lines skipped)."""
    samples: list[PrometheusSample] = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        match = _NAME.match(line)
        if match is None:
            raise PrometheusParseError(f"no metric name in {line!r}")
        labels: dict[str, str] = {}
        position = match.end()
        if position < len(line) and line[position] == "{":
            labels, position = _parse_labels(line, position, line)
        fields = line[position:].split()
        if not fields:
            raise PrometheusParseError(f"no value in {line!r}")
        try:
            value = float(fields[0])
        except ValueError:
            raise PrometheusParseError(f"bad value in {line!r}") from None
        samples.append(PrometheusSample(match.group(), labels, value))
    return samples
