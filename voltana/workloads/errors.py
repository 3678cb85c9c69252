"""The error every trace reader raises for a file it cannot turn into requests."""

from __future__ import annotations

from voltana.errors import VoltanaError

_MAX_SHOWN_CHARS = 40


class TraceFormatError(VoltanaError):
    """A trace file is missing, unreadable or malformed.

    ``str(error)`` is one line, ``SOURCE:LINE: PROBLEM`` (1-based line), or ``SOURCE: PROBLEM`` when
    the problem concerns the whole file (missing, empty, unknown format, no requests).
    """

    def __init__(self, source: str, line: int | None, problem: str) -> None:
        self.source = source
        self.line = line
        # Keep the message on one line whatever the problem text holds.
        self.problem = " ".join(problem.split())
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {self.problem}")

    def __reduce__(self) -> tuple[type[TraceFormatError], tuple[str, int | None, str]]:
        return (type(self), (self.source, self.line, self.problem))


def shown(value: object) -> str:
    """A short, quoted rendering of a bad value for an error message."""
    text = repr(value)
    if len(text) > _MAX_SHOWN_CHARS:
        text = text[: _MAX_SHOWN_CHARS - 3] + "..."
    return text
