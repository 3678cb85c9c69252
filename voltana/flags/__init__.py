"""Command-line metadata of settings fields (no argparse building here: voltana.cli does that).

Services, engines and the stack declare their flags next to their settings fields with
``flag``/``composed``/``no_flag`` (voltana.flags.spec), reading values with voltana.flags.values;
they never import voltana.cli.
"""

from voltana.flags.spec import (
    FIELD_DEFAULT,
    CliSpec,
    Composed,
    Flag,
    NoFlag,
    cli_spec,
    composed,
    field_default,
    flag,
    flag_fields,
    no_flag,
)

__all__ = [
    "FIELD_DEFAULT",
    "CliSpec",
    "Composed",
    "Flag",
    "NoFlag",
    "cli_spec",
    "composed",
    "field_default",
    "flag",
    "flag_fields",
    "no_flag",
]
