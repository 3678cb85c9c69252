"""Where commands write their results: checked before any work starts, ``-`` meaning stdout.

A path given with ``--json``/``--plot`` is checked up front (its folder exists and is writable,
it is not a folder itself, a plot's extension names a format matplotlib writes), so a bad path
ends the command with one line at once instead of after a long run.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import TextIO

from voltana.errors import ConfigError

STDOUT = "-"
# What matplotlib's Agg canvas writes (Figure.canvas.get_supported_filetypes()), without
# importing matplotlib just to check a flag.
PLOT_FORMATS = (
    "avif",
    "eps",
    "gif",
    "jpeg",
    "jpg",
    "pdf",
    "pgf",
    "png",
    "ps",
    "raw",
    "rgba",
    "svg",
    "svgz",
    "tif",
    "tiff",
    "webp",
)


def check_output_path(path: str, flag: str, *, allow_stdout: bool = True) -> None:
    """Raise ConfigError when ``path`` (given with ``flag``) cannot be written."""
    if allow_stdout and path == STDOUT:
        return
    if not path:
        raise ConfigError(f"{flag} needs a file name")
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory, not a file")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ConfigError(f"{flag} {path}: not writable")


def check_plot_path(path: str, flag: str = "--plot") -> None:
    """Like ``check_output_path`` (no stdout), the extension must name an image format, and
    matplotlib (the optional ``plot`` extra) must be installed."""
    check_output_path(path, flag, allow_stdout=False)
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError(
            f"{flag} needs matplotlib, which is optional: pip install 'voltana[plot]'"
        )
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise ConfigError(
            f"{flag} {path}: cannot tell the image format from "
            f"{'.' + suffix if suffix else 'a file name without extension'}; "
            f"use one of .{', .'.join(PLOT_FORMATS)}"
        )


def write_text(path: str, text: str, flag: str) -> None:
    """Write ``text`` to ``path``, or to stdout for ``-``; ConfigError when that fails."""
    if path == STDOUT:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
        return
    try:
        Path(path).write_text(text if text.endswith("\n") else text + "\n")
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot write: {exc.strerror}") from None


def report_stream(json_path: str | None) -> TextIO:
    """Where the human-readable report goes: stderr when the JSON takes stdout."""
    return sys.stderr if json_path == STDOUT else sys.stdout
