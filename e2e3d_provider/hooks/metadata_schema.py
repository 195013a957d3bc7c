"""The metadata schema (DESIGN §6): tables, the job state machine, and versioned migrations.

Migrations are applied in order by :meth:`MetadataHook.migrate`; each is idempotent DDL, and a new
one is appended, never edited.
"""

from __future__ import annotations

SCHEMA = "e2e3d"
#: Advisory-lock key serialising migrations between concurrent workers ("e2e3d" as an int).
MIGRATION_LOCK = 0x6532653364

#: the statuses of migration 1 (kept as they were: a migration is never edited)
_STATUSES_V1 = ("queued", "running", "succeeded", "failed", "archived")
#: ``damaged``: a scrub found a published result that no version, archive copy or backup could repair;
#: its SUCCESS marker is gone, so no reader trusts it (migration 6)
STATUSES = (*_STATUSES_V1, "damaged")
#: status -> statuses it may move to. Repeating a status is allowed so retries are idempotent;
#: a failed job may run again; only a succeeded job may be archived; a published result (succeeded or
#: archived) may be found damaged, and a damaged one may run again or, once whole again (restored),
#: go back to what it was.
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"queued", "running", "failed"}),
    "running": frozenset({"running", "succeeded", "failed"}),
    "failed": frozenset({"failed", "running"}),
    "succeeded": frozenset({"succeeded", "archived", "damaged"}),
    "archived": frozenset({"archived", "damaged"}),
    "damaged": frozenset({"damaged", "running", "succeeded", "archived"}),
}

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "initial schema",
        f"""
        CREATE TABLE IF NOT EXISTS {SCHEMA}.jobs (
            job_id        text        NOT NULL,
            stamp         text        NOT NULL,
            dataset       text        NOT NULL,
            status        text        NOT NULL CHECK (status IN ({", ".join(f"'{s}'" for s in _STATUSES_V1)})),
            created_at    timestamptz NOT NULL DEFAULT now(),
            updated_at    timestamptz NOT NULL DEFAULT now(),
            started_at    timestamptz,
            finished_at   timestamptz,
            error         text,
            result_bucket text,
            result_prefix text,
            manifest_key  text,
            archive_key   text,
            files         integer,
            bytes         bigint,
            statistics    jsonb       NOT NULL DEFAULT '{{}}'::jsonb,
            PRIMARY KEY (job_id, stamp)
        );
        CREATE INDEX IF NOT EXISTS jobs_status_idx ON {SCHEMA}.jobs (status, updated_at);
        CREATE TABLE IF NOT EXISTS {SCHEMA}.job_files (
            job_id  text    NOT NULL,
            stamp   text    NOT NULL,
            kind    text    NOT NULL,
            key     text    NOT NULL,
            size    bigint  NOT NULL CHECK (size >= 0),
            sha256  char(64) NOT NULL,
            PRIMARY KEY (job_id, stamp, key),
            FOREIGN KEY (job_id, stamp) REFERENCES {SCHEMA}.jobs (job_id, stamp) ON DELETE CASCADE
        );
        CREATE TABLE IF NOT EXISTS {SCHEMA}.transfers (
            id            bigserial   PRIMARY KEY,
            transfer_key  text        UNIQUE,
            job_id        text,
            stamp         text,
            direction     text        NOT NULL CHECK (direction IN ('upload', 'download', 'copy')),
            bucket        text        NOT NULL,
            prefix        text        NOT NULL DEFAULT '',
            files         integer     NOT NULL DEFAULT 0,
            bytes         bigint      NOT NULL DEFAULT 0,
            skipped_files integer     NOT NULL DEFAULT 0,
            seconds       double precision NOT NULL DEFAULT 0,
            ok            boolean     NOT NULL DEFAULT true,
            error         text,
            created_at    timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX IF NOT EXISTS transfers_created_idx ON {SCHEMA}.transfers (created_at);
        CREATE TABLE IF NOT EXISTS {SCHEMA}.storage_stats (
            id       bigserial   PRIMARY KEY,
            bucket   text        NOT NULL,
            prefix   text        NOT NULL DEFAULT '',
            objects  bigint      NOT NULL,
            bytes    bigint      NOT NULL,
            taken_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX IF NOT EXISTS storage_stats_taken_idx ON {SCHEMA}.storage_stats (bucket, taken_at);
        CREATE TABLE IF NOT EXISTS {SCHEMA}.config (
            key        text        PRIMARY KEY,
            value      jsonb       NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        );
    """,
    ),
]
MIGRATIONS.append(
    (
        2,
        "storage stats count every stored version",
        f"""
        ALTER TABLE {SCHEMA}.storage_stats ADD COLUMN IF NOT EXISTS versions bigint;
        ALTER TABLE {SCHEMA}.storage_stats ADD COLUMN IF NOT EXISTS stored_bytes bigint;
        ALTER TABLE {SCHEMA}.storage_stats ADD COLUMN IF NOT EXISTS delete_markers bigint;
    """,
    )
)
MIGRATIONS.append(
    (
        3,
        "maintenance walks jobs oldest first; removed outputs are recorded",
        f"""
        ALTER TABLE {SCHEMA}.jobs ADD COLUMN IF NOT EXISTS output_removed_at timestamptz;
        CREATE INDEX IF NOT EXISTS jobs_retention_idx
            ON {SCHEMA}.jobs ((coalesce(finished_at, updated_at)), job_id, stamp)
            WHERE status = 'archived' AND output_removed_at IS NULL;
        CREATE INDEX IF NOT EXISTS jobs_archive_idx
            ON {SCHEMA}.jobs ((coalesce(finished_at, updated_at)), job_id, stamp)
            WHERE status = 'succeeded';
    """,
    )
)
MIGRATIONS.append(
    (
        4,
        "file inventories say what each file is: role, the original a variant derives from, level, figures",
        f"""
        ALTER TABLE {SCHEMA}.job_files ADD COLUMN IF NOT EXISTS role text;
        ALTER TABLE {SCHEMA}.job_files ADD COLUMN IF NOT EXISTS source text;
        ALTER TABLE {SCHEMA}.job_files ADD COLUMN IF NOT EXISTS level integer;
        ALTER TABLE {SCHEMA}.job_files ADD COLUMN IF NOT EXISTS figures jsonb;
    """,
    )
)
MIGRATIONS.append(
    (
        5,
        "telemetry: bytes skipped per transfer, the API's access log, storage errors, worker disks",
        f"""
        ALTER TABLE {SCHEMA}.transfers ADD COLUMN IF NOT EXISTS skipped_bytes bigint NOT NULL DEFAULT 0;
        CREATE TABLE IF NOT EXISTS {SCHEMA}.access_log (
            id       bigserial   PRIMARY KEY,
            at       timestamptz NOT NULL DEFAULT now(),
            actor    text,
            action   text        NOT NULL CHECK (action IN ('download', 'upload')),
            job_id   text,
            dataset  text,
            bucket   text        NOT NULL,
            key      text        NOT NULL,
            variant  text
        );
        CREATE INDEX IF NOT EXISTS access_log_at_idx ON {SCHEMA}.access_log (at);
        CREATE TABLE IF NOT EXISTS {SCHEMA}.storage_errors (
            id          bigserial   PRIMARY KEY,
            at          timestamptz NOT NULL DEFAULT now(),
            operation   text        NOT NULL,
            bucket      text,
            error_class text        NOT NULL,
            host        text
        );
        CREATE INDEX IF NOT EXISTS storage_errors_at_idx ON {SCHEMA}.storage_errors (at);
        CREATE TABLE IF NOT EXISTS {SCHEMA}.worker_disks (
            id          bigserial   PRIMARY KEY,
            at          timestamptz NOT NULL DEFAULT now(),
            host        text        NOT NULL,
            data_root   text        NOT NULL,
            total_bytes bigint      NOT NULL,
            used_bytes  bigint      NOT NULL,
            cache_bytes bigint      NOT NULL DEFAULT 0
        );
        CREATE INDEX IF NOT EXISTS worker_disks_idx ON {SCHEMA}.worker_disks (host, at);
    """,
    )
)
MIGRATIONS.append(
    (
        6,
        "durability: the damaged status, backups and scrub findings",
        f"""
        ALTER TABLE {SCHEMA}.jobs DROP CONSTRAINT IF EXISTS jobs_status_check;
        ALTER TABLE {SCHEMA}.jobs ADD CONSTRAINT jobs_status_check
            CHECK (status IN ({", ".join(f"'{s}'" for s in STATUSES)}));
        CREATE TABLE IF NOT EXISTS {SCHEMA}.backups (
            backup_id     text        PRIMARY KEY,
            target        text        NOT NULL,
            status        text        NOT NULL CHECK (status IN ('running', 'complete', 'failed')),
            started_at    timestamptz NOT NULL DEFAULT now(),
            finished_at   timestamptz,
            covers_until  timestamptz,
            objects       bigint      NOT NULL DEFAULT 0,
            bytes         bigint      NOT NULL DEFAULT 0,
            sent_objects  bigint      NOT NULL DEFAULT 0,
            sent_bytes    bigint      NOT NULL DEFAULT 0,
            seconds       double precision,
            error         text
        );
        CREATE TABLE IF NOT EXISTS {SCHEMA}.scrub_findings (
            id            bigserial   PRIMARY KEY,
            at            timestamptz NOT NULL DEFAULT now(),
            job_id        text,
            stamp         text,
            bucket        text        NOT NULL,
            key           text        NOT NULL,
            problem       text        NOT NULL CHECK (problem IN ('missing', 'mismatch')),
            repaired_from text        CHECK (repaired_from IN ('version', 'archive', 'backup')),
            detail        text
        );
        CREATE INDEX IF NOT EXISTS scrub_findings_at_idx ON {SCHEMA}.scrub_findings (at);
    """,
    )
)
MIGRATIONS.append(
    (
        7,
        "jobs are found by the DAG run that owns them (a listener follows every DAG run's state)",
        f"""
        CREATE INDEX IF NOT EXISTS jobs_dag_run_idx
            ON {SCHEMA}.jobs ((statistics ->> 'dag_id'), (statistics ->> 'dag_run_id'));
    """,
    )
)
_USAGE_SUMS = "sum(objects), sum(bytes), sum(versions), sum(stored_bytes), sum(delete_markers)"
MIGRATIONS.append(
    (
        8,
        "storage usage kept as the provider writes: per unit, per bucket by trigger, and reconciliations",
        f"""
        CREATE TABLE IF NOT EXISTS {SCHEMA}.usage (
            bucket         text        NOT NULL,
            unit           text        NOT NULL,
            objects        bigint      NOT NULL DEFAULT 0,
            bytes          bigint      NOT NULL DEFAULT 0,
            versions       bigint      NOT NULL DEFAULT 0,
            stored_bytes   bigint      NOT NULL DEFAULT 0,
            delete_markers bigint      NOT NULL DEFAULT 0,
            counted_at     timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (bucket, unit)
        );
        CREATE TABLE IF NOT EXISTS {SCHEMA}.bucket_usage (
            bucket         text        PRIMARY KEY,
            objects        bigint      NOT NULL DEFAULT 0,
            bytes          bigint      NOT NULL DEFAULT 0,
            versions       bigint      NOT NULL DEFAULT 0,
            stored_bytes   bigint      NOT NULL DEFAULT 0,
            delete_markers bigint      NOT NULL DEFAULT 0,
            units          bigint      NOT NULL DEFAULT 0,
            updated_at     timestamptz NOT NULL DEFAULT now()
        );
        CREATE OR REPLACE FUNCTION {SCHEMA}.usage_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP IN ('INSERT', 'UPDATE') THEN
                INSERT INTO {SCHEMA}.bucket_usage AS b
                    (bucket, objects, bytes, versions, stored_bytes, delete_markers, units, updated_at)
                SELECT bucket, {_USAGE_SUMS}, CASE WHEN TG_OP = 'INSERT' THEN count(*) ELSE 0 END, now()
                FROM new_rows GROUP BY bucket ORDER BY bucket
                ON CONFLICT (bucket) DO UPDATE SET
                    objects = b.objects + EXCLUDED.objects, bytes = b.bytes + EXCLUDED.bytes,
                    versions = b.versions + EXCLUDED.versions, stored_bytes = b.stored_bytes + EXCLUDED.stored_bytes,
                    delete_markers = b.delete_markers + EXCLUDED.delete_markers, units = b.units + EXCLUDED.units,
                    updated_at = now();
            END IF;
            IF TG_OP IN ('DELETE', 'UPDATE') THEN
                INSERT INTO {SCHEMA}.bucket_usage AS b
                    (bucket, objects, bytes, versions, stored_bytes, delete_markers, units, updated_at)
                SELECT bucket, {_USAGE_SUMS}, CASE WHEN TG_OP = 'DELETE' THEN count(*) ELSE 0 END, now()
                FROM old_rows GROUP BY bucket ORDER BY bucket
                ON CONFLICT (bucket) DO UPDATE SET
                    objects = b.objects - EXCLUDED.objects, bytes = b.bytes - EXCLUDED.bytes,
                    versions = b.versions - EXCLUDED.versions, stored_bytes = b.stored_bytes - EXCLUDED.stored_bytes,
                    delete_markers = b.delete_markers - EXCLUDED.delete_markers, units = b.units - EXCLUDED.units,
                    updated_at = now();
            END IF;
            RETURN NULL;
        END $$;
        DROP TRIGGER IF EXISTS usage_rollup_insert ON {SCHEMA}.usage;
        DROP TRIGGER IF EXISTS usage_rollup_update ON {SCHEMA}.usage;
        DROP TRIGGER IF EXISTS usage_rollup_delete ON {SCHEMA}.usage;
        CREATE TRIGGER usage_rollup_insert AFTER INSERT ON {SCHEMA}.usage
            REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.usage_rollup();
        CREATE TRIGGER usage_rollup_update AFTER UPDATE ON {SCHEMA}.usage
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.usage_rollup();
        CREATE TRIGGER usage_rollup_delete AFTER DELETE ON {SCHEMA}.usage
            REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.usage_rollup();
        CREATE TABLE IF NOT EXISTS {SCHEMA}.reconciliations (
            id             bigserial   PRIMARY KEY,
            bucket         text        NOT NULL,
            method         text        NOT NULL CHECK (method IN ('usage-api', 'listing')),
            started_at     timestamptz NOT NULL,
            finished_at    timestamptz NOT NULL DEFAULT now(),
            complete       boolean     NOT NULL,
            units_checked  bigint      NOT NULL DEFAULT 0,
            drift_units    bigint      NOT NULL DEFAULT 0,
            drift_objects  bigint      NOT NULL DEFAULT 0,
            drift_bytes    bigint      NOT NULL DEFAULT 0,
            detail         jsonb       NOT NULL DEFAULT '{{}}'::jsonb
        );
        CREATE INDEX IF NOT EXISTS reconciliations_idx ON {SCHEMA}.reconciliations (bucket, finished_at);
        CREATE TABLE IF NOT EXISTS {SCHEMA}.reconcile_cursors (
            bucket       text        NOT NULL,
            range_first  text        NOT NULL,
            range_stop   text,
            position     text,
            walk_started timestamptz NOT NULL,
            PRIMARY KEY (bucket, range_first)
        );
    """,
    )
)
MIGRATIONS.append(
    (
        9,
        "jobs are listed page by page, newest first (the results API's GET /jobs keyset)",
        f"""
        CREATE INDEX IF NOT EXISTS jobs_updated_idx ON {SCHEMA}.jobs (updated_at DESC, job_id DESC, stamp DESC);
    """,
    )
)
#: telemetry tables and the columns a batch of rows may fill (the maintenance DAG trims them by ``at``)
TELEMETRY_TABLES = {
    "access_log": ("at", "actor", "action", "job_id", "dataset", "bucket", "key", "variant"),
    "storage_errors": ("at", "operation", "bucket", "error_class", "host"),
    "worker_disks": ("at", "host", "data_root", "total_bytes", "used_bytes", "cache_bytes"),
}
SCHEMA_VERSION = MIGRATIONS[-1][0]

#: how ``e2e3d restore`` merges a backed-up table into a live one: rows are the same row when these
#: columns match (jobs before job_files, which refers to them); a live row that differs is a conflict
RESTORE_KEYS: dict[str, tuple[str, ...]] = {
    "jobs": ("job_id", "stamp"),
    "job_files": ("job_id", "stamp", "key"),
    "config": ("key",),
    "backups": ("backup_id",),
}
#: append-only logs: a row is the same row whatever its id; absent rows come back under new ids
RESTORE_APPEND = ("transfers", "storage_stats", "access_log", "storage_errors", "worker_disks", "scrub_findings")
#: not backed up: ``usage`` and ``bucket_usage`` are what the server holds now (a restore recounts what it
#: writes and a reconciliation the rest), ``reconciliations`` and ``reconcile_cursors`` their bookkeeping

JOB_COLUMNS = (
    "job_id",
    "stamp",
    "dataset",
    "status",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "error",
    "result_bucket",
    "result_prefix",
    "manifest_key",
    "archive_key",
    "files",
    "bytes",
    "statistics",
    "output_removed_at",
)
