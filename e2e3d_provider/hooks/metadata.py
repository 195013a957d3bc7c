"""MetadataHook: E2E3D job tracking, file inventories, transfers, statistics and configuration in
PostgreSQL (DESIGN §6)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from airflow.providers.postgres.hooks.postgres import PostgresHook

from e2e3d_provider.core.layout import validate_id, validate_stamp
from e2e3d_provider.core.listing import COUNT_FIELDS
from e2e3d_provider.core.retry import attempts_made, retry_call, seconds_spent
from e2e3d_provider.core.settings import default, validate_platform
from e2e3d_provider.core.usage import UsageCounts
from e2e3d_provider.exceptions import InvalidTransitionError, MetadataError, RunConflictError
from e2e3d_provider.hooks import DEFAULT_METADATA_CONN_ID
from e2e3d_provider.hooks.metadata_schema import (
    JOB_COLUMNS,
    MIGRATION_LOCK,
    MIGRATIONS,
    SCHEMA,
    SCHEMA_VERSION,
    STATUSES,
    TELEMETRY_TABLES,
    TRANSITIONS,
)

__all__ = ["SCHEMA", "SCHEMA_VERSION", "STATUSES", "TRANSITIONS", "MetadataHook"]

#: seconds a health probe retries: it reports the present, it does not wait out a restart
PROBE_DEADLINE = 1.0
#: most runs one job listing returns (:meth:`MetadataHook.list_jobs`): a page for a person or a sweep
MAX_LISTED_JOBS = 1000
#: what PostgreSQL (or the way to it) says while it restarts, starts or is briefly out of reach: a new
#: connection a moment later may succeed. Anything else (a wrong password, no such database, a refused TLS
#: certificate, no pg_hba.conf entry) fails at once.
_PG_TRANSIENT_SIGNS = (
    "connection refused",
    "could not connect to server",
    "is the server running",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "terminating connection due to administrator command",
    "server closed the connection unexpectedly",
    "timeout expired",
    "connection timed out",
    "sorry, too many clients already",
    "no route to host",
)


def pg_connection_lost(err: BaseException) -> bool:
    """True when connecting to PostgreSQL failed in a way a new attempt may cure (a restart, a cut)."""
    if isinstance(err, ConnectionError | TimeoutError):
        return True
    if type(err).__name__ not in ("OperationalError", "InterfaceError"):  # psycopg2's and psycopg's
        return False
    text = str(err).lower()
    return any(sign in text for sign in _PG_TRANSIENT_SIGNS)


class MetadataHook(PostgresHook):
    """Job tracking, file inventories, transfer and storage statistics, configuration (PostgreSQL).

    Uses Airflow's standard ``postgres`` connection (default id ``e2e3d_metadata``). Every table
    lives in the ``e2e3d`` schema, so the database may be shared with other applications.
    Writes are upserts keyed by ``(job_id, stamp)`` so task retries never duplicate rows.

    A PostgreSQL restart is ridden out: a new connection that fails because the server is down, starting
    or shutting down is tried again (jittered backoff) until ``retry_deadline`` seconds after the first
    attempt. A statement cut off by the restart itself still fails (its transaction is not replayed).

    :param metadata_conn_id: Airflow ``postgres`` connection id (default ``e2e3d_metadata``).
    :param retry_deadline: seconds to keep trying to connect; ``None`` (default): ``[e2e3d]
        metadata_retry_deadline`` in Airflow's configuration, else 120.
    """

    conn_name_attr = "metadata_conn_id"
    default_conn_name = DEFAULT_METADATA_CONN_ID
    conn_type = "postgres"
    hook_name = "E2E3D metadata (PostgreSQL)"

    def __init__(
        self, metadata_conn_id: str = default_conn_name, *, retry_deadline: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(metadata_conn_id=metadata_conn_id, **kwargs)
        if retry_deadline is None:
            from airflow.sdk.configuration import conf

            retry_deadline = conf.getfloat(
                "e2e3d", "metadata_retry_deadline", fallback=default("metadata_retry_deadline")
            )
        if retry_deadline < 0:
            raise ValueError(f"retry_deadline cannot be negative, got {retry_deadline}")
        self.retry_deadline = retry_deadline
        self._migrated = False
        self._sessions = threading.local()  # each thread's open session() connection, if any

    # -----------------------------------------------------------------------------------
    # Connections and migrations
    # -----------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor in one transaction: committed on success, rolled back on error. Inside
        :meth:`session` (on the thread that opened it) it runs on the session's connection; otherwise on
        a connection of its own, closed at the end."""
        session = getattr(self._sessions, "conn", None)
        conn: Any = session if session is not None else self._connect()
        try:
            with conn.cursor() as cur:
                yield cur
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            if session is None:
                conn.close()

    @contextmanager
    def session(self) -> Iterator[MetadataHook]:
        """One connection for every transaction this thread runs inside (a maintenance run's thousands
        of records cost one connection, not one each); nested sessions share the outer one."""
        if getattr(self._sessions, "conn", None) is not None:
            yield self
            return
        self._sessions.conn = self._connect()
        try:
            yield self
        finally:
            conn, self._sessions.conn = self._sessions.conn, None
            conn.close()

    @contextmanager
    def advisory_lock(self, name: str, *, wait: float = 0.0, poll: float = 0.25) -> Iterator[Any]:
        """Hold the PostgreSQL advisory lock ``name`` (on a connection of its own) for the block: every
        worker of every host that asks for the same name waits, up to ``wait`` seconds, then gets
        :class:`RunConflictError` naming the lock and the backend that holds it. A task that dies
        releases its lock with its connection. Yields that connection (autocommit), which the block may
        use for what it records under the lock (:meth:`record_usage`), saving a connection."""
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        conn = self._connect()
        conn.autocommit = True
        try:
            deadline = time.monotonic() + max(0.0, wait)
            with conn.cursor() as cur:
                while True:
                    cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                    if cur.fetchone()[0]:
                        break
                    if time.monotonic() >= deadline:
                        cur.execute(  # a bigint advisory key is stored as two 32-bit halves
                            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                            " AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1",
                            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
                        )
                        holder = cur.fetchone()
                        raise RunConflictError(
                            f"{name} is held by another task (PostgreSQL backend {holder[0] if holder else '?'}); "
                            f"waited {wait:g} s. Two of them never run at once: retry when it is done."
                        )
                    time.sleep(poll)
            try:
                yield conn
            finally:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
        finally:
            conn.close()

    def _connect(self) -> Any:
        """A new DB-API connection (psycopg2); a server restarting or out of reach is waited out up to
        :attr:`retry_deadline` seconds."""
        try:
            return retry_call(
                self.get_conn,
                f"connect to PostgreSQL ({self.get_conn_id()!r})",
                deadline=self.retry_deadline,
                transient=pg_connection_lost,
            )
        except Exception as err:
            made = attempts_made(err)
            tried = f" (after {made} attempts over {seconds_spent(err):.0f} s)" if made > 1 else ""
            raise MetadataError(
                f"cannot connect to the metadata database through connection {self.get_conn_id()!r}{tried}: "
                f"{str(err).strip()}. Check that PostgreSQL runs and the connection's host, port, login and "
                "password."
            ) from err

    def migrate(self) -> int:
        """Apply missing schema migrations (idempotent, safe under concurrency); return the version."""
        with self.transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            cur.execute(f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations (
                version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())""")
            cur.execute(f"SELECT version FROM {SCHEMA}.schema_migrations")
            applied = {row[0] for row in cur.fetchall()}
            for version, name, sql in MIGRATIONS:
                if version not in applied:
                    cur.execute(sql)
                    cur.execute(
                        f"INSERT INTO {SCHEMA}.schema_migrations (version, name) VALUES (%s, %s)", (version, name)
                    )
                    self.log.info("metadata schema: applied migration %d (%s)", version, name)
        self._migrated = True
        return SCHEMA_VERSION

    def schema_version(self) -> int:
        with self.transaction() as cur:
            cur.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.schema_migrations",))
            if cur.fetchone()[0] is None:
                return 0
            cur.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA}.schema_migrations")
            return int(cur.fetchone()[0])

    @contextmanager
    def _migrated_transaction(self) -> Iterator[Any]:
        """:meth:`transaction` on a schema brought up to date first (once per hook)."""
        if not self._migrated:
            self.migrate()
        with self.transaction() as cur:
            yield cur

    def health(self) -> dict[str, Any]:
        """Reachability and schema version; never raises. A probe: it says how things are now, so it waits
        out a restart for at most :data:`PROBE_DEADLINE` seconds."""
        try:
            probe = type(self)(self.get_conn_id(), retry_deadline=min(self.retry_deadline, PROBE_DEADLINE))
            with probe.transaction() as cur:
                cur.execute("SELECT current_setting('server_version')")
                version = cur.fetchone()[0]
            return {"ok": True, "server_version": version, "schema_version": probe.schema_version()}
        except Exception as err:
            return {"ok": False, "error": str(err)}

    # -----------------------------------------------------------------------------------
    # Jobs
    # -----------------------------------------------------------------------------------

    def record_job(
        self,
        job_id: str,
        stamp: str,
        dataset: str,
        status: str = "running",
        *,
        error: str | None = None,
        statistics: dict[str, Any] | None = None,
        started_at: datetime | None = None,
        usage: UsageCounts | None = None,
        **locations: Any,
    ) -> dict[str, Any]:
        """Create the job row or move it to ``status`` (checked against :data:`TRANSITIONS`).

        ``locations`` may set ``result_bucket``, ``result_prefix``, ``manifest_key``,
        ``archive_key``, ``files`` and ``bytes``. ``statistics`` are merged into the stored ones.
        A run that starts (again) is timed from ``started_at`` when given (when its DAG run started:
        a Clear restarts the clock), else from now. ``usage``: the totals of the storage units the change
        touched (:meth:`StorageHook.count_units`), stored in the same transaction.
        """
        validate_id(job_id, "job_id")
        validate_stamp(stamp)
        validate_id(dataset, "dataset")
        if status not in STATUSES:
            raise ValueError(f"unknown job status {status!r}; use one of {', '.join(STATUSES)}")
        unknown = set(locations) - {"result_bucket", "result_prefix", "manifest_key", "archive_key", "files", "bytes"}
        if unknown:
            raise TypeError(f"record_job got unexpected fields {sorted(unknown)}")
        with self._migrated_transaction() as cur:
            cur.execute(
                f"SELECT status FROM {SCHEMA}.jobs WHERE job_id = %s AND stamp = %s FOR UPDATE", (job_id, stamp)
            )
            row = cur.fetchone()
            if row is None:
                cur.execute(
                    f"INSERT INTO {SCHEMA}.jobs (job_id, stamp, dataset, status) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (job_id, stamp) DO NOTHING",
                    (job_id, stamp, dataset, "queued"),
                )
                current = "queued"
            else:
                current = row[0]
            if status not in TRANSITIONS[current]:
                raise InvalidTransitionError(
                    f"job {job_id} run {stamp} is {current}; it cannot become {status} "
                    f"(allowed: {', '.join(sorted(TRANSITIONS[current]))})"
                )
            sets = ["status = %s", "updated_at = now()", "statistics = statistics || %s::jsonb"]
            params: list[Any] = [status, json.dumps(statistics or {})]
            if status == "running" and current != "running":
                sets += ["started_at = coalesce(%s, now())", "finished_at = NULL", "error = NULL"]
                params.append(started_at)
            if status in ("succeeded", "failed") and current not in (status, "damaged"):
                sets.append("finished_at = now()")  # a damaged run made whole again finished when it did
            if error is not None or status == "failed":
                sets.append("error = %s")
                params.append(error)
            elif current == "damaged" and status not in ("damaged", "running"):  # running cleared it above
                sets.append("error = NULL")  # the damage is repaired
            for column, value in locations.items():
                sets.append(f"{column} = %s")
                params.append(value)
            cur.execute(
                f"UPDATE {SCHEMA}.jobs SET {', '.join(sets)} WHERE job_id = %s AND stamp = %s "
                f"RETURNING {', '.join(JOB_COLUMNS)}",
                (*params, job_id, stamp),
            )
            row = dict(zip(JOB_COLUMNS, cur.fetchone(), strict=True))
            if usage:
                store_usage(cur, usage)
            return row

    def published_runs(
        self, after: tuple[str, str] | None = None, limit: int = 100, job_id: str | None = None
    ) -> list[tuple[str, str, str]]:
        """``(job_id, stamp, status)`` of runs with published results (succeeded, archived, damaged: in
        ``output``, or once retired in ``archive``), in key order after ``after``: what a scrub walks."""
        where = ["status IN ('succeeded', 'archived', 'damaged')"]
        params: list[Any] = []
        if after is not None:
            where.append("(job_id, stamp) > (%s, %s)")
            params += list(after)
        if job_id is not None:
            where.append("job_id = %s")
            params.append(validate_id(job_id, "job_id"))
        with self._migrated_transaction() as cur:
            cur.execute(
                f"SELECT job_id, stamp, status FROM {SCHEMA}.jobs WHERE {' AND '.join(where)} "
                "ORDER BY job_id, stamp LIMIT %s",
                (*params, limit),
            )
            return [tuple(row) for row in cur.fetchall()]

    def record_scrub_findings(self, findings: Sequence[Mapping[str, Any]], usage: UsageCounts | None = None) -> int:
        """Store a scrub's findings: each damaged or missing object and where it was repaired from, with
        ``usage`` (the repaired units' totals) in the same transaction."""
        if not findings:
            return 0
        cols = ("job_id", "stamp", "bucket", "key", "problem", "repaired_from", "detail")
        with self._migrated_transaction() as cur:
            if usage:
                store_usage(cur, usage)
            cur.executemany(
                f"INSERT INTO {SCHEMA}.scrub_findings ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                [tuple(f.get(c) for c in cols) for f in findings],
            )
        return len(findings)

    def scrub_findings(self, job_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The latest scrub findings, optionally of one job, newest first."""
        cols = ("at", "job_id", "stamp", "bucket", "key", "problem", "repaired_from", "detail")
        where, params = ("WHERE job_id = %s", (job_id, limit)) if job_id else ("", (limit,))
        with self._migrated_transaction() as cur:
            cur.execute(
                f"SELECT {', '.join(cols)} FROM {SCHEMA}.scrub_findings {where} ORDER BY id DESC LIMIT %s", params
            )
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def start_backup(self, backup_id: str, target: str) -> None:
        """Record a backup as running."""
        with self._migrated_transaction() as cur:
            cur.execute(
                f"INSERT INTO {SCHEMA}.backups (backup_id, target, status) VALUES (%s, %s, 'running') "
                "ON CONFLICT (backup_id) DO NOTHING",
                (backup_id, target),
            )

    def finish_backup(self, backup_id: str, target: str, status: str, **figures: Any) -> None:
        """Record how a backup ended (``complete`` or ``failed``) with its figures: objects, bytes,
        sent_objects, sent_bytes, seconds, covers_until, error. A backup restored from its own dump (which
        holds it as running) is completed by this too."""
        cols = ("objects", "bytes", "sent_objects", "sent_bytes", "seconds", "covers_until", "error")
        unknown = set(figures) - set(cols)
        if unknown:
            raise TypeError(f"finish_backup got unexpected fields {sorted(unknown)}")
        names = [c for c in cols if c in figures]
        updates = ", ".join(f"{c} = excluded.{c}" for c in ("status", "finished_at", *names))
        with self._migrated_transaction() as cur:
            cur.execute(
                f"INSERT INTO {SCHEMA}.backups (backup_id, target, status, finished_at"
                f"{''.join(', ' + c for c in names)}) VALUES (%s, %s, %s, now(){', %s' * len(names)}) "
                f"ON CONFLICT (backup_id) DO UPDATE SET {updates}",
                (backup_id, target, status, *[figures[c] for c in names]),
            )

    def backups(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest backups, newest first."""
        cols = ("backup_id", "target", "status", "started_at", "finished_at", "covers_until", "objects", "bytes",
                "sent_objects", "sent_bytes", "seconds", "error")  # fmt: skip
        with self._migrated_transaction() as cur:
            cur.execute(f"SELECT {', '.join(cols)} FROM {SCHEMA}.backups ORDER BY backup_id DESC LIMIT %s", (limit,))
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def get_job(self, job_id: str, stamp: str | None = None) -> dict[str, Any] | None:
        """One run of a job (the latest when ``stamp`` is omitted), or None."""
        validate_id(job_id, "job_id")
        with self._migrated_transaction() as cur:
            if stamp is None:
                cur.execute(
                    f"SELECT {', '.join(JOB_COLUMNS)} FROM {SCHEMA}.jobs WHERE job_id = %s ORDER BY stamp DESC LIMIT 1",
                    (job_id,),
                )
            else:
                cur.execute(
                    f"SELECT {', '.join(JOB_COLUMNS)} FROM {SCHEMA}.jobs WHERE job_id = %s AND stamp = %s",
                    (job_id, validate_stamp(stamp)),
                )
            row = cur.fetchone()
        return dict(zip(JOB_COLUMNS, row, strict=True)) if row else None

    def job_runs(self, job_id: str, status: str | None = None) -> list[dict[str, Any]]:
        """Every run of one job (optionally of one status), newest stamp first."""
        validate_id(job_id, "job_id")
        where, params = ("AND status = %s", (job_id, status)) if status else ("", (job_id,))
        with self._migrated_transaction() as cur:
            cur.execute(
                f"SELECT {', '.join(JOB_COLUMNS)} FROM {SCHEMA}.jobs WHERE job_id = %s {where} ORDER BY stamp DESC",
                params,
            )
            return [dict(zip(JOB_COLUMNS, row, strict=True)) for row in cur.fetchall()]

    def dag_run_jobs(self, dag_id: str, run_id: str, statuses: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The runs of jobs that the DAG run ``run_id`` of ``dag_id`` owns (``begin_run`` records it in their
        statistics), optionally only those in ``statuses``; one indexed query, so a listener may ask it on
        every DAG run's state change."""
        where = ""
        params: list[Any] = [dag_id, run_id]
        if statuses is not None:
            where = "AND status = ANY(%s)"
            params.append(list(statuses))
        with self._migrated_transaction() as cur:
            cur.execute(
                f"SELECT {', '.join(JOB_COLUMNS)} FROM {SCHEMA}.jobs WHERE (statistics ->> 'dag_id') = %s "
                f"AND (statistics ->> 'dag_run_id') = %s {where} ORDER BY job_id, stamp",
                params,
            )
            return [dict(zip(JOB_COLUMNS, row, strict=True)) for row in cur.fetchall()]

    def list_jobs(
        self,
        status: str | None = None,
        limit: int = 100,
        *,
        dataset: str | None = None,
        latest: bool = False,
        dag_id: str | None = None,
        run_id: str | None = None,
        after: tuple[datetime, str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Most recently updated runs first (at most ``limit``, 1 to :data:`MAX_LISTED_JOBS`: a listing never
        reads the whole table), optionally of one status, one dataset, and the DAG run ``run_id`` of ``dag_id``
        that owns them (either alone too). With ``latest`` only each job's newest run counts (what the results
        API serves for a job id): a job whose newest run failed is not listed as succeeded because an older
        run was.

        Pages by keyset: ``after`` is the ``(updated_at, job_id, stamp)`` of the previous page's last row,
        and the order (``updated_at, job_id, stamp``, all descending) is the one of ``jobs_updated_idx``
        (migration 9), so a page deep in the table costs what the first does."""
        if not 1 <= limit <= MAX_LISTED_JOBS:
            raise ValueError(f"a job listing holds 1 to {MAX_LISTED_JOBS} runs, not {limit}")
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown job status {status!r}; use one of {', '.join(STATUSES)}")
        where: list[str] = []
        params: list[Any] = []
        if status:
            where.append("j.status = %s")
            params.append(status)
        if dataset is not None:
            where.append("j.dataset = %s")
            params.append(validate_id(dataset, "dataset"))
        if dag_id is not None:
            where.append("(j.statistics ->> 'dag_id') = %s")
            params.append(dag_id)
        if run_id is not None:
            where.append("(j.statistics ->> 'dag_run_id') = %s")
            params.append(run_id)
        if after is not None:
            where.append("(j.updated_at, j.job_id, j.stamp) < (%s, %s, %s)")
            params.extend(after)
        if latest:  # one probe of the primary key per candidate row
            where.append(f"NOT EXISTS (SELECT 1 FROM {SCHEMA}.jobs n WHERE n.job_id = j.job_id AND n.stamp > j.stamp)")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._migrated_transaction() as cur:
            cur.execute(
                f"SELECT {', '.join('j.' + c for c in JOB_COLUMNS)} FROM {SCHEMA}.jobs j {clause} "
                "ORDER BY j.updated_at DESC, j.job_id DESC, j.stamp DESC LIMIT %s",
                (*params, limit),
            )
            return [dict(zip(JOB_COLUMNS, row, strict=True)) for row in cur.fetchall()]

    def oldest_jobs(
        self,
        status: str,
        *,
        finished_before: datetime | None = None,
        after: tuple[datetime, str, str] | None = None,
        output_present: bool = False,
        limit: int = 500,
    ) -> list[dict[str, Any]]:
        """One page of runs of ``status``, oldest finished first (``finished_at``, else ``updated_at``),
        after the keyset ``after`` (:meth:`keyset` of the last row of the previous page): a walk that
        sees every run however many there are. ``output_present`` leaves out runs whose output was
        recorded removed (:meth:`mark_output_removed`)."""
        if status not in STATUSES:
            raise ValueError(f"unknown job status {status!r}; use one of {', '.join(STATUSES)}")
        where: list[str] = ["status = %s"]
        params: list[Any] = [status]
        if finished_before is not None:
            where.append("coalesce(finished_at, updated_at) <= %s")
            params.append(finished_before)
        if after is not None:
            where.append("(coalesce(finished_at, updated_at), job_id, stamp) > (%s, %s, %s)")
            params.extend(after)
        if output_present:
            where.append("output_removed_at IS NULL")
        with self._migrated_transaction() as cur:
            cur.execute(
                f"SELECT {', '.join(JOB_COLUMNS)} FROM {SCHEMA}.jobs WHERE {' AND '.join(where)} "
                "ORDER BY coalesce(finished_at, updated_at), job_id, stamp LIMIT %s",
                (*params, limit),
            )
            return [dict(zip(JOB_COLUMNS, row, strict=True)) for row in cur.fetchall()]

    def retention_candidates(
        self, finished_before: datetime, *, after: tuple[datetime, str, str] | None = None, limit: int = 500
    ) -> list[dict[str, Any]]:
        """One page of the runs retention looks at, oldest finished first after the keyset ``after``
        (:meth:`keyset`): archived, finished no later than ``finished_before``, output not yet recorded
        removed; each with ``superseded`` (a newer run of its job exists, so ``output/<job_id>/`` is not
        this run's any more). One query: the index of such runs, and a probe of the primary key each."""
        where = ["j.status = 'archived'", "coalesce(j.finished_at, j.updated_at) <= %s", "j.output_removed_at IS NULL"]
        params: list[Any] = [finished_before]
        if after is not None:
            where.append("(coalesce(j.finished_at, j.updated_at), j.job_id, j.stamp) > (%s, %s, %s)")
            params.extend(after)
        with self._migrated_transaction() as cur:
            cur.execute(
                f"SELECT {', '.join('j.' + c for c in JOB_COLUMNS)}, EXISTS (SELECT 1 FROM {SCHEMA}.jobs n "
                f"WHERE n.job_id = j.job_id AND n.stamp > j.stamp) FROM {SCHEMA}.jobs j WHERE {' AND '.join(where)} "
                "ORDER BY coalesce(j.finished_at, j.updated_at), j.job_id, j.stamp LIMIT %s",
                (*params, limit),
            )
            return [
                {**dict(zip(JOB_COLUMNS, row[:-1], strict=True)), "superseded": bool(row[-1])} for row in cur.fetchall()
            ]

    def latest_stamps(self, job_ids: Iterable[str]) -> dict[str, str]:
        """The newest run (stamp) of each of these jobs, in one query."""
        ids = sorted(set(job_ids))
        if not ids:
            return {}
        with self._migrated_transaction() as cur:
            cur.execute(f"SELECT job_id, max(stamp) FROM {SCHEMA}.jobs WHERE job_id = ANY(%s) GROUP BY job_id", (ids,))
            return {job_id: stamp for job_id, stamp in cur.fetchall()}

    @staticmethod
    def keyset(job: dict[str, Any]) -> tuple[datetime, str, str]:
        """Where :meth:`oldest_jobs` continues after ``job``."""
        return (job["finished_at"] or job["updated_at"], job["job_id"], job["stamp"])

    def mark_output_removed(
        self, runs: Sequence[tuple[str, str]], at: datetime, usage: UsageCounts | None = None
    ) -> int:
        """Record that these ``(job_id, stamp)`` runs no longer have output (one statement), so
        retention never looks at them again, and ``usage`` (what is left of their units) in the same
        transaction; returns how many rows changed."""
        if not runs:
            if usage:
                self.record_usage(usage)
            return 0
        with self._migrated_transaction() as cur:
            if usage:
                store_usage(cur, usage)
            cur.execute(
                f"""UPDATE {SCHEMA}.jobs AS j SET output_removed_at = %s, updated_at = now(),
                        statistics = j.statistics || jsonb_build_object('output_removed_at', %s::text)
                    FROM unnest(%s::text[], %s::text[]) AS r(job_id, stamp)
                    WHERE j.job_id = r.job_id AND j.stamp = r.stamp AND j.output_removed_at IS NULL""",
                (at, at.isoformat(timespec="seconds"), [r[0] for r in runs], [r[1] for r in runs]),
            )
            return int(cur.rowcount)

    def job_counts(self) -> dict[str, int]:
        """Number of runs per status."""
        with self._migrated_transaction() as cur:
            cur.execute(f"SELECT status, count(*) FROM {SCHEMA}.jobs GROUP BY status")
            return {status: int(count) for status, count in cur.fetchall()}

    # -----------------------------------------------------------------------------------
    # File inventories
    # -----------------------------------------------------------------------------------

    def record_files(self, job_id: str, stamp: str, files: Iterable[Sequence[Any]]) -> int:
        """Replace a run's file inventory with ``(kind, key, size, sha256)`` rows, optionally followed by
        ``role, source, level, figures`` (what a right-sized run's manifest says of each file), in one
        statement.

        Runs as a single ``INSERT ... SELECT FROM unnest(...)`` upsert (never row by row); rows of
        keys no longer listed are removed, so the inventory always equals the latest manifest.
        """
        rows = [tuple(r) + (None,) * (8 - len(r)) for r in files]
        columns = list(zip(*rows, strict=True)) if rows else [()] * 8
        kinds, keys, sizes, shas, roles, sources, levels, figures = (list(c) for c in columns)
        sizes = [int(s) for s in sizes]
        figures = [json.dumps(f) if f is not None else None for f in figures]
        with self._migrated_transaction() as cur:
            cur.execute(f"SELECT 1 FROM {SCHEMA}.jobs WHERE job_id = %s AND stamp = %s", (job_id, stamp))
            if cur.fetchone() is None:
                raise MetadataError(f"no job {job_id} run {stamp}: record the job before its files")
            cur.execute(
                f"DELETE FROM {SCHEMA}.job_files WHERE job_id = %s AND stamp = %s AND NOT key = ANY(%s)",
                (job_id, stamp, keys),
            )
            cur.execute(
                f"""INSERT INTO {SCHEMA}.job_files
                         (job_id, stamp, kind, key, size, sha256, role, source, level, figures)
                    SELECT %s, %s, k, key, s, h, r, src, l, f::jsonb
                      FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[],
                                  %s::integer[], %s::text[])
                         AS t(k, key, s, h, r, src, l, f)
                    ON CONFLICT (job_id, stamp, key)
                    DO UPDATE SET kind = EXCLUDED.kind, size = EXCLUDED.size, sha256 = EXCLUDED.sha256,
                                  role = EXCLUDED.role, source = EXCLUDED.source, level = EXCLUDED.level,
                                  figures = EXCLUDED.figures""",
                (job_id, stamp, kinds, keys, sizes, shas, roles, sources, levels, figures),
            )
        return len(rows)

    def job_files(self, job_id: str, stamp: str) -> list[dict[str, Any]]:
        """A run's inventory: kind, key, size, sha256, and role, source, level, figures (``None`` for runs
        published without right-sizing)."""
        with self._migrated_transaction() as cur:
            cur.execute(
                f"""SELECT kind, key, size, sha256, role, source, level, figures FROM {SCHEMA}.job_files
                     WHERE job_id = %s AND stamp = %s ORDER BY key""",
                (job_id, stamp),
            )
            names = ("kind", "key", "size", "sha256", "role", "source", "level", "figures")
            return [{**dict(zip(names, row, strict=True)), "size": int(row[2])} for row in cur.fetchall()]

    # -----------------------------------------------------------------------------------
    # Transfers and storage statistics
    # -----------------------------------------------------------------------------------

    def record_transfer(
        self,
        direction: str,
        bucket: str,
        *,
        prefix: str = "",
        files: int = 0,
        bytes: int = 0,
        skipped_files: int = 0,
        skipped_bytes: int = 0,
        seconds: float = 0.0,
        ok: bool = True,
        error: str | None = None,
        job_id: str | None = None,
        stamp: str | None = None,
        transfer_key: str | None = None,
    ) -> int:
        """Record one transfer; with ``transfer_key`` (e.g. dag/run/task/try) a retry updates its row."""
        with self._migrated_transaction() as cur:
            cur.execute(
                f"""INSERT INTO {SCHEMA}.transfers (transfer_key, job_id, stamp, direction, bucket, prefix, files,
                        bytes, skipped_files, skipped_bytes, seconds, ok, error)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                    ON CONFLICT (transfer_key) DO UPDATE SET files = EXCLUDED.files, bytes = EXCLUDED.bytes,
                        skipped_files = EXCLUDED.skipped_files, skipped_bytes = EXCLUDED.skipped_bytes,
                        seconds = EXCLUDED.seconds, ok = EXCLUDED.ok, error = EXCLUDED.error, created_at = now()
                    RETURNING id""",
                (
                    transfer_key,
                    job_id,
                    stamp,
                    direction,
                    bucket,
                    prefix,
                    files,
                    bytes,
                    skipped_files,
                    skipped_bytes,
                    seconds,
                    ok,
                    error,
                ),
            )
            return int(cur.fetchone()[0])

    def transfer_summary(self, since: datetime | None = None) -> dict[str, Any]:
        """Transfers per direction since ``since``: count, files, bytes, seconds, MB/s, errors."""
        with self._migrated_transaction() as cur:
            cur.execute(
                f"""SELECT direction, count(*), coalesce(sum(files), 0), coalesce(sum(bytes), 0),
                           coalesce(sum(seconds), 0), count(*) FILTER (WHERE NOT ok)
                    FROM {SCHEMA}.transfers WHERE created_at >= coalesce(%s, '-infinity'::timestamptz)
                    GROUP BY direction""",
                (since,),
            )
            out = {}
            for direction, count, files, nbytes, seconds, errors in cur.fetchall():
                out[direction] = {
                    "transfers": int(count),
                    "files": int(files),
                    "bytes": int(nbytes),
                    "seconds": float(seconds),
                    "errors": int(errors),
                    "mb_per_s": round(int(nbytes) / 1e6 / float(seconds), 2) if seconds else 0.0,
                }
            return out

    def record_telemetry(self, batch: Mapping[str, Sequence[Mapping[str, Any]]]) -> int:
        """Insert batches of telemetry rows (table -> rows; tables and columns of ``TELEMETRY_TABLES``)."""
        written = 0
        with self._migrated_transaction() as cur:
            for table, rows in batch.items():
                columns = TELEMETRY_TABLES[table]
                if not rows:
                    continue
                placeholders = ", ".join(["%s"] * len(columns))
                cur.executemany(
                    f"INSERT INTO {SCHEMA}.{table} ({', '.join(columns)}) VALUES ({placeholders})",
                    [tuple(row.get(column) for column in columns) for row in rows],
                )
                written += len(rows)
        return written

    def trim_telemetry(self, keep_days: float) -> dict[str, int]:
        """Delete telemetry rows (and transfer records, storage snapshots) older than ``keep_days``."""
        removed = {}
        with self._migrated_transaction() as cur:
            aged = [*((t, "at") for t in TELEMETRY_TABLES), ("transfers", "created_at"), ("storage_stats", "taken_at")]
            for table, column in aged:
                cur.execute(
                    f"DELETE FROM {SCHEMA}.{table} WHERE {column} < now() - make_interval(secs => %s)",
                    (keep_days * 86400,),
                )
                removed[table] = cur.rowcount
        return removed

    def dashboard_rows(self, days: float = 30.0) -> dict[str, list[tuple[Any, ...]]]:
        """The raw series behind the storage dashboard, over the last ``days`` (one query each)."""
        queries = {
            # bucket, when, objects, bytes: every snapshot the maintenance DAG took
            "space": f"""SELECT bucket, taken_at, objects, bytes FROM {SCHEMA}.storage_stats
                         WHERE prefix = '' AND taken_at >= now() - make_interval(secs => %(secs)s)
                         ORDER BY bucket, taken_at""",
            # host, when, total, used, cache: every worker's data-root disk, as its sweeps found it
            "disks": f"""SELECT host, at, total_bytes, used_bytes, cache_bytes FROM {SCHEMA}.worker_disks
                         WHERE at >= now() - make_interval(secs => %(secs)s) ORDER BY host, at""",
            # hour, direction, bytes moved, seconds busy, bytes skipped
            "throughput": f"""SELECT date_trunc('hour', created_at) AS hour, direction, sum(bytes), sum(seconds),
                                     sum(skipped_bytes)
                              FROM {SCHEMA}.transfers WHERE created_at >= now() - make_interval(secs => %(secs)s)
                              GROUP BY 1, 2 ORDER BY 1, 2""",
            # hour, operation, errors
            "errors": f"""SELECT date_trunc('hour', at), operation, count(*) FROM {SCHEMA}.storage_errors
                          WHERE at >= now() - make_interval(secs => %(secs)s) GROUP BY 1, 2 ORDER BY 1, 2""",
            # job, downloads (URLs handed out)
            "top_jobs": f"""SELECT job_id, count(*) FROM {SCHEMA}.access_log
                            WHERE action = 'download' AND job_id IS NOT NULL
                              AND at >= now() - make_interval(secs => %(secs)s)
                            GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10""",
            # dataset, downloads of its jobs' results
            "top_datasets": f"""SELECT j.dataset, count(*) FROM {SCHEMA}.access_log a
                                JOIN (SELECT DISTINCT job_id, dataset FROM {SCHEMA}.jobs) j USING (job_id)
                                WHERE a.action = 'download' AND a.at >= now() - make_interval(secs => %(secs)s)
                                GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10""",
            # hour of the day (UTC), requests (URLs and upload grants)
            "by_hour": f"""SELECT extract(hour FROM at AT TIME ZONE 'UTC')::int, count(*) FROM {SCHEMA}.access_log
                           WHERE at >= now() - make_interval(secs => %(secs)s) GROUP BY 1 ORDER BY 1""",
            # status, jobs, mean and longest seconds from start to finish
            "jobs": f"""SELECT status, count(*),
                               avg(extract(epoch FROM finished_at - started_at)),
                               max(extract(epoch FROM finished_at - started_at))
                        FROM {SCHEMA}.jobs GROUP BY 1 ORDER BY 1""",
        }
        with self._migrated_transaction() as cur:
            out = {}
            for name, sql in queries.items():
                cur.execute(sql, {"secs": days * 86400})
                out[name] = cur.fetchall()
            return out

    def task_transfers(self, key_prefix: str) -> tuple[int, int, float]:
        """Files, bytes and seconds of the transfers whose key starts with ``key_prefix`` (one task's:
        ``<dag_id>/<run_id>/<task_id>``)."""
        with self._migrated_transaction() as cur:
            cur.execute(
                f"""SELECT coalesce(sum(files), 0), coalesce(sum(bytes), 0), coalesce(sum(seconds), 0)
                    FROM {SCHEMA}.transfers WHERE transfer_key = %s
                      OR starts_with(transfer_key, %s || '/') OR starts_with(transfer_key, %s || ':')""",
                (key_prefix,) * 3,
            )
            files, nbytes, seconds = cur.fetchone()
            return int(files), int(nbytes), float(seconds)

    def record_storage_stats(self, stats: Sequence[dict[str, Any]]) -> int:
        """Bulk-insert ``{bucket, prefix, objects, bytes}`` snapshots taken now (with ``versions``,
        ``stored_bytes`` and ``delete_markers`` where the snapshot has them)."""

        def optional(key: str) -> list[int | None]:
            return [None if s.get(key) is None else int(s[key]) for s in stats]

        with self._migrated_transaction() as cur:
            cur.execute(
                f"""INSERT INTO {SCHEMA}.storage_stats
                        (bucket, prefix, objects, bytes, versions, stored_bytes, delete_markers)
                    SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[],
                                         %s::bigint[], %s::bigint[])""",
                (
                    [s["bucket"] for s in stats],
                    [s.get("prefix", "") for s in stats],
                    [int(s["objects"]) for s in stats],
                    [int(s["bytes"]) for s in stats],
                    optional("versions"),
                    optional("stored_bytes"),
                    optional("delete_markers"),
                ),
            )
        return len(stats)

    def latest_storage_stats(self) -> list[dict[str, Any]]:
        """The most recent snapshot per bucket and prefix."""
        with self._migrated_transaction() as cur:
            cur.execute(f"""SELECT DISTINCT ON (bucket, prefix) bucket, prefix, objects, bytes, versions,
                                   stored_bytes, delete_markers, taken_at
                            FROM {SCHEMA}.storage_stats ORDER BY bucket, prefix, taken_at DESC""")
            return [
                {
                    "bucket": b,
                    "prefix": p,
                    "objects": int(o),
                    "bytes": int(n),
                    "versions": v,
                    "stored_bytes": sb,
                    "noncurrent_bytes": None if sb is None else int(sb) - int(n),
                    "delete_markers": dm,
                    "taken_at": t,
                }
                for b, p, o, n, v, sb, dm, t in cur.fetchall()
            ]

    # -----------------------------------------------------------------------------------
    # Usage: what the buckets hold, kept as the provider writes (core.usage)
    # -----------------------------------------------------------------------------------

    def record_usage(self, counts: UsageCounts, *, conn: Any = None) -> int:
        """Store units' totals (a writer's fresh count of what it changed) in one transaction; returns
        how many units were stored. A unit counted earlier than its stored figure is left alone. ``conn``:
        an autocommit connection this hook opened and still holds (a job lock's), used instead of a new one."""
        if not counts:
            return 0
        if conn is None:
            with self._migrated_transaction() as cur:
                return store_usage(cur, counts)
        if not self._migrated:  # asked on the connection at hand; migrated on one of its own only if behind
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.schema_migrations",))
                if cur.fetchone()[0] is not None:
                    cur.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA}.schema_migrations")
                    self._migrated = int(cur.fetchone()[0]) >= SCHEMA_VERSION
            if not self._migrated:
                self.migrate()
        with conn.cursor() as cur:
            if conn.autocommit and len({any(row[2:]) for row in counts.rows()}) == 1:  # one statement: atomic
                return store_usage(cur, counts)
            cur.execute("BEGIN")
            try:
                stored = store_usage(cur, counts)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
            return stored

    def bucket_usage(self) -> list[dict[str, Any]]:
        """Per bucket: the kept totals (``objects``, ``bytes``, ``versions``, ``stored_bytes``,
        ``noncurrent_bytes``, ``delete_markers``, ``units``, ``updated_at``) and the last reconciliation
        (``reconciled_at``, its ``method`` and the drift it corrected), bucket order."""
        with self._migrated_transaction() as cur:
            cur.execute(
                f"""SELECT b.bucket, b.objects, b.bytes, b.versions, b.stored_bytes, b.delete_markers, b.units,
                           b.updated_at, r.finished_at, r.method, r.complete, r.drift_units, r.drift_objects,
                           r.drift_bytes
                    FROM {SCHEMA}.bucket_usage b
                    LEFT JOIN LATERAL (
                        SELECT * FROM {SCHEMA}.reconciliations r WHERE r.bucket = b.bucket AND r.complete
                        ORDER BY r.finished_at DESC LIMIT 1) r ON true
                    ORDER BY b.bucket"""
            )
            return [
                {
                    "bucket": row[0],
                    **dict(zip(COUNT_FIELDS, (int(v) for v in row[1:6]), strict=True)),
                    "noncurrent_bytes": int(row[4]) - int(row[2]),
                    "units": int(row[6]),
                    "updated_at": row[7],
                    "reconciled_at": row[8],
                    "reconciled_by": row[9],
                    "drift": None
                    if row[8] is None
                    else {"units": int(row[11]), "objects": int(row[12]), "bytes": int(row[13])},
                }
                for row in cur.fetchall()
            ]

    def usage_rows(
        self, bucket: str, first: str | None = None, stop: str | None = None, *, units: Sequence[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """The stored units of ``bucket`` in ``[first, stop)`` (or exactly ``units``): unit -> totals with
        ``counted_at``."""
        where: list[str] = ["bucket = %s"]
        params: list[Any] = [bucket]
        if units is not None:
            where.append("unit = ANY(%s)")
            params.append(list(units))
        if first is not None:
            where.append("unit >= %s")
            params.append(first)
        if stop is not None:
            where.append("unit < %s")
            params.append(stop)
        with self._migrated_transaction() as cur:
            cur.execute(
                f"SELECT unit, {', '.join(COUNT_FIELDS)}, counted_at FROM {SCHEMA}.usage "
                f"WHERE {' AND '.join(where)} ORDER BY unit",
                params,
            )
            return {
                row[0]: {**dict(zip(COUNT_FIELDS, (int(v) for v in row[1:6]), strict=True)), "counted_at": row[6]}
                for row in cur.fetchall()
            }

    def record_reconciliation(
        self,
        bucket: str,
        method: str,
        started_at: datetime,
        *,
        complete: bool,
        units_checked: int = 0,
        drift_units: int = 0,
        drift_objects: int = 0,
        drift_bytes: int = 0,
        detail: Mapping[str, Any] | None = None,
        corrections: UsageCounts | Sequence[UsageCounts] | None = None,
        cursors: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Record one reconciliation of ``bucket`` (``usage-api`` or ``listing``) and store its
        ``corrections`` in the same transaction (each guarded like any count: a unit a writer counted
        after the reconciliation looked at it keeps the writer's figure; several groups when parts were
        listed at different instants). With ``cursors`` the bucket's
        walk positions are replaced by these (``range_first``, ``range_stop``, ``position``,
        ``walk_started``; an empty list ends the walk) in that transaction too, so a resumed walk starts
        exactly after what was stored."""
        groups = [corrections] if isinstance(corrections, UsageCounts) else list(corrections or ())
        with self._migrated_transaction() as cur:
            for group in groups:
                if group:
                    store_usage(cur, group)
            if cursors is not None:
                cur.execute(f"DELETE FROM {SCHEMA}.reconcile_cursors WHERE bucket = %s", (bucket,))
                for c in cursors:
                    cur.execute(
                        f"""INSERT INTO {SCHEMA}.reconcile_cursors (bucket, range_first, range_stop, position,
                                walk_started) VALUES (%s, %s, %s, %s, %s)""",
                        (bucket, c["range_first"], c["range_stop"], c["position"], c["walk_started"]),
                    )
            cur.execute(
                f"""INSERT INTO {SCHEMA}.reconciliations (bucket, method, started_at, complete, units_checked,
                        drift_units, drift_objects, drift_bytes, detail)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)""",
                (
                    bucket,
                    method,
                    started_at,
                    complete,
                    units_checked,
                    drift_units,
                    drift_objects,
                    drift_bytes,
                    json.dumps(dict(detail or {}), default=str),
                ),
            )

    def reconcile_cursors(self, bucket: str) -> list[dict[str, Any]]:
        """Where an unfinished listing reconciliation of ``bucket`` stands: one row per key range
        (``range_first`` ("" for the bucket's start), ``range_stop`` (None: its end), ``position``
        (the unit to resume at; None: the range is done) and ``walk_started``), range order; empty when
        no walk is under way."""
        columns = ("range_first", "range_stop", "position", "walk_started")
        with self._migrated_transaction() as cur:
            cur.execute(
                f"SELECT {', '.join(columns)} FROM {SCHEMA}.reconcile_cursors WHERE bucket = %s ORDER BY range_first",
                (bucket,),
            )
            return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]

    def reconciliations(self, bucket: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The latest reconciliations (of ``bucket``), newest first."""
        columns = ("id", "bucket", "method", "started_at", "finished_at", "complete", "units_checked",
                   "drift_units", "drift_objects", "drift_bytes", "detail")  # fmt: skip
        where, params = ("WHERE bucket = %s", [bucket]) if bucket else ("", [])
        with self._migrated_transaction() as cur:
            cur.execute(
                f"SELECT {', '.join(columns)} FROM {SCHEMA}.reconciliations {where} ORDER BY id DESC LIMIT %s",
                [*params, limit],
            )
            return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]

    # -----------------------------------------------------------------------------------
    # Housekeeping
    # -----------------------------------------------------------------------------------

    def jobs_with_output(self, job_ids: Iterable[str]) -> set[str]:
        """Those of these jobs whose latest run should have results in ``output``: succeeded, damaged, or
        archived and not retired by retention (a missing SUCCESS there is the scrub's to judge)."""
        ids = sorted(set(job_ids))
        if not ids:
            return set()
        with self._migrated_transaction() as cur:
            cur.execute(
                f"SELECT DISTINCT ON (job_id) job_id, status, output_removed_at FROM {SCHEMA}.jobs "
                "WHERE job_id = ANY(%s) ORDER BY job_id, stamp DESC",
                (ids,),
            )
            return {
                job_id
                for job_id, status, removed in cur.fetchall()
                if status in ("succeeded", "damaged") or (status == "archived" and removed is None)
            }

    def active_runs(self, job_ids: Iterable[str]) -> set[tuple[str, str]]:
        """The ``(job_id, stamp)`` runs of these jobs that are queued or running, in one query."""
        ids = sorted(set(job_ids))
        if not ids:
            return set()
        with self._migrated_transaction() as cur:
            cur.execute(
                f"SELECT job_id, stamp FROM {SCHEMA}.jobs WHERE job_id = ANY(%s) AND status IN ('queued', 'running')",
                (ids,),
            )
            return {(job_id, stamp) for job_id, stamp in cur.fetchall()}

    def table_health(self) -> dict[str, dict[str, int]]:
        """Each table of the schema: ``live_rows`` and ``dead_rows`` (PostgreSQL's statistics, which lag
        the writes that change them by up to a second) and ``bytes`` (its total size, indexes included)."""
        with self._migrated_transaction() as cur:
            cur.execute(
                "SELECT relname, n_live_tup, n_dead_tup, pg_total_relation_size(relid) FROM pg_stat_user_tables "
                "WHERE schemaname = %s",
                (SCHEMA,),
            )
            return {
                name: {"live_rows": int(live), "dead_rows": int(dead), "bytes": int(size)}
                for name, live, dead, size in cur.fetchall()
            }

    def vacuum_tables(self, tables: Sequence[str]) -> None:
        """``VACUUM (ANALYZE)`` each of these tables of the schema, on a connection of its own in autocommit
        (VACUUM cannot run inside a transaction)."""
        known = set(self.table_health())
        unknown = sorted(set(tables) - known)
        if unknown:
            raise ValueError(f"no table {unknown[0]!r} in schema {SCHEMA}")
        conn = self._connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                for table in tables:
                    quoted = table.replace('"', '""')
                    cur.execute(f'VACUUM (ANALYZE) {SCHEMA}."{quoted}"')
        finally:
            conn.close()

    # -----------------------------------------------------------------------------------
    # Configuration
    # -----------------------------------------------------------------------------------

    def set_config(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON) under the platform key ``key`` (upsert), once it is checked against the key's
        declaration (``e2e3d_provider.core.settings.PLATFORM_KEYS``): an unknown key or a value of the wrong
        type or out of bounds is a ValueError saying which, and nothing is written (a typo or a negative
        retention would otherwise be stored and misread by every maintenance run)."""
        checked = validate_platform(key, value)
        with self._migrated_transaction() as cur:
            cur.execute(
                f"""INSERT INTO {SCHEMA}.config (key, value) VALUES (%s, %s::jsonb)
                            ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()""",
                (key, json.dumps(checked)),
            )

    def get_config(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key``, else ``default``."""
        with self._migrated_transaction() as cur:
            cur.execute(f"SELECT value::text FROM {SCHEMA}.config WHERE key = %s", (key,))
            row = cur.fetchone()
        return json.loads(row[0]) if row else default

    def delete_config(self, key: str) -> bool:
        """Remove the row of ``key``, so its readers fall back to the declared default; True if there was one."""
        with self._migrated_transaction() as cur:
            cur.execute(f"DELETE FROM {SCHEMA}.config WHERE key = %s", (key,))
            return bool(cur.rowcount)

    def list_config(self) -> dict[str, tuple[Any, datetime]]:
        """Every stored row: key -> (its JSON value, when it was last set). Declared keys not stored are absent
        (they read as their default); a stored key no longer declared is listed too, so it can be seen."""
        with self._migrated_transaction() as cur:
            cur.execute(f"SELECT key, value::text, updated_at FROM {SCHEMA}.config ORDER BY key")
            return {key: (json.loads(value), updated_at) for key, value, updated_at in cur.fetchall()}


def store_usage(cur: Any, counts: UsageCounts) -> int:
    """Store ``counts`` on the cursor ``cur`` (inside the caller's transaction): units with anything in them
    are upserted, empty ones deleted, each only over a figure counted no later than ``counts``; the
    ``bucket_usage`` sums follow by trigger. Returns how many units were given."""
    rows = counts.rows()
    full = [r for r in rows if any(r[2:])]
    empty = [r for r in rows if not any(r[2:])]
    if full:
        columns = list(zip(*full, strict=True))
        cur.execute(
            f"""INSERT INTO {SCHEMA}.usage AS u (bucket, unit, {", ".join(COUNT_FIELDS)}, counted_at)
                SELECT r.*, %s FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[],
                                        %s::bigint[], %s::bigint[]) AS r
                ON CONFLICT (bucket, unit) DO UPDATE SET
                    {", ".join(f"{name} = EXCLUDED.{name}" for name in COUNT_FIELDS)}, counted_at = EXCLUDED.counted_at
                WHERE u.counted_at <= EXCLUDED.counted_at""",
            (counts.counted_at, *(list(c) for c in columns)),
        )
    if empty:
        cur.execute(
            f"""DELETE FROM {SCHEMA}.usage u USING unnest(%s::text[], %s::text[]) AS r(bucket, unit)
                WHERE u.bucket = r.bucket AND u.unit = r.unit AND u.counted_at <= %s""",
            ([r[0] for r in empty], [r[1] for r in empty], counts.counted_at),
        )
    return len(rows)
