"""The ``e2e3d`` command line's subcommands, one module per group (``cli.py`` builds the parser and dispatches)."""
