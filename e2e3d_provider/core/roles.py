"""Least-privilege storage roles: who may do what in which bucket, enforced by the S3 server.

One table (:data:`GRANTS`) is the truth; the embedded stack turns it into SeaweedFS identities
(:func:`seaweed_actions`), and ``e2e3d bootstrap --roles`` (the embedded MinIO, docker-compose's
``minio-init``) into MinIO users with IAM policies (:func:`minio_policy`) through MinIO's admin API.
"""

from __future__ import annotations

from typing import Any

from e2e3d_provider.core.layout import BUCKET_ARCHIVE, BUCKET_INPUT, BUCKET_MODELS, BUCKET_OUTPUT

READ, LIST, WRITE, TAG = "Read", "List", "Write", "Tagging"
#: changing a bucket's configuration (versioning, lifecycle rules, policy, tags): no role's grant, admin only
CONFIGURE = "Configure"

#: role -> bucket -> what it may do there. Write includes deleting objects: S3 servers' simple grants
#: (SeaweedFS identities) do not tell the two apart. ``admin`` may do anything (bootstrap, the demo).
GRANTS: dict[str, dict[str, tuple[str, ...]]] = {
    # e2e3d ingest, migrate-inputs: stores datasets
    "ingest": {BUCKET_INPUT: (READ, LIST, WRITE, TAG)},
    # the lifecycle's tasks on the workers: read datasets and models, stage, hand off and publish results
    "worker": {
        BUCKET_INPUT: (READ, LIST),
        BUCKET_MODELS: (READ, LIST),
        BUCKET_OUTPUT: (READ, LIST, WRITE, TAG),
    },
    # the results API: pre-signs downloads of results and archives, and uploads into input (then commits)
    "api": {
        BUCKET_OUTPUT: (READ, LIST),
        BUCKET_ARCHIVE: (READ, LIST),
        BUCKET_INPUT: (READ, LIST, WRITE, TAG),
    },
    # archive, retention deletes, statistics, health, storage hygiene (removing input images no dataset
    # names, aborting stale uploads) and scrub repairs (SeaweedFS lists a bucket only for an identity that
    # may also read it: List alone is refused, tested)
    "maintenance": {
        BUCKET_INPUT: (READ, LIST, WRITE),
        BUCKET_MODELS: (READ, LIST),
        BUCKET_OUTPUT: (READ, LIST, WRITE, TAG),
        BUCKET_ARCHIVE: (READ, LIST, WRITE, TAG),
    },
}
ROLES = ("admin", *GRANTS)
#: role -> MinIO admin API actions it may call besides its bucket grants: the maintenance role reads the
#: scanner's per-bucket usage (the usage reconciliation). SeaweedFS has no such API, so no identity action.
MINIO_ADMIN_ACTIONS: dict[str, tuple[str, ...]] = {"maintenance": ("admin:DataUsageInfo",)}


#: grants that SeaweedFS scopes to a bucket's objects (``Write:bucket/*``): its plain ``Write:bucket`` also
#: covers the bucket's configuration (versioning, lifecycle, policy, tags, deleting the bucket), which only
#: ``admin`` may change; the object-scoped form allows puts, copies, multipart uploads, deletes (one and many)
#: and refuses every bucket-level write
OBJECT_SCOPED = (WRITE, TAG)


def seaweed_actions(role: str) -> list[str]:
    """The SeaweedFS identity actions of ``role``: ``Action:bucket`` for reading and listing,
    ``Action:bucket/*`` for writing and tagging objects (so no role but admin configures a bucket)."""
    if role == "admin":
        return ["Admin", READ, WRITE, LIST, TAG]
    return [
        f"{action}:{bucket}/*" if action in OBJECT_SCOPED else f"{action}:{bucket}"
        for bucket, actions in GRANTS[role].items()
        for action in actions
    ]


_S3_ACTIONS = {
    # reading an object includes reading its tags: a file uploaded without a known sha256 carries it as
    # the tag ``sha256``, which every reader's stat reads (MinIO checks s3:GetObjectTagging; SeaweedFS
    # does not)
    READ: ["s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectTagging", "s3:GetObjectVersionTagging"],
    LIST: [
        "s3:ListBucket",
        "s3:ListBucketVersions",
        "s3:ListBucketMultipartUploads",
        "s3:GetBucketLocation",
        "s3:GetBucketVersioning",
    ],
    WRITE: [
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:DeleteObjectVersion",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
    ],
    TAG: ["s3:PutObjectTagging", "s3:PutObjectVersionTagging"],
}


def minio_policy(role: str) -> dict[str, Any]:
    """The IAM policy (MinIO's ``mc admin policy create``) granting exactly what :data:`GRANTS` says, and
    the admin API actions of :data:`MINIO_ADMIN_ACTIONS` (no resource: MinIO's admin actions have none)."""
    statements = []
    for bucket, actions in GRANTS[role].items():
        bucket_level = [a for a in _S3_ACTIONS[LIST] if LIST in actions]
        object_level = sorted({s for a in actions if a != LIST for s in _S3_ACTIONS[a]})
        if bucket_level:
            statements.append({"Effect": "Allow", "Action": bucket_level, "Resource": [f"arn:aws:s3:::{bucket}"]})
        if object_level:
            statements.append({"Effect": "Allow", "Action": object_level, "Resource": [f"arn:aws:s3:::{bucket}/*"]})
    if MINIO_ADMIN_ACTIONS.get(role):
        statements.append({"Effect": "Allow", "Action": list(MINIO_ADMIN_ACTIONS[role])})
    return {"Version": "2012-10-17", "Statement": statements}


def minio_backup_policy(bucket: str) -> dict[str, Any]:
    """The IAM policy of the backup target's own user on a MinIO that also holds the live buckets: its
    bucket alone (list it, read, write and delete objects in it), nothing of the live buckets, no
    configuration. The backup reads the live buckets with the maintenance role, and writes here."""
    object_actions = sorted({*_S3_ACTIONS[READ], *_S3_ACTIONS[WRITE], *_S3_ACTIONS[TAG]})
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": _S3_ACTIONS[LIST], "Resource": [f"arn:aws:s3:::{bucket}"]},
            {"Effect": "Allow", "Action": object_actions, "Resource": [f"arn:aws:s3:::{bucket}/*"]},
        ],
    }
