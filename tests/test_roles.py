"""Least-privilege storage roles, enforced by the S3 server itself: each role's keys are tried on every
action in every bucket against the session's real S3 server (each lane: SeaweedFS, MinIO), and what the
server allows must be exactly what ``core.roles.GRANTS`` grants (everything else refused)."""

from __future__ import annotations

import io

import pytest
from minio import Minio
from minio.commonconfig import ENABLED, Tags
from minio.error import S3Error
from minio.versioningconfig import VersioningConfig

from e2e3d_provider.core.layout import DEFAULT_BUCKETS, VERSIONED_BUCKETS
from e2e3d_provider.core.roles import CONFIGURE, GRANTS, LIST, READ, TAG, WRITE
from e2e3d_provider.hooks.storage import StorageHook

#: each versioned bucket's lifecycle as the admin sees it (what the configure probe writes back unchanged)
ADMIN_VIEW: dict = {}
#: the action tried -> the grant it needs
#: (reading tags is reading: a large file's sha256 is its ``sha256`` tag, which every reader's stat reads;
#: MinIO checks s3:GetObjectTagging for it, SeaweedFS does not)
#: (changing a bucket's configuration is no role's: admin only; SeaweedFS's plain ``Write:bucket`` allowed it)
PROBES = {
    "list": LIST,
    "get": READ,
    "read_tags": READ,
    "put": WRITE,
    "delete": WRITE,
    "tag": TAG,
    "configure": CONFIGURE,
}


def client(stack_info, access: str, secret: str) -> Minio:
    return Minio(f"127.0.0.1:{stack_info.s3_port}", access_key=access, secret_key=secret, secure=False)


def attempt(c: Minio, action: str, bucket: str, key: str) -> bool:
    """True if the server allowed it; False if it refused with AccessDenied."""
    try:
        if action == "list":
            list(c.list_objects(bucket, prefix="roles-probe/"))
        elif action == "get":
            c.get_object(bucket, key).read()
        elif action == "read_tags":
            c.get_object_tags(bucket, key)
        elif action == "put":
            c.put_object(bucket, f"roles-probe/new-{key.rsplit('/', 1)[-1]}", io.BytesIO(b"x"), 1)
        elif action == "delete":
            c.remove_object(bucket, key)
        elif action == "tag":
            tags = Tags.new_object_tags()
            tags["probe"] = "1"
            c.set_object_tags(bucket, key, tags)
        elif action == "configure":
            configure(c, bucket)
        return True
    except S3Error as err:
        if err.code in ("AccessDenied", "AllAccessDisabled"):
            return False
        if action == "configure" and err.code == "NoSuchLifecycleConfiguration":
            return True  # past the server's permission check: nothing to remove is an answer, not a refusal
        raise


def configure(c: Minio, bucket: str) -> None:
    """Change nothing, with the requests that change a bucket's configuration: on the versioned buckets,
    versioning on again and the lifecycle as it is; elsewhere, remove the (absent) lifecycle rules."""
    if bucket in VERSIONED_BUCKETS:
        c.set_bucket_versioning(bucket, VersioningConfig(ENABLED))
        c.set_bucket_lifecycle(bucket, ADMIN_VIEW[bucket])
    else:
        c.delete_bucket_lifecycle(bucket)


@pytest.mark.parametrize("role", sorted(GRANTS))
def test_each_role_is_refused_every_action_outside_its_grant(stack_info, storage: StorageHook, role: str) -> None:
    if stack_info is None:
        pytest.skip("the role identities are the embedded stack's; an external server has its own policies")
    access, secret = stack_info.role_keys[role]
    c = client(stack_info, access, secret)
    for bucket in VERSIONED_BUCKETS:  # what configure() writes back: the lifecycle as bootstrap made it
        ADMIN_VIEW[bucket] = storage.client.get_bucket_lifecycle(bucket)
    observed, expected = {}, {}
    for bucket in DEFAULT_BUCKETS:
        for action, needs in PROBES.items():
            key = f"roles-probe/{role}-{action}"
            storage.put_bytes(bucket, key, b"probe")  # as the admin: something to read, tag, delete
            observed[(bucket, action)] = attempt(c, action, bucket, key)
            expected[(bucket, action)] = needs in GRANTS[role].get(bucket, ())
    print(f"ROLE {role}: " + "; ".join(f"{b}/{a}={'allowed' if v else 'refused'}" for (b, a), v in observed.items()))
    wrong = {k: ("allowed" if v else "refused") for k, v in observed.items() if v != expected[k]}
    assert not wrong, f"{role}: the server's answers differ from the grant: {wrong}"


def test_a_role_key_reaches_no_bucket_listing_of_another_role(stack_info) -> None:
    if stack_info is None:
        pytest.skip("embedded stack only")
    worker = client(stack_info, *stack_info.role_keys["worker"])
    with pytest.raises(S3Error) as refused:
        list(worker.list_objects("archive"))
    assert refused.value.code == "AccessDenied"


def test_stack_env_exports_one_connection_per_role(stack_info) -> None:
    import json

    from e2e3d_provider.hooks import ROLE_CONN_IDS

    if stack_info is None:
        pytest.skip("embedded stack only")
    env = stack_info.env()
    for role, conn_id in ROLE_CONN_IDS.items():
        conn = json.loads(env[f"AIRFLOW_CONN_{conn_id.upper()}"])
        expected = stack_info.access_key if role == "admin" else stack_info.role_keys[role][0]
        assert conn["login"] == expected and conn["conn_type"] == "aws", role


def test_a_refusal_through_the_hook_says_the_role_may_not_and_names_the_connection(connections) -> None:
    from e2e3d_provider.exceptions import StorageAuthError

    with pytest.raises(StorageAuthError, match=r"refused .*archive.* to connection 'minio_worker'.*not allowed"):
        StorageHook("minio_worker").get_bytes("archive", "roles-probe/anything")
    with pytest.raises(StorageAuthError, match=r"connection 'minio_worker'.*not allowed"):
        StorageHook("minio_worker").list_keys("archive", "")


def test_bootstrap_roles_makes_minio_users_from_the_role_connections(
    stack_info, storage: StorageHook, s3_server: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``e2e3d bootstrap --roles`` (docker-compose's minio-init) creates one MinIO user per role with the
    keys of that role's connection and the policy core/roles.py generates, through MinIO's admin API; the
    server then refuses each new user outside its grant. On a server without that API, it says so."""
    import json
    import os
    import secrets
    import subprocess
    import sys
    from pathlib import Path

    if stack_info is None:
        pytest.skip("external servers configured (E2E3D_TEST_*): the admin keys of the stack are not known")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_MINIO_")}
    env["AIRFLOW_CONN_MINIO_ADMIN"] = json.dumps(stack_info.role_conn("admin"))
    fresh = {role: (f"boot{role[:4]}{secrets.token_hex(4)}", secrets.token_urlsafe(18)) for role in GRANTS}
    for role, (access, secret) in fresh.items():
        conn = {**stack_info.role_conn("admin"), "login": access, "password": secret}
        env[f"AIRFLOW_CONN_MINIO_{role.upper()}"] = json.dumps(conn)
    backup_keys = (f"bootbackup{secrets.token_hex(4)}", secrets.token_urlsafe(18))
    backup_conn = {**stack_info.role_conn("admin"), "login": backup_keys[0], "password": backup_keys[1]}
    backup_conn["extra"] = {**backup_conn["extra"], "bucket": "boot-backup"}
    env["AIRFLOW_CONN_E2E3D_BACKUP"] = json.dumps(backup_conn)
    command = [str(Path(sys.executable).parent / "e2e3d"), "bootstrap", "--roles", "--storage-only"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    if s3_server != "minio":
        assert result.returncode == 1 and "has no MinIO admin API" in result.stderr, result.stdout + result.stderr
        return
    assert result.returncode == 0, result.stdout + result.stderr
    for role in GRANTS:
        assert f"role {role}: MinIO user {fresh[role][0]} with policy e2e3d-{role}" in result.stdout
    worker = client(stack_info, *fresh["worker"])
    assert attempt(worker, "list", "output", "roles-probe/x")
    assert not attempt(worker, "put", "input", "roles-probe/x")
    # the backup target on this MinIO gets a user of its own, limited to its bucket (which now exists)
    assert f"role backup: MinIO user {backup_keys[0]} with policy e2e3d-backup" in result.stdout
    backup = client(stack_info, *backup_keys)
    assert attempt(backup, "put", "boot-backup", "roles-probe/x")
    assert not attempt(backup, "list", "output", "roles-probe/x")
    assert not attempt(backup, "put", "output", "roles-probe/x")
    # run again: idempotent, and a changed secret takes effect
    env["AIRFLOW_CONN_MINIO_WORKER"] = json.dumps(
        {**stack_info.role_conn("admin"), "login": fresh["worker"][0], "password": "a-new-worker-secret"}
    )
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert attempt(client(stack_info, fresh["worker"][0], "a-new-worker-secret"), "list", "output", "roles-probe/x")
    # a role connection that reuses the admin's keys is refused
    env["AIRFLOW_CONN_MINIO_API"] = json.dumps(stack_info.role_conn("admin"))
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert refused.returncode == 1 and "needs keys of its own" in refused.stderr
