"""What every subcommand shares: its options, its exit codes, and the way it reports.

Each command module has ``add_parser(sub)`` and builds its parsers with :func:`add_command`, which gives
them the help formatter (rich-argparse, defaults shown), the exit-status epilog and the common options:
``-q/-v`` always, ``--json`` on a command that reports, ``--dry-run`` on one that changes data. A handler
takes the parsed arguments and returns an exit code; it reports through :class:`Output` (``Output.of(args)``):
a JSON document with ``--json``, else lines and rich tables on stdout; notes on stderr unless ``-q``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rich_argparse import ArgumentDefaultsRichHelpFormatter

from e2e3d_provider.devstack.console import human_bytes

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "Output",
    "add_command",
    "add_common_options",
    "add_group",
    "human_bytes",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EPILOG = (
    "Exit status: 0 success, 1 failure (the command ran and something failed: an error, a conflict, a check that "
    "found damage), 2 usage (the command line itself is wrong)."
)


class HelpFormatter(ArgumentDefaultsRichHelpFormatter):
    """rich-argparse's formatter that shows every option's default. Help strings are plain text (no rich
    markup), so ``[...]`` in them prints as written and the docs render the same strings."""

    help_markup = False
    text_markup = False

    def _get_help_string(self, action: argparse.Action) -> str | None:
        """``(default: X)`` after the help, unless there is no default (None: the help says in words what
        happens without the option, "default: every dataset") or the help already names it."""
        if action.default is None or (action.help and "%(default)" in action.help):
            return action.help
        return super()._get_help_string(action)


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``-q``/``-v`` on a subcommand (``cli.build_parser`` adds them to every one); their defaults are
    suppressed so that ``e2e3d -v CMD`` (the option before the command) is not reset by the subcommand."""
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="print only the result and errors"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="show the libraries' logs: -v info, -vv debug and tracebacks",
    )


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """``-q``/``-v`` on the top-level parser (``e2e3d -v stats``), with real defaults."""
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the result and errors")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="show the libraries' logs: -v info, -vv debug and tracebacks"
    )


def _json_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print the result as one JSON document on stdout")
    return parent


def _dry_run_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--dry-run", action="store_true", help="say what would change and change nothing (no object, no row written)"
    )
    return parent


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    help: str,
    handler: Callable[[argparse.Namespace], int],
    *,
    json: bool = False,
    dry_run: bool = False,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand's parser with the shared formatter, epilog and options (``-q/-v``, and ``--json`` and
    ``--dry-run`` when asked); ``handler(args)`` runs it."""
    parents = []
    if json:
        parents.append(_json_parent())
    if dry_run:
        parents.append(_dry_run_parent())
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=EPILOG,
        parents=parents,
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(func=handler, json=False, dry_run=False)
    add_common_options(parser)
    return parser


def add_group(
    sub: argparse._SubParsersAction,
    name: str,
    help: str,
) -> argparse._SubParsersAction:
    """A command with subcommands of its own (``e2e3d config get|set|list``): add each with :func:`add_command`."""
    parser = sub.add_parser(name, help=help, description=help, epilog=EPILOG, formatter_class=HelpFormatter)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")


class Output:
    """How a command reports: ``--json`` (one document on stdout), ``-q`` (no notes, no progress), ``-v``."""

    def __init__(self, json: bool = False, quiet: bool = False, verbose: int = 0) -> None:
        self.json = json
        self.quiet = quiet
        self.verbose = verbose

    @classmethod
    def of(cls, args: argparse.Namespace) -> Output:
        return cls(
            json=bool(getattr(args, "json", False)),
            quiet=bool(getattr(args, "quiet", False)),
            verbose=int(getattr(args, "verbose", 0) or 0),
        )

    def line(self, text: str = "") -> None:
        """A line of the human report (nothing with ``--json``, where :meth:`emit` says it all)."""
        if not self.json:
            print(text, flush=True)

    def emit(self, document: Any) -> None:
        """The JSON document of ``--json`` (dates and paths as strings); nothing without ``--json``."""
        if self.json:
            print(json.dumps(document, indent=2, default=str), flush=True)

    def note(self, text: str) -> None:
        """Something a person may want to know, on stderr; silent with ``-q``."""
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def warn(self, text: str) -> None:
        """A warning about the result (damage, conflicts), on stderr even with ``-q``."""
        print(text, file=sys.stderr, flush=True)

    def error(self, text: str) -> None:
        print(f"e2e3d: error: {text}", file=sys.stderr, flush=True)

    def table(
        self,
        title: str,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        right: Sequence[int] | None = None,
    ) -> None:
        """A rich table on stdout: its first column left-aligned, the others right-aligned (or only
        ``right``'s indexes). No box: each row stays one line of whitespace-separated cells, so the output
        reads in a terminal and splits in a script alike."""
        if self.json:
            return
        from rich import box
        from rich.table import Table

        print(f"\n{title}", flush=True)
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for i, column in enumerate(columns):
            aligned = (i in right) if right is not None else i > 0
            table.add_column(column, justify="right" if aligned else "left", overflow="fold")
        for row in rows:
            table.add_row(*(str(cell) for cell in row))
        console().print(table)


def console(stderr: bool = False) -> Any:
    """A rich console on stdout (or stderr) that never wraps or cuts a line when it is not a terminal
    (a pipe, a file, a test's capture): 80 columns would fold a wide table."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    return Console(
        file=stream, width=None if terminal else 250, highlight=False, soft_wrap=False, emoji=False, markup=False
    )
