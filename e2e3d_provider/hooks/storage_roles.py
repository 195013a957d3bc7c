"""The least-privilege storage roles as MinIO users, applied through MinIO's admin API (no ``mc``).

Each role of :data:`e2e3d_provider.core.roles.GRANTS` becomes a canned policy ``e2e3d-<role>`` (its
JSON from :func:`~e2e3d_provider.core.roles.minio_policy`) and a user with the role connection's
keys, mapped to exactly that policy. Applying is idempotent: the policy is replaced, the user's secret
reset to the connection's, the mapping set (not added to). The caller's keys must be MinIO's root user
or hold ``admin:*``.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from minio import MinioAdmin
from minio.credentials import Provider
from minio.error import MinioAdminException

from e2e3d_provider.core.retry import RetryPolicy
from e2e3d_provider.core.roles import GRANTS, minio_backup_policy, minio_policy
from e2e3d_provider.exceptions import StorageAuthError, StorageError

#: the name (policy ``e2e3d-backup``) of the backup target's own user, when the target is a bucket on this MinIO
BACKUP_USER = "backup"
#: MinIO's limits on a user's secret key
SECRET_LENGTH = (8, 40)


def policy_name(role: str) -> str:
    return f"e2e3d-{role}"


def admin_client(endpoint: str, credentials: Provider, secure: bool, verify: bool | str) -> MinioAdmin:
    """A MinIO admin client for ``endpoint`` (host:port) signing with ``credentials`` (the storage hook's:
    static keys, with a session token, or refreshed ones); ``verify`` as the connection says it (a CA bundle
    path, True for the system's CAs, False for none)."""
    import urllib3

    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5, read=60),
        cert_reqs="CERT_REQUIRED" if secure and verify is not False else "CERT_NONE",
        ca_certs=verify if isinstance(verify, str) else None,
        retries=False,
    )
    return MinioAdmin(endpoint=endpoint, credentials=credentials, secure=secure, http_client=http)


def _admin_error(err: MinioAdminException, what: str, where: str) -> StorageError:
    body = getattr(err, "_body", "") or ""
    status = str(getattr(err, "_code", ""))
    try:
        code = json.loads(body).get("Code", "")
    except ValueError:
        code = ""
    if status in ("401", "403") or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return StorageAuthError(
            f"{where} refused {what}: {code or status}. Roles are created with MinIO's root user or a user "
            "holding admin:* (the minio_admin connection)."
        )
    if status in ("404", "400") and not code.startswith("XMinio"):
        return StorageError(
            f"{where} has no MinIO admin API ({what} answered {status} {code}): this server's identities are "
            "configured its own way; give each role the grants of core/roles.py there"
        )
    return StorageError(f"{where}: {what} failed: {status} {code} {body[:300]}")


#: MinIO answers its admin API with 500 "Server not initialized" for a moment after it serves S3 requests:
#: each admin call is retried through that (about 30 s in all)
ADMIN_RETRY = RetryPolicy(attempts=8, delay=0.25)


def apply_roles(
    admin: MinioAdmin,
    role_keys: dict[str, tuple[str, str]],
    where: str,
    retry: RetryPolicy = ADMIN_RETRY,
    backup: tuple[str, str, str] | None = None,
) -> list[str]:
    """Create or update one MinIO user and policy per role in ``role_keys`` (role -> access key, secret),
    and with ``backup`` (access key, secret, bucket) the backup target's own user, limited to its bucket;
    return the roles applied. Unknown roles and secrets MinIO would refuse are refused first."""
    users: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for role, (access_key, secret_key) in role_keys.items():
        if role not in GRANTS:
            raise ValueError(f"unknown storage role {role!r}: the roles are {', '.join(GRANTS)}")
        users[role] = (access_key, secret_key, minio_policy(role))
    if backup is not None:
        users[BACKUP_USER] = (backup[0], backup[1], minio_backup_policy(backup[2]))
    for role, (access_key, secret_key, _) in users.items():
        if not access_key or not SECRET_LENGTH[0] <= len(secret_key or "") <= SECRET_LENGTH[1]:
            raise ValueError(
                f"role {role!r}: MinIO needs an access key and a secret key of {SECRET_LENGTH[0]} to "
                f"{SECRET_LENGTH[1]} characters"
            )
    applied = []
    for role, (access_key, secret_key, policy) in sorted(users.items()):
        name = policy_name(role)
        step = f"policy {name}"
        try:
            retry.call(partial(admin.policy_add, name, policy=policy), step)
            step = f"user {access_key}"
            retry.call(partial(admin.user_add, access_key, secret_key), step)
            step = f"policy mapping of {access_key}"
            retry.call(partial(admin.policy_set, name, user=access_key), step)
        except MinioAdminException as err:
            raise _admin_error(err, step, where) from err
        applied.append(role)
    return applied


def role_keys_from_connections(admin_access_key: str) -> dict[str, tuple[str, str]]:
    """Each role's keys, read from its Airflow connection (``minio_<role>``): the one place they are set,
    so the users MinIO gets are exactly the keys the components sign with. A role whose connection is
    missing, has no keys, or reuses the admin's keys is refused: least privilege needs keys of its own."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    from e2e3d_provider.hooks import ROLE_CONN_IDS

    keys: dict[str, tuple[str, str]] = {}
    for role in GRANTS:
        conn_id = ROLE_CONN_IDS[role]
        try:
            conn = BaseHook.get_connection(conn_id)
        except AirflowNotFoundException as err:
            raise StorageError(
                f"no Airflow connection {conn_id!r} for the {role} role: define it (AIRFLOW_CONN_{conn_id.upper()}) "
                "with that role's keys"
            ) from err
        if not conn.login or not conn.password:
            raise StorageError(f"connection {conn_id!r} has no access key (login) or secret key (password)")
        if conn.login == admin_access_key:
            raise StorageError(
                f"connection {conn_id!r} uses the admin's access key: the {role} role needs keys of its own"
            )
        keys[role] = (conn.login, conn.password)
    return keys


def user_policies(admin: MinioAdmin) -> dict[str, Any]:
    """Access key -> the policy names MinIO maps it to (what :func:`apply_roles` set)."""
    users = json.loads(admin.user_list() or "{}")
    return {key: (value.get("policyName") or "") for key, value in users.items()}


def backup_user_from_connection(admin_endpoint: str, admin_access_key: str) -> tuple[str, str, str] | None:
    """The backup target's own user (access key, secret, bucket), read from the ``e2e3d_backup`` connection,
    when that target is a bucket on the admin's own server: it gets a user limited to that bucket, so the
    tasks that back up never hold the admin's keys. None when the connection is not defined or names
    another endpoint (whose keys are that server's own). Reusing the admin's keys is refused."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    from e2e3d_provider.core.backup_catalog import DEFAULT_BACKUP_BUCKET
    from e2e3d_provider.hooks import DEFAULT_BACKUP_CONN_ID

    try:
        conn = BaseHook.get_connection(DEFAULT_BACKUP_CONN_ID)
    except AirflowNotFoundException:
        return None
    extra = conn.extra_dejson or {}
    if (extra.get("endpoint_url") or "").rstrip("/") != admin_endpoint.rstrip("/"):
        return None
    if not conn.login or not conn.password:
        raise StorageError(f"connection {DEFAULT_BACKUP_CONN_ID!r} has no access key (login) or secret key (password)")
    if conn.login == admin_access_key:
        raise StorageError(
            f"connection {DEFAULT_BACKUP_CONN_ID!r} uses the admin's access key: the backup target needs keys of "
            "its own (a user limited to its bucket, which bootstrap --roles creates)"
        )
    return conn.login, conn.password, extra.get("bucket") or DEFAULT_BACKUP_BUCKET


def data_usage(admin: MinioAdmin, where: str, retry: RetryPolicy = ADMIN_RETRY) -> dict[str, Any] | None:
    """MinIO's data-usage report (``mc admin info``'s figures: the scanner's last per-bucket totals and when
    it saved them, ``lastUpdate``), parsed; None when the server has no MinIO admin API (SeaweedFS and AWS
    S3 answer with an S3 error document, or 4xx with no ``XMinio`` code). Needs ``admin:DataUsageInfo``
    (the maintenance role has it)."""
    try:
        body = retry.call(admin.get_data_usage_info, "data usage")
    except MinioAdminException as err:
        if (getattr(err, "_body", "") or "").lstrip().startswith("<"):  # an S3 error (XML): not MinIO's admin API
            return None  # (SeaweedFS takes the path for bucket "minio": 404, or 403 for keys without it)
        error = _admin_error(err, "data usage", where)
        if isinstance(error, StorageAuthError):
            raise error from err
        if "has no MinIO admin API" in str(error):
            return None
        raise error from err
    return json.loads(body or "{}")
