"""MetadataHook against the session's real PostgreSQL."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import pytest

from e2e3d_provider.core.layout import InvalidNameError
from e2e3d_provider.devstack.stack import free_ports
from e2e3d_provider.exceptions import InvalidTransitionError, MetadataError
from e2e3d_provider.hooks.metadata import MAX_LISTED_JOBS, SCHEMA, SCHEMA_VERSION, MetadataHook
from e2e3d_provider.hooks.metadata_schema import MIGRATIONS

STAMP = "20261124T120000Z"


def _dsn(connections: dict) -> dict:
    c = connections["e2e3d_metadata"]
    return {"host": c["host"], "port": c["port"], "user": c["login"], "password": c["password"], "dbname": c["schema"]}


@contextmanager
def scratch_database(connections: dict, conn_id: str) -> Iterator[None]:
    """A new, empty database on the session's PostgreSQL behind connection ``conn_id``, dropped after."""
    scratch = f"{conn_id}_{threading.get_ident() % 100000}"
    admin = psycopg2.connect(**_dsn(connections))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {scratch}")
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(dict(connections["e2e3d_metadata"], schema=scratch))
    try:
        yield
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE {scratch} WITH (FORCE)")
        admin.close()


def test_migrations_are_idempotent_versioned_and_safe_concurrently(connections: dict) -> None:
    with scratch_database(connections, "e2e3d_scratch"):
        fresh = MetadataHook("e2e3d_scratch")
        assert fresh.schema_version() == 0
        errors: list[BaseException] = []

        def migrate() -> None:
            try:
                MetadataHook("e2e3d_scratch").migrate()
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=migrate) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert fresh.schema_version() == SCHEMA_VERSION
        assert fresh.migrate() == SCHEMA_VERSION
        with fresh.transaction() as cur:
            cur.execute(f"SELECT count(*) FROM {SCHEMA}.schema_migrations")
            assert cur.fetchone()[0] == SCHEMA_VERSION
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (SCHEMA,))
            assert {r[0] for r in cur.fetchall()} == {
                "schema_migrations",
                "jobs",
                "job_files",
                "transfers",
                "storage_stats",
                "config",
                "access_log",
                "storage_errors",
                "worker_disks",
                "backups",
                "scrub_findings",
                "usage",
                "bucket_usage",
                "reconciliations",
                "reconcile_cursors",
            }


def test_a_version_5_database_learns_the_damaged_status(connections: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import e2e3d_provider.hooks.metadata as metadata_module

    with scratch_database(connections, "e2e3d_mig5"):
        with monkeypatch.context() as patch:
            patch.setattr(metadata_module, "MIGRATIONS", MIGRATIONS[:5])
            old = MetadataHook("e2e3d_mig5")
            old.migrate()
            old.record_job("j1", STAMP, "ds", "running")
            old.record_job("j1", STAMP, "ds", "succeeded")
            with pytest.raises(Exception, match="jobs_status_check"), old.transaction() as cur:
                cur.execute(f"UPDATE {SCHEMA}.jobs SET status = 'damaged'")  # version 5 does not know it
        hook = MetadataHook("e2e3d_mig5")
        assert hook.migrate() == SCHEMA_VERSION
        assert hook.record_job("j1", STAMP, "ds", "damaged", error="scrub")["status"] == "damaged"
        with pytest.raises(Exception, match="jobs_status_check"), hook.transaction() as cur:
            cur.execute(f"UPDATE {SCHEMA}.jobs SET status = 'lost'")
        assert hook.backups() == [] and hook.scrub_findings() == []


def test_a_version_3_inventory_migrates_to_roles_and_keeps_its_rows(
    connections: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import e2e3d_provider.hooks.metadata as metadata_module

    with scratch_database(connections, "e2e3d_mig3"):
        with monkeypatch.context() as patch:  # a database as the last release left it: migrations 1-3
            patch.setattr(metadata_module, "MIGRATIONS", MIGRATIONS[:3])
            old = MetadataHook("e2e3d_mig3")
            old.migrate()
            old.record_job("j1", STAMP, "ds", "running")
            with old.transaction() as cur:  # as the last release wrote it: four columns
                cur.execute(
                    f"INSERT INTO {SCHEMA}.job_files (job_id, stamp, kind, key, size, sha256)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    ("j1", STAMP, "mesh", "j1/mesh/m.obj", 7, "a" * 64),
                )
        hook = MetadataHook("e2e3d_mig3")
        assert hook.schema_version() == 3
        assert hook.migrate() == SCHEMA_VERSION == 9
        assert hook.job_files("j1", STAMP) == [
            {"kind": "mesh", "key": "j1/mesh/m.obj", "size": 7, "sha256": "a" * 64}
            | {"role": None, "source": None, "level": None, "figures": None}
        ]
        hook.record_files(
            "j1",
            STAMP,
            [
                ("mesh", "j1/mesh/m.obj", 7, "a" * 64, "original", None, 0, {"faces": 2}),
                ("mesh", "j1/mesh/lod1/m.obj", 5, "b" * 64, "lod", "mesh/m.obj", 1, {"faces": 1}),
            ],
        )
        rows = {r["key"]: r for r in hook.job_files("j1", STAMP)}
        assert rows["j1/mesh/lod1/m.obj"]["source"] == "mesh/m.obj" and rows["j1/mesh/m.obj"]["figures"] == {"faces": 2}


def test_job_lifecycle_and_transitions(metadata: MetadataHook, unique_id: str) -> None:
    row = metadata.record_job(unique_id, STAMP, "ds1", "queued")
    assert row["status"] == "queued" and row["started_at"] is None
    running = metadata.record_job(unique_id, STAMP, "ds1", "running")
    assert running["started_at"] is not None
    assert metadata.record_job(unique_id, STAMP, "ds1", "running")["started_at"] == running["started_at"]
    done = metadata.record_job(
        unique_id,
        STAMP,
        "ds1",
        "succeeded",
        result_bucket="output",
        result_prefix=f"{unique_id}/",
        manifest_key=f"{unique_id}/metadata.json",
        files=4,
        bytes=1234,
        statistics={"upload_seconds": 1.5},
    )
    assert done["finished_at"] is not None and done["files"] == 4 and done["statistics"] == {"upload_seconds": 1.5}
    again = metadata.record_job(unique_id, STAMP, "ds1", "succeeded", statistics={"faces": 10})
    assert again["statistics"] == {"upload_seconds": 1.5, "faces": 10}
    with pytest.raises(InvalidTransitionError, match="cannot become running"):
        metadata.record_job(unique_id, STAMP, "ds1", "running")
    assert metadata.record_job(unique_id, STAMP, "ds1", "archived", archive_key="a/b")["status"] == "archived"
    assert metadata.get_job(unique_id)["status"] == "archived"


def test_failed_jobs_keep_their_error_and_may_run_again(metadata: MetadataHook, unique_id: str) -> None:
    metadata.record_job(unique_id, STAMP, "ds1", "running")
    failed = metadata.record_job(unique_id, STAMP, "ds1", "failed", error="reconstruct exited 1")
    assert failed["error"] == "reconstruct exited 1" and failed["finished_at"] is not None
    rerun = metadata.record_job(unique_id, STAMP, "ds1", "running")
    assert rerun["error"] is None and rerun["finished_at"] is None


def test_latest_run_and_listing(metadata: MetadataHook, unique_id: str) -> None:
    metadata.record_job(unique_id, "20260101T000000Z", "ds1", "failed", error="x")
    metadata.record_job(unique_id, "20260102T000000Z", "ds1", "running")
    assert metadata.get_job(unique_id)["stamp"] == "20260102T000000Z"
    assert metadata.get_job(unique_id, "20260101T000000Z")["status"] == "failed"
    assert metadata.get_job("never-seen") is None
    assert any(j["job_id"] == unique_id for j in metadata.list_jobs("running"))
    assert metadata.job_counts()["running"] >= 1
    # a job once, as its newest run; by dataset; never the whole table in one answer
    mine = metadata.list_jobs(dataset="ds1", latest=True, limit=MAX_LISTED_JOBS)
    assert [j["stamp"] for j in mine if j["job_id"] == unique_id] == ["20260102T000000Z"]
    assert not any(j["job_id"] == unique_id for j in metadata.list_jobs("failed", latest=True, limit=MAX_LISTED_JOBS))
    assert any(j["job_id"] == unique_id for j in metadata.list_jobs("failed", limit=MAX_LISTED_JOBS))
    assert not any(j["job_id"] == unique_id for j in metadata.list_jobs(dataset="ds2", limit=MAX_LISTED_JOBS))
    for limit in (0, MAX_LISTED_JOBS + 1):
        with pytest.raises(ValueError, match=f"1 to {MAX_LISTED_JOBS} runs"):
            metadata.list_jobs(limit=limit)
    with pytest.raises(ValueError, match="unknown job status"):
        metadata.list_jobs("done")


def test_bad_input_is_rejected_before_the_database(metadata: MetadataHook) -> None:
    with pytest.raises(InvalidNameError):
        metadata.record_job("../x", STAMP, "ds1")
    with pytest.raises(InvalidNameError):
        metadata.record_job("job", "yesterday", "ds1")
    with pytest.raises(ValueError, match="unknown job status"):
        metadata.record_job("job", STAMP, "ds1", "done")
    with pytest.raises(TypeError, match="unexpected fields"):
        metadata.record_job("job", STAMP, "ds1", "running", colour="red")


def test_file_inventory_is_bulk_replaced_without_duplicates(metadata: MetadataHook, unique_id: str) -> None:
    metadata.record_job(unique_id, STAMP, "ds1", "running")
    rows = [("images", f"{unique_id}/images/{i:05d}.jpg", i, f"{i:064x}") for i in range(5000)]
    assert metadata.record_files(unique_id, STAMP, rows) == 5000
    assert metadata.record_files(unique_id, STAMP, rows) == 5000  # a retry changes nothing
    stored = metadata.job_files(unique_id, STAMP)
    assert len(stored) == 5000
    assert stored[7] == {"kind": "images", "key": rows[7][1], "size": 7, "sha256": rows[7][3]} | {
        "role": None,  # a plain inventory: nothing right-sized
        "source": None,
        "level": None,
        "figures": None,
    }
    metadata.record_files(unique_id, STAMP, [*rows[:2], ("mesh", f"{unique_id}/mesh/m.obj", 9, "f" * 64)])
    assert [f["key"] for f in metadata.job_files(unique_id, STAMP)] == [
        f"{unique_id}/images/00000.jpg",
        f"{unique_id}/images/00001.jpg",
        f"{unique_id}/mesh/m.obj",
    ]


def test_files_of_an_unknown_job_are_refused(metadata: MetadataHook) -> None:
    with pytest.raises(MetadataError, match="record the job before its files"):
        metadata.record_files("ghost-job", STAMP, [("mesh", "ghost-job/m.obj", 1, "a" * 64)])


def test_transfers_are_idempotent_by_key_and_summarised(metadata: MetadataHook, unique_id: str) -> None:
    key = f"dag/run/{unique_id}/1"
    first = metadata.record_transfer(
        "upload", "output", files=3, bytes=3_000_000, seconds=1.0, job_id=unique_id, stamp=STAMP, transfer_key=key
    )
    second = metadata.record_transfer(
        "upload", "output", files=3, bytes=3_000_000, seconds=1.0, job_id=unique_id, stamp=STAMP, transfer_key=key
    )
    assert first == second
    metadata.record_transfer("download", "input", ok=False, error="boom", job_id=unique_id)
    summary = metadata.transfer_summary()
    assert summary["upload"]["bytes"] >= 3_000_000 and summary["download"]["errors"] >= 1
    with metadata.transaction() as cur:
        cur.execute(f"SELECT count(*) FROM {SCHEMA}.transfers WHERE transfer_key = %s", (key,))
        assert cur.fetchone()[0] == 1


def test_storage_statistics_and_configuration(metadata: MetadataHook) -> None:
    metadata.record_storage_stats(
        [{"bucket": "input", "objects": 1, "bytes": 10}, {"bucket": "output", "prefix": "", "objects": 2, "bytes": 20}]
    )
    metadata.record_storage_stats([{"bucket": "input", "objects": 3, "bytes": 30}])
    latest = {s["bucket"]: s for s in metadata.latest_storage_stats()}
    assert latest["input"]["objects"] == 3 and latest["output"]["bytes"] == 20
    key = "storage_capacity_bytes"  # a declared key nothing else in the suite sets; removed again below
    try:
        metadata.set_config(key, 30)
        metadata.set_config(key, 14 * 1024**4)
        assert metadata.get_config(key) == 14 * 1024**4
        value, updated_at = metadata.list_config()[key]
        assert value == 14 * 1024**4 and updated_at.tzinfo is not None
    finally:
        metadata.delete_config(key)
    assert metadata.get_config(key, "dflt") == "dflt" and key not in metadata.list_config()
    assert metadata.get_config("absent", "dflt") == "dflt"


def test_health(metadata: MetadataHook) -> None:
    health = metadata.health()
    assert health["ok"] and health["schema_version"] == SCHEMA_VERSION


def test_wrong_password_names_the_connection(connections: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = dict(connections["e2e3d_metadata"], password="not-the-password")
    monkeypatch.setenv("AIRFLOW_CONN_E2E3D_BADPW", json.dumps(bad))
    with pytest.raises(MetadataError, match="'e2e3d_badpw'") as caught:
        MetadataHook("e2e3d_badpw").migrate()
    assert "not-the-password" not in str(caught.value)
    assert MetadataHook("e2e3d_badpw").health()["ok"] is False


def test_unreachable_database_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    (port,) = free_ports(1)
    monkeypatch.setenv(
        "AIRFLOW_CONN_E2E3D_NOWHERE",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": port,
                "login": "u",
                "password": "p",
                "schema": "d",
                "extra": {"connect_timeout": 5},
            }
        ),
    )
    with pytest.raises(MetadataError, match=r"cannot connect.*'e2e3d_nowhere' \(after \d+ attempts over 1 s\)"):
        MetadataHook("e2e3d_nowhere", retry_deadline=1.0).get_job("job1")  # refused: tried again, for 1 s


def test_a_session_runs_every_transaction_of_its_thread_on_one_connection(
    metadata, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside session(), this thread's transactions share one connection (a failed one rolls back and the
    next still works); another thread meanwhile gets connections of its own; outside, one per transaction."""
    import threading

    from e2e3d_provider.hooks.metadata import MetadataHook

    opened: list[int] = []
    real_connect = MetadataHook._connect

    def counting(self: MetadataHook):
        conn = real_connect(self)
        opened.append(id(conn))
        return conn

    monkeypatch.setattr(MetadataHook, "_connect", counting)
    hook = MetadataHook()
    hook.migrate()
    opened.clear()
    with hook.session():
        for _ in range(5):
            with hook.transaction() as cur:
                cur.execute("SELECT 1")
        with pytest.raises(Exception, match="division by zero"), hook.transaction() as cur:
            cur.execute("SELECT 1/0")
        with hook.transaction() as cur:
            cur.execute("SELECT 2")
            assert cur.fetchone() == (2,)
        other = threading.Thread(target=lambda: hook.job_counts())
        other.start()
        other.join()
    assert len(opened) == 2  # the session's, and the other thread's own
    hook.job_counts()
    assert len(opened) == 3
