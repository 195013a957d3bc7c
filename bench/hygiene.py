"""Storage hygiene: what the maintenance DAG's ``storage_hygiene`` reclaims from a stack with known debris.

Run:  python bench/hygiene.py [--uploads 3] [--strays 50] [--deleted-mb 40] [--dead-rows 2000]

Debris, made on a stack of this run's own: ``--uploads`` multipart uploads of one 5 MiB part each, never
completed; one published job with ``--strays`` objects below its prefix that its manifest does not name;
``--deleted-mb`` MB of objects written to ``archive`` (not versioned) and deleted (their bytes stay in
SeaweedFS's volumes until compacted); ``--dead-rows`` dead rows in ``e2e3d.config``. Then
``lifecycle.maintenance.storage_hygiene`` runs twice: a dry run (the DAG's default: strays reported, none
removed) and with ``remove_strays``, both with no grace period. Prints what each part reports it reclaimed.
Never a test assertion.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import bench_environment

PART = 5 * 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=3)
    parser.add_argument("--strays", type=int, default=50)
    parser.add_argument("--deleted-mb", type=int, default=40)
    parser.add_argument("--dead-rows", type=int, default=2000)
    args = parser.parse_args()
    with bench_environment("hygiene") as base:
        from e2e3d_provider.devstack.stack import default_stack_dir
        from e2e3d_provider.devstack.volumes import embedded_vacuum
        from e2e3d_provider.hooks.metadata import MetadataHook
        from e2e3d_provider.hooks.storage import StorageHook
        from e2e3d_provider.lifecycle.maintenance import steps as maintenance
        from e2e3d_provider.lifecycle.results.publish import publish_run
        from e2e3d_provider.lifecycle.results.record import record_job_run

        os.environ["E2E3D_STACK_DIR"] = str(base / "stack")
        assert default_stack_dir() == base / "stack"
        admin, metadata = StorageHook("minio_admin"), MetadataHook()
        admin.bootstrap()
        metadata.migrate()
        for i in range(args.uploads):
            upload = admin.client._create_multipart_upload("output", f"bench-upload-{i}/big.bin", {})
            admin.client._upload_part("output", f"bench-upload-{i}/big.bin", b"p" * PART, {}, upload, 1)
        run = Path(tempfile.mkdtemp(dir=base))
        (run / "mesh").mkdir()
        (run / "mesh" / "model.obj").write_bytes(os.urandom(4096))
        publish_run(admin, run, "bench-job", "20261202T000000Z", "output")
        record_job_run(metadata, admin, "bench-job", "20261202T000000Z", "terrain", "succeeded")
        for i in range(args.strays):
            admin.put_bytes("output", f"bench-job/leftover/{i}.bin", os.urandom(8192))
        for i in range(args.deleted_mb):
            admin.client.put_object("archive", f"bench-garbage/{i}.bin", io.BytesIO(os.urandom(1 << 20)), 1 << 20)
        admin.delete_keys("archive", [f"bench-garbage/{i}.bin" for i in range(args.deleted_mb)])
        with metadata.transaction() as cur:
            cur.execute("ALTER TABLE e2e3d.config SET (autovacuum_enabled = false)")
            cur.executemany(
                "INSERT INTO e2e3d.config (key, value) VALUES (%s, '1'::jsonb)",
                [(f"bench-{i}",) for i in range(args.dead_rows)],
            )
            cur.execute("DELETE FROM e2e3d.config WHERE key LIKE 'bench-%'")
        time.sleep(2)  # PostgreSQL publishes a backend's table statistics within a second or so
        metadata.set_config(maintenance.CONFIG_STRAY_GRACE_HOURS, 0)
        metadata.set_config(maintenance.CONFIG_UPLOAD_MAX_AGE_HOURS, 0)
        storage = StorageHook("minio_maintenance")
        for remove in (False, True):
            report = maintenance.storage_hygiene(
                storage, metadata, remove_strays=remove, vacuum=embedded_vacuum(storage.endpoint_url)
            )
            strays = report["strays"]
            per_bucket = {b: (r["objects"], r["bytes"], r["deleted"]) for b, r in strays["buckets"].items()}
            print(f"\nstorage_hygiene(remove_strays={remove}):")
            print(f"  multipart: {report['multipart']['aborted']} aborted, {report['multipart']['bytes']:,} bytes")
            print(f"  strays (objects, bytes, deleted) per bucket: {per_bucket}")
            print(f"  metadata: {json.dumps(report['metadata'], default=str)}")
            print(f"  volumes: {json.dumps(report['volumes'], default=str)[:600]}")


if __name__ == "__main__":
    main()
