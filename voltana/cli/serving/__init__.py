"""One module per `voltana serve SERVICE`: ``add_flags(parser)`` and ``build(args)``.

Most flags are generated from the service's settings dataclass (voltana.cli.settings_args);
a module adds only the flags of the fields it composes itself (SLO, security, metrics...).
"""
