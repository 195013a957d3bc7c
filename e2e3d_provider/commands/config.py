"""``e2e3d config list|get|set|unset``: the provider's settings, each with its value, default and where it came from.

Two scopes (``e2e3d_provider.core.settings``): the ``[e2e3d]`` Airflow options, read here through Airflow's
configuration as this machine's components would read them (``airflow.cfg``, ``AIRFLOW__E2E3D__...``, else the
declared default), and the platform keys in PostgreSQL's ``e2e3d.config``, which ``set`` and ``unset`` change
for every component at once. An Airflow option is set where each component runs (its environment or its
``airflow.cfg``), so ``set`` refuses one and prints the line that sets it instead.

Exit status: 0 done; 1 a bad key or value, a read-only key, or an Airflow option given to ``set`` (each said on
stderr); a failure to reach PostgreSQL propagates to ``e2e3d``'s own error handling.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import sys
from datetime import datetime
from typing import Any

from e2e3d_provider.core.settings import (
    PLATFORM_TABLE,
    SECTION,
    SETTINGS,
    Scope,
    Setting,
    by_scope,
    coerce,
    render,
)
from e2e3d_provider.hooks import DEFAULT_METADATA_CONN_ID

EXIT_OK, EXIT_FAILURE = 0, 1
#: seconds the commands wait out PostgreSQL being down before they fail (a person is waiting, not a task)
RETRY_DEADLINE = 10.0
#: the help's description (no square brackets: a rich help formatter reads them as markup)
DESCRIPTION = (
    "Three scopes: the Airflow options of section e2e3d, read as this machine's Airflow components read them "
    "(airflow.cfg, AIRFLOW__E2E3D__<NAME>, else the declared default); the platform keys in PostgreSQL's "
    "e2e3d.config, which set and unset change for every component at once; and a few environment variables. An "
    "Airflow option or a variable is set where each component runs, so set refuses one and prints the line that "
    "sets it instead. Exit status: 0 done, 1 a bad key or value (said on stderr), 2 a usage error."
)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``config`` and its subcommands to ``sub`` (the ``e2e3d`` parser's subparsers); returns its parser."""
    config = sub.add_parser(
        "config",
        help="the provider's settings: Airflow options of section e2e3d and the platform keys in PostgreSQL",
        description=DESCRIPTION,
    )
    commands = config.add_subparsers(dest="config_command", required=True, metavar="{list,get,set,unset}")

    def metadata_conn(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--metadata-conn-id",
            default=DEFAULT_METADATA_CONN_ID,
            help=f"the PostgreSQL connection holding {PLATFORM_TABLE} (default: %(default)s)",
        )

    def as_json(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")

    listing = commands.add_parser("list", help="every setting with its value, default and source")
    listing.add_argument(
        "--scope",
        choices=["airflow", "platform", "environment"],
        help="only the Airflow options or the environment variables (no database needed), or only the platform "
        "keys (default: all three)",
    )
    as_json(listing)
    metadata_conn(listing)
    listing.set_defaults(func=cmd_config_list)

    get = commands.add_parser("get", help="one setting's value (text: the value alone, for scripts)")
    get.add_argument("key", help="an Airflow option, a platform key or a variable (see: e2e3d config list)")
    as_json(get)
    metadata_conn(get)
    get.set_defaults(func=cmd_config_get)

    set_ = commands.add_parser("set", help=f"check a platform key's value and store it in {PLATFORM_TABLE}")
    set_.add_argument("key", help="a platform key (see: e2e3d config list --scope platform)")
    set_.add_argument("value", help="its value: a number, or JSON for a json key (null where a key may be unset)")
    set_.add_argument("--dry-run", action="store_true", help="check the value and show the change; write nothing")
    metadata_conn(set_)
    set_.set_defaults(func=cmd_config_set)

    unset = commands.add_parser("unset", help=f"remove a platform key from {PLATFORM_TABLE}: back to its default")
    unset.add_argument("key", help="a platform key")
    unset.add_argument("--dry-run", action="store_true", help="show what would be removed; remove nothing")
    metadata_conn(unset)
    unset.set_defaults(func=cmd_config_unset)
    return config


# ---------------------------------------------------------------------------------------------------------
# reading the values
# ---------------------------------------------------------------------------------------------------------


def airflow_value(item: Setting) -> tuple[Any, str]:
    """An ``[e2e3d]`` option's value as Airflow's configuration gives it on this machine, typed, and its source:
    ``env`` (``AIRFLOW__E2E3D__...``, or its ``_CMD``/``_SECRET`` forms), ``airflow.cfg`` or ``default``."""
    from airflow.configuration import conf

    getter = {"integer": conf.getint, "float": conf.getfloat, "boolean": conf.getboolean}.get(item.type, conf.get)
    value = getter(SECTION, item.name, fallback=item.default)
    env = item.env_var or ""
    if any(name in os.environ for name in (env, f"{env}_CMD", f"{env}_SECRET")):
        source = "env"
    elif _in_config_file(item.name):
        source = "airflow.cfg"
    else:
        source = "default"
    return value, source


def _in_config_file(name: str) -> bool:
    """Whether ``airflow.cfg`` itself sets ``[e2e3d] name`` (not a default Airflow filled in)."""
    from airflow.configuration import AIRFLOW_CONFIG

    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(AIRFLOW_CONFIG)
    except configparser.Error:
        return False
    return parser.has_option(SECTION, name)


def environment_value(item: Setting) -> tuple[Any, str]:
    """An environment variable's value in this process and its source (``env`` or ``default``)."""
    if item.name in os.environ:
        return os.environ[item.name], "env"
    return item.default, "default"


def platform_values(metadata_conn_id: str) -> dict[str, tuple[Any, datetime]]:
    """Every stored row of ``e2e3d.config``: key -> (value, when it was set)."""
    from e2e3d_provider.hooks.metadata import MetadataHook

    return MetadataHook(metadata_conn_id, retry_deadline=RETRY_DEADLINE).list_config()


def describe(item: Setting, value: Any, source: str, updated_at: datetime | None = None) -> dict[str, Any]:
    """One setting as ``list --json`` and ``get --json`` report it."""
    entry: dict[str, Any] = {
        "name": item.name,
        "scope": item.scope,
        "type": item.type,
        "value": value,
        "default": item.default,
        "source": source,
        "description": item.description,
        "read_only": item.read_only,
    }
    if item.env_var:
        entry["env"] = item.env_var
    if updated_at is not None:
        entry["updated_at"] = updated_at.isoformat(timespec="seconds")
    return entry


def collect(scope: Scope | None, metadata_conn_id: str) -> list[dict[str, Any]]:
    """The settings of ``scope`` (both when None) with their values; keys stored in ``e2e3d.config`` that
    nothing declares are listed after the keys, with scope ``platform`` and source ``undeclared``."""
    entries = (
        [describe(item, *airflow_value(item)) for item in by_scope("airflow")] if scope in (None, "airflow") else []
    )
    if scope in (None, "platform"):
        stored = platform_values(metadata_conn_id)
        for item in by_scope("platform"):
            if item.name in stored:
                value, updated_at = stored[item.name]
                entries.append(describe(item, value, PLATFORM_TABLE, updated_at))
            else:
                entries.append(describe(item, item.default, "default"))
        for key in sorted(set(stored) - set(SETTINGS)):
            value, updated_at = stored[key]
            when = updated_at.isoformat(timespec="seconds")
            entries.append(
                {"name": key, "scope": "platform", "value": value, "source": "undeclared", "updated_at": when}
            )
    if scope in (None, "environment"):
        entries += [describe(item, *environment_value(item)) for item in by_scope("environment")]
    return entries


def _shown(value: Any) -> str:
    """A value in the text output: ``(not set)`` for None, ``""`` for an empty string."""
    if value is None:
        return "(not set)"
    return render(value) or '""'


def _fail(message: str) -> int:
    print(f"e2e3d: error: {message}", file=sys.stderr)
    return EXIT_FAILURE


def _lookup(key: str) -> Setting | None:
    item = SETTINGS.get(key)
    if item is None:
        _fail(f"no setting {key!r}; see `e2e3d config list` (known: {', '.join(sorted(SETTINGS))})")
    return item


# ---------------------------------------------------------------------------------------------------------
# the commands
# ---------------------------------------------------------------------------------------------------------


def cmd_config_list(args: argparse.Namespace) -> int:
    entries = collect(args.scope, args.metadata_conn_id)
    if args.json:
        print(json.dumps(entries, indent=2, default=str))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("name", "scope", "value", "default", "source"):
        table.add_column(column, overflow="fold")
    for e in entries:
        name = e["name"] + (" (read-only)" if e.get("read_only") else "")
        table.add_row(name, e["scope"], _shown(e["value"]), _shown(e.get("default")), e["source"])
    Console(highlight=False, soft_wrap=False).print(table)
    return EXIT_OK


def cmd_config_get(args: argparse.Namespace) -> int:
    item = _lookup(args.key)
    if item is None:
        return EXIT_FAILURE
    updated_at = None
    if item.scope == "airflow":
        value, source = airflow_value(item)
    elif item.scope == "environment":
        value, source = environment_value(item)
    else:
        stored = platform_values(args.metadata_conn_id).get(item.name)
        value, source = (item.default, "default") if stored is None else (stored[0], PLATFORM_TABLE)
        updated_at = None if stored is None else stored[1]
    if args.json:
        print(json.dumps(describe(item, value, source, updated_at), indent=2, default=str))
    else:
        print("null" if value is None else render(value))
    return EXIT_OK


def _settable(key: str, text: str | None) -> tuple[Setting, Any] | int:
    """The platform key ``key`` and ``text`` checked as its value; or, having said why on stderr, exit 1."""
    item = _lookup(key)
    if item is None:
        return EXIT_FAILURE
    value: Any = None
    if text is not None:
        try:
            value = coerce(item, text)
            if item.name == "rightsize" and value is not None:
                _check_policy(value)
        except ValueError as err:
            return _fail(str(err))
    if item.scope in ("airflow", "environment"):
        line = f"{item.env_var}={render(value)}" if text is not None else f"unset {item.env_var}"
        print(line)
        if item.scope == "environment":
            return _fail(f"{item.name} is an environment variable: set it where the process that needs it runs")
        return _fail(
            f"[{SECTION}] {item.name} is an Airflow option, read by each component from its own configuration: "
            f"set it in the environment of the components that need it ({line}) or in their airflow.cfg"
        )
    if item.read_only:
        return _fail(f"{PLATFORM_TABLE} {item.name!r} is written by the provider itself (read-only)")
    return item, value


def _check_policy(value: Any) -> None:
    """``rightsize``: every field a RightSizePolicy takes, with a value it accepts (the right-sizing step
    builds the same policy from it; a refused one would fail every run's right-sizing)."""
    from e2e3d_provider.lifecycle.results.rightsize import RightSizePolicy

    if not isinstance(value, dict):
        raise ValueError(f"rightsize must be a JSON object, not {json.dumps(value)}")
    try:
        RightSizePolicy.from_settings(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{PLATFORM_TABLE} 'rightsize': {err}") from None


def cmd_config_set(args: argparse.Namespace) -> int:
    return _change(args, args.value)


def cmd_config_unset(args: argparse.Namespace) -> int:
    return _change(args, None)


def _change(args: argparse.Namespace, raw: str | None) -> int:
    """Set ``args.key`` to ``raw`` (checked against its declaration first), or unset it (``raw`` None: it
    then reads its declared default); says what changes, and with ``--dry-run`` changes nothing."""
    unset = raw is None
    checked = _settable(args.key, raw)
    if isinstance(checked, int):
        return checked
    item, value = checked
    from e2e3d_provider.hooks.metadata import MetadataHook

    metadata = MetadataHook(args.metadata_conn_id, retry_deadline=RETRY_DEADLINE)
    before = metadata.get_config(item.name, None)
    after = f"default {_shown(item.default)}" if unset else _shown(value)
    verb = "unset" if unset else "set"
    change = f"{item.name}: {_shown(before)} -> {after}"
    if args.dry_run:
        print(f"would {verb} {PLATFORM_TABLE} {change} (dry run: nothing {'removed' if unset else 'written'})")
        return EXIT_OK
    if unset and not metadata.delete_config(item.name):
        print(f"{item.name} was not set: it reads its default")
        return EXIT_OK
    if not unset:
        metadata.set_config(item.name, value)
    print(f"{verb} {PLATFORM_TABLE} {change}")
    return EXIT_OK
