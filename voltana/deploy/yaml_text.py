"""A small YAML writer for generated deployment files: block mappings, flow lists of scalars
(commands stay one argument per item, wrapped), comments between entries.

PyYAML's dumper drops comments, and the generated files are documentation as much as
configuration; this writes exactly what the generators describe, and they are parsed back with
PyYAML in the tests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_WIDTH = 100


@dataclass(frozen=True)
class Comment:
    """A comment line (or lines) written where it stands in a mapping or list; "" = an empty
    line."""

    text: str


def scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))  # a JSON string is a valid YAML double-quoted scalar


def _is_flow_list(value: object) -> bool:
    return isinstance(value, list | tuple) and all(
        not isinstance(item, Mapping | list | tuple | Comment) for item in value
    )


def _groups(items: Sequence[object]) -> list[list[object]]:
    """Command-line items grouped for reading: each ``--flag`` with the values after it."""
    groups: list[list[object]] = []
    for item in items:
        if not groups or (isinstance(item, str) and item.startswith("-")):
            groups.append([item])
        else:
            groups[-1].append(item)
    return groups


def _flow(items: Sequence[object], indent: int, key_width: int) -> list[str]:
    inline = "[" + ", ".join(scalar(item) for item in items) + "]"
    if indent + key_width + len(inline) <= _WIDTH:
        return [inline]
    lines, current = ["["], " " * (indent + 2)
    for group in _groups(items):
        piece = " ".join(scalar(item) + "," for item in group)
        if current.strip() and len(current) + 1 + len(piece) > _WIDTH:
            lines.append(current.rstrip())
            current = " " * (indent + 2)
        current += ("" if not current.strip() else " ") + piece
    lines.append(current.rstrip())
    lines.append(" " * indent + "]")
    return lines


def _comment_lines(comment: Comment, indent: int) -> list[str]:
    if not comment.text:
        return [""]  # Comment("") stands for an empty line
    return [(" " * indent + "# " + line).rstrip() for line in comment.text.splitlines()]


def write(value: Mapping[str, Any], indent: int = 0) -> list[str]:
    """Lines of a block mapping; keys map to scalars, flow lists, nested mappings or lists of
    mappings; ``Comment`` values (any key) are written as comments."""
    lines: list[str] = []
    pad = " " * indent
    for key, item in value.items():
        if isinstance(item, Comment):
            lines += _comment_lines(item, indent)
        elif isinstance(item, Mapping):
            lines.append(f"{pad}{key}:" if item else f"{pad}{key}: {{}}")
            lines += write(item, indent + 2)
        elif _is_flow_list(item):
            flow = _flow(item, indent, len(str(key)) + 2)
            lines.append(f"{pad}{key}: {flow[0]}")
            lines += flow[1:]
        elif isinstance(item, list | tuple):
            lines.append(f"{pad}{key}:")
            for element in item:
                if isinstance(element, Comment):
                    lines += _comment_lines(element, indent + 2)
                    continue
                block = write(element, indent + 4)
                lines.append(f"{pad}  - {block[0].lstrip()}")
                lines += block[1:]
        else:
            lines.append(f"{pad}{key}: {scalar(item)}")
    return lines


def document(header: str, body: Mapping[str, Any]) -> str:
    """A whole file: ``header`` as comment lines, then the mapping."""
    head = [("# " + line).rstrip() for line in header.splitlines()]
    return "\n".join([*head, *write(body)]) + "\n"
