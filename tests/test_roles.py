"""Least-privilege storage roles, enforced by the S3 server itself: each role's keys are tried on every
action in every bucket against the session's real SeaweedFS, and what the server allows must be exactly
what ``core.roles.GRANTS`` grants (everything else refused)."""

from __future__ import annotations

import io

import pytest
from minio import Minio
from minio.commonconfig import Tags
from minio.error import S3Error

from e2e3d_provider.core.layout import DEFAULT_BUCKETS
from e2e3d_provider.core.roles import GRANTS, LIST, READ, TAG, WRITE
from e2e3d_provider.hooks.storage import StorageHook

#: the action tried -> the grant it needs
PROBES = {"list": LIST, "get": READ, "put": WRITE, "delete": WRITE, "tag": TAG}


def client(stack_info, access: str, secret: str) -> Minio:
    return Minio(f"127.0.0.1:{stack_info.s3_port}", access_key=access, secret_key=secret, secure=False)


def attempt(c: Minio, action: str, bucket: str, key: str) -> bool:
    """True if the server allowed it; False if it refused with AccessDenied."""
    try:
        if action == "list":
            list(c.list_objects(bucket, prefix="roles-probe/"))
        elif action == "get":
            c.get_object(bucket, key).read()
        elif action == "put":
            c.put_object(bucket, f"roles-probe/new-{key.rsplit('/', 1)[-1]}", io.BytesIO(b"x"), 1)
        elif action == "delete":
            c.remove_object(bucket, key)
        elif action == "tag":
            tags = Tags.new_object_tags()
            tags["probe"] = "1"
            c.set_object_tags(bucket, key, tags)
        return True
    except S3Error as err:
        if err.code in ("AccessDenied", "AllAccessDisabled"):
            return False
        raise


@pytest.mark.parametrize("role", sorted(GRANTS))
def test_each_role_is_refused_every_action_outside_its_grant(stack_info, storage: StorageHook, role: str) -> None:
    if stack_info is None:
        pytest.skip("the role identities are the embedded stack's; an external server has its own policies")
    access, secret = stack_info.role_keys[role]
    c = client(stack_info, access, secret)
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
