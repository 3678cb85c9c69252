"""Argparse options generated from settings dataclasses (their fields' voltana.flags metadata),
and the settings' keyword arguments read back from the parsed options.

On the command line: the flag beats its environment variable, which beats the default. A
variable is read when its flag is added (`voltana serve` adds a service's flags as it parses
its command line) and read like the flag's own text, so a bad value is a usage error (one line,
exit 2) that names the variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
from collections.abc import Callable
from typing import Any

from voltana.flags import FIELD_DEFAULT, Flag, field_default, flag_fields


def add_settings_args(
    container: argparse._ActionsContainer, settings: type[Any], *, prefix: str = ""
) -> None:
    """One option per ``flag`` field of the dataclass ``settings``, in field order; ``prefix``
    goes before generated names (``http-`` → ``--http-max-body-bytes``)."""
    for field, spec in flag_fields(settings):
        add_flag(container, spec, default_of(field, spec), spec.option(field.name, prefix))


def settings_kwargs(
    args: argparse.Namespace, settings: type[Any], *, prefix: str = ""
) -> dict[str, Any]:
    """The ``flag`` fields of ``settings`` as parsed, for ``settings(**kwargs, <composed ones>)``;
    a flag not given whose default reads as None ("" with a reader) is left out, so the
    dataclass's default applies."""
    kwargs: dict[str, Any] = {}
    for field, spec in flag_fields(settings):
        value = getattr(args, dest_of(spec.option(field.name, prefix)))
        default = field_default(field)
        if isinstance(default, bool):
            kwargs[field.name] = value != default  # a switch turns the default around
        elif value is not None:
            kwargs[field.name] = spec.convert(value) if spec.convert else value
    return kwargs


def add_flag(
    container: argparse._ActionsContainer, spec: Flag, default: Any, option: str = ""
) -> argparse.Action:
    """Add ``spec`` as ``option`` (default: its name) with the command line's ``default`` (a
    bool: a switch)."""
    option = option or spec.name
    if isinstance(default, bool):
        return container.add_argument(option, action="store_true", help=_help(spec.help_text()))
    if isinstance(default, enum.Enum):
        default = default.value
    given = os.environ.get(spec.env) if spec.env else None
    options: dict[str, Any] = {
        "help": _help(spec.help_text(), None if spec.required else _shown_default(spec, default)),
        "metavar": spec.metavar,
        "choices": spec.choices,
        "required": spec.required,
    }
    if spec.repeat:
        options.update(action="append", default=list(default or ()))
    elif given:
        options["default"] = _FromEnv(given, spec.env)
    elif not (default == "" and spec.parse):  # "" is not read: it means "not given"
        options["default"] = default
    if spec.parse or given:
        options["type"] = _reader(spec.parse)
    return container.add_argument(option, **options)


def default_of(field: dataclasses.Field[Any], spec: Flag) -> Any:
    """The command line's default of ``field``: its flag's, else the dataclass's."""
    default = field_default(field) if spec.default is FIELD_DEFAULT else spec.default
    return None if default is dataclasses.MISSING else default


def dest_of(option: str) -> str:
    """The namespace attribute of ``option``, as argparse names it."""
    return option.lstrip("-").replace("-", "_")


class _FromEnv(str):
    """A default taken from an environment variable (errors reading it name the variable)."""

    variable: str

    def __new__(cls, text: str, variable: str) -> _FromEnv:
        value = super().__new__(cls, text)
        value.variable = variable
        return value


def _reader(parse: Callable[[str], Any] | None) -> Callable[[str], Any]:
    def read(text: str) -> Any:
        try:
            return parse(str(text)) if parse else str(text)
        except (argparse.ArgumentTypeError, ValueError) as error:
            if isinstance(text, _FromEnv):
                raise argparse.ArgumentTypeError(f"${text.variable}: {error}") from None
            raise

    read.__name__ = getattr(parse, "__name__", "str")  # argparse names it in some errors
    return read


def _shown_default(spec: Flag, default: Any) -> str | None:
    shown = spec.default_help
    if shown == "":
        shown = None if default is None or default == "" or spec.repeat else str(default)
    if spec.env:
        return f"${spec.env}, else {shown}" if shown else f"${spec.env}"
    return shown


def _help(text: str, default: str | None = None) -> str:
    text = text.replace("%", "%%")  # argparse formats help with %
    return f"{text} (default: {default.replace('%', '%%')})" if default else text
