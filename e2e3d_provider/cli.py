# PYTHON_ARGCOMPLETE_OK
"""The ``e2e3d`` command: run the embedded local stack, bootstrap storage and metadata, move data, look at jobs.

The parser is built here from the command modules (:data:`COMMAND_MODULES`, each with ``add_parser(sub)``);
:func:`main` parses, sets the log levels from ``-q/-v``, runs the command and turns its outcome into the exit
status: 0 success, 1 failure, 2 usage (argparse's own).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

from e2e3d_provider import __version__
from e2e3d_provider.commands import config, data, dev, durability, jobs, stack
from e2e3d_provider.commands.output import (
    EPILOG,
    EXIT_FAILURE,
    HelpFormatter,
    Output,
    add_common_options,
    add_global_options,
)
from e2e3d_provider.exceptions import E2E3DError

#: the subcommand modules, in the order ``e2e3d --help`` lists them; each has ``add_parser(sub)``
COMMAND_MODULES = [stack, data, jobs, durability, config, dev]
#: loggers a CLI run quiets: Airflow's (and its structlog bridge's), ours, and the S3/HTTP clients'
_LOGGERS = ("", "airflow", "e2e3d_provider", "urllib3", "botocore", "py.warnings")


def build_parser() -> argparse.ArgumentParser:
    """The ``e2e3d`` parser: every command module's subcommands (the docs' CLI page is generated from it)."""
    parser = argparse.ArgumentParser(
        prog="e2e3d",
        description="Run the embedded local stack, bootstrap storage and metadata, move data and look at jobs.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_parser(sub)
    _finish(parser)
    return parser


def _finish(parser: argparse.ArgumentParser) -> None:
    """Every subcommand, however its module built it (``add_command`` or a plain ``sub.add_parser``), gets
    the help formatter (defaults shown), the exit-status epilog and ``-q/-v``."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for child in action.choices.values():
            child.formatter_class = HelpFormatter
            child.epilog = child.epilog or EPILOG
            if "-q" not in child._option_string_actions and "-v" not in child._option_string_actions:
                add_common_options(child)
            _finish(child)


def log_level(out: Output) -> int:
    """The libraries' log level: errors only by default (a warning such as a role connection falling back
    to the admin's is not the user's business unless asked), none with ``-q``, info with ``-v``, debug
    with ``-vv``."""
    if out.quiet:
        return logging.CRITICAL + 1
    return {0: logging.ERROR, 1: logging.INFO}.get(out.verbose, logging.DEBUG)


def configure_logging(out: Output, airflow: bool = True) -> Callable[[], None]:
    """Set the log levels from ``-q/-v`` on stdlib logging and on Airflow's structlog (which renders the
    stdlib records and its own), and send the logs to stderr. Airflow configures logging when it is first
    imported, replacing what was set before, so Airflow is configured first (its level from ``-q/-v``
    through the environment, for this process only), then the levels are set again. Returns what puts
    everything back (``main`` called in a process that goes on: a test, a benchmark). With ``airflow=False``
    (a command that never imports it) only the stdlib levels are set."""
    level = log_level(out)
    if airflow:
        _configure_airflow(logging.getLevelName(min(level, logging.CRITICAL)))
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    for logger in _LOGGERS:
        logging.getLogger(logger).setLevel(level)
    shown = warnings.showwarning
    logging.captureWarnings(True)  # a library's warnings.warn is a log record too: shown with -v
    streams = _logs_to_stderr()

    def restore() -> None:
        logging.captureWarnings(False)
        warnings.showwarning = shown
        for logger, was in levels.items():
            logging.getLogger(logger).setLevel(was)
        for put_back in streams:
            put_back()

    return restore


def _configure_airflow(level: str) -> None:
    """Import Airflow (which configures its logging) with its level set to ``level`` for this process only."""
    saved = os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL")
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = level
    try:
        import airflow.settings  # noqa: F401  (configures logging)
    finally:  # child processes keep the level they were given
        if saved is None:
            os.environ.pop("AIRFLOW__LOGGING__LOGGING_LEVEL", None)
        else:
            os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = saved


class _Stderr:
    """Whatever ``sys.stderr`` is when a log line is written (a test's capture is replaced between tests)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _logs_to_stderr() -> list[Callable[[], None]]:
    """Airflow renders its logs (and the stdlib records it takes over) on stdout; a command's stdout is its
    result (a table, ``--json``), so the logs go to stderr. Best effort: Airflow's logging is not an API.
    Returns what puts each stream back."""
    undo: list[Callable[[], None]] = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(_Stderr())
            undo.append(functools.partial(handler.setStream, sys.stdout))
    try:
        import structlog

        factory: Any = structlog.get_config().get("logger_factory")
        if getattr(factory, "io", False) is None:  # Airflow's LoggerFactory writing to the default, stdout
            factory.io = _Stderr()
            undo.append(functools.partial(setattr, factory, "io", None))
    except Exception:  # pragma: no cover - a structlog or Airflow that differs: the logs stay where they were
        pass
    return undo


def _complete(parser: argparse.ArgumentParser) -> None:
    """Shell completion (argcomplete, which Airflow installs): a no-op unless the shell asks for completions
    (``eval "$(register-python-argcomplete e2e3d)"``)."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:  # pragma: no cover - argcomplete comes with Airflow
        return
    argcomplete.autocomplete(parser)


def main(argv: list[str] | None = None) -> int:
    """Run ``e2e3d`` with ``argv`` (default: the process's arguments); returns the exit status."""
    parser = build_parser()
    _complete(parser)
    args = parser.parse_args(argv)  # a usage error exits 2 here
    out = Output.of(args)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    # demo and airflow set Airflow up themselves (its home, its database) before it is first imported; stack
    # and dags never import it (``eval "$(e2e3d stack env)"`` stays instant)
    airflow = getattr(args, "airflow", "configure")
    restore_logging = (lambda: None) if airflow == "own" else configure_logging(out, airflow == "configure")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130
    except (E2E3DError, ValueError) as err:  # expected failures: a clear error, never a traceback
        if out.verbose >= 2:
            logging.getLogger(__name__).exception("e2e3d %s failed", args.command)
        out.error(str(err))
        return EXIT_FAILURE
    except Exception as err:
        from airflow.exceptions import AirflowNotFoundException

        if isinstance(err, AirflowNotFoundException):  # a connection that is not defined
            out.error(str(err))
            return EXIT_FAILURE
        if out.verbose >= 2:
            import traceback

            traceback.print_exc()
            out.error(f"{type(err).__name__}: {err}")
        else:
            out.error(f"{type(err).__name__}: {err} (run with -vv for the traceback)")
        return EXIT_FAILURE
    finally:
        restore_logging()


if __name__ == "__main__":
    sys.exit(main())
