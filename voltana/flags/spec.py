"""What the command line says about a settings field, kept in the field's own metadata.

Each field of a settings dataclass says how `voltana serve` sets it, in one of three ways:

- ``flag(help, ...)``: a generated flag (voltana.cli.settings_args builds it): its name
  (default ``--`` + the field name with dashes), help, value reader, environment variable and,
  where the command line's default is not the dataclass's (a well-known port instead of any
  free one), that default;
- ``composed(by)``: set from flags of a dedicated helper (SLO targets, security, metrics...);
- ``no_flag()``: a tuning knob for library callers and tests, not on the command line.

One place then holds each option's name, default, help and environment variable, and a test
fails when a field declares none of the three.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

METADATA_KEY: Final = "voltana.flag"


class _FieldDefault:
    def __repr__(self) -> str:
        return "FIELD_DEFAULT"


# Flag.default when the command line's default is the dataclass field's own.
FIELD_DEFAULT: Final = _FieldDefault()


@dataclass(frozen=True)
class Flag:
    """One generated command-line option of a settings field."""

    # What the option does, without its default (added from ``default``/``default_help``);
    # a callable is asked when the parser is built (lists of names imported late).
    help: str | Callable[[], str]
    # "--window-s"; "" = "--" + the field name with dashes (after the builder's prefix).
    name: str = ""
    # Reads the text (voltana.flags.values); None = the text itself.
    parse: Callable[[str], Any] | None = None
    # Turns the parsed value (a list, with ``repeat``) into the field's type (Phase, tuple).
    convert: Callable[[Any], Any] | None = None
    # Environment variable read when the flag is not given: flag, then variable, then default.
    env: str = ""
    # The command line's default when it is not the field's (FIELD_DEFAULT).
    default: Any = FIELD_DEFAULT
    # How help shows the default: "" = the value itself (nothing for None or ""), None = not
    # at all, other text = that text ("controller@HOST").
    default_help: str | None = ""
    metavar: str | None = None
    choices: Sequence[str] | None = None
    # Repeatable (argparse "append"); ``convert`` gets the list.
    repeat: bool = False
    required: bool = False

    def option(self, field_name: str, prefix: str = "") -> str:
        """The option string, e.g. ``--http-max-body-bytes``."""
        return self.name or "--" + prefix + field_name.replace("_", "-")

    def help_text(self) -> str:
        return self.help() if callable(self.help) else self.help


@dataclass(frozen=True)
class Composed:
    """A field set from flags of a dedicated helper (``by`` names them)."""

    by: str


@dataclass(frozen=True)
class NoFlag:
    """A field deliberately not on the command line."""


CliSpec = Flag | Composed | NoFlag


def flag(spec: str | Callable[[], str] | Flag, /, **options: Any) -> Mapping[str, CliSpec]:
    """Field metadata for a generated flag: ``flag("help", parse=...)``, or a shared ``Flag``
    with some of its options replaced (``flag(GPU, default_help="...")``)."""
    if isinstance(spec, Flag):
        return {METADATA_KEY: dataclasses.replace(spec, **options)}
    return {METADATA_KEY: Flag(spec, **options)}


def composed(by: str) -> Mapping[str, CliSpec]:
    """Field metadata: set from flags of a dedicated helper, named by ``by``."""
    return {METADATA_KEY: Composed(by)}


def no_flag() -> Mapping[str, CliSpec]:
    """Field metadata: not on the command line (library callers and tests set it)."""
    return {METADATA_KEY: NoFlag()}


def cli_spec(field: dataclasses.Field[Any]) -> CliSpec | None:
    """What ``field`` declared (None: nothing, which the flag tests refuse)."""
    spec = field.metadata.get(METADATA_KEY)
    return spec if isinstance(spec, Flag | Composed | NoFlag) else None


def field_default(field: dataclasses.Field[Any]) -> Any:
    """The field's default (its factory called), or ``dataclasses.MISSING``."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def flag_fields(settings: type[Any]) -> list[tuple[dataclasses.Field[Any], Flag]]:
    """The fields of the dataclass ``settings`` that are generated flags, in field order."""
    found = []
    for field in dataclasses.fields(settings):
        spec = cli_spec(field)
        if isinstance(spec, Flag):
            found.append((field, spec))
    return found
