"""StorageHook: object storage (MinIO or any S3 API) over an Airflow ``aws`` or ``e2e3d_s3`` connection."""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import re
import threading
import time
import uuid
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property, partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import obstore.exceptions
import urllib3
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from minio import Minio
from minio.commonconfig import ENABLED, CopySource, Filter
from minio.credentials import Provider
from minio.datatypes import parse_copy_object
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from minio.lifecycleconfig import LifecycleConfig, NoncurrentVersionExpiration, Rule
from minio.versioningconfig import VersioningConfig
from obstore.store import S3Store

from e2e3d_provider.core import etag as etags
from e2e3d_provider.core import listing, transfer
from e2e3d_provider.core.layout import (
    DEFAULT_BUCKETS,
    DEFAULT_NONCURRENT_DAYS,
    VERSIONED_BUCKETS,
    normalize_prefix,
    probe_key,
    validate_bucket,
    validate_relpath,
)
from e2e3d_provider.core.manifest import CHUNK_SIZE, Manifest
from e2e3d_provider.core.presign import CREATE_ONLY_CONDITIONS, bound_expiry, presign_put_url, upload_headers
from e2e3d_provider.core.retry import (
    DEFAULT_ATTEMPTS,
    DEFAULT_DEADLINE,
    DEFAULT_DELAY,
    MAX_DELAY,
    RetryPolicy,
    attempts_made,
    is_transient,
    is_unreachable,
    seconds_spent,
    tls_failure,
)
from e2e3d_provider.core.transfer import TransferResult
from e2e3d_provider.core.usage import UnitListing, UsageCounts, unit_of
from e2e3d_provider.exceptions import (
    BucketNotFoundError,
    ChecksumMismatchError,
    E2E3DError,
    ObjectNotFoundError,
    StorageAuthError,
    StorageError,
    StorageTLSError,
    StorageUnreachableError,
)
from e2e3d_provider.hooks import DEFAULT_MINIO_CONN_ID, ROLE_CONN_IDS, storage_credentials, storage_roles, telemetry
from e2e3d_provider.hooks.storage_credentials import ConnectionCredentials

LIFECYCLE_RULE_ID = "e2e3d-expire-noncurrent"
#: the largest object one CopyObject request may copy (larger ones are composed from parts)
MAX_SINGLE_COPY = 5 * 1024**3
#: multi-object delete requests in flight at once (measured on SeaweedFS: 1,300 keys/s one at a time,
#: 2,400 with four)
DELETE_BATCHES_IN_FLIGHT = 4
#: the fewest versions delete_versions puts in one request when it spreads a list over several
MIN_DELETE_BATCH = 50
#: single DELETE ?versionId requests in flight at once on a server that deletes versions faster that way
#: (StorageHook.deletes_versions_singly)
SINGLE_DELETES_IN_FLIGHT = 16
#: a bucket count is split into this many key ranges, listed side by side, when its prefix has at least
#: COUNT_NAMES_PER_RANGE top-level names per range
COUNT_PARTITIONS = 8
COUNT_NAMES_PER_RANGE = 64
#: ``(endpoint, bucket)`` -> True once a bucket was seen to keep versions (it never stops: suspending versioning
#: keeps the stored ones), so a task's fresh hook does not ask again before each count
_VERSIONS_KEPT: dict[tuple[str, str], bool] = {}
#: usage units a hook remembers as changed per bucket before it gives up noting (reconciliation catches up)
MAX_TOUCHED_UNITS = 100_000
#: (endpoint, bucket) -> the conditional-write headers that server honours (StorageHook.create_only_condition)
_CREATE_ONLY_CONDITION: dict[tuple[str, str], dict[str, str]] = {}
#: (endpoint, bucket) -> whether that server lists incomplete uploads by prefix (lists_uploads_by_prefix)
_PREFIX_LISTING: dict[tuple[str, str], bool] = {}
#: endpoint -> whether that server deletes versions faster one request each (deletes_versions_singly)
_SINGLE_DELETES: dict[str, bool] = {}
_CONDITION_LOCK = threading.Lock()
#: seconds a health probe (test_connection, health) retries: it reports the present, it does not wait
PROBE_DEADLINE = 1.0
_AUTH_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken", "InvalidTokenId"}
)
#: an S3 error document (in an obstore error's text) refusing the credentials themselves, not the action
_REFUSED_CREDENTIALS = re.compile(r"<Code>(" + "|".join(sorted(_AUTH_CODES - {"AccessDenied"})) + r")</Code>")


@functools.cache
def _warn_role_fallback(conn_id: str) -> None:
    logging.getLogger(__name__).warning(
        "connection %r (a least-privilege storage role) is not defined: using %r and all its rights instead; "
        "define %s to confine this component to its role",
        conn_id,
        DEFAULT_MINIO_CONN_ID,
        f"AIRFLOW_CONN_{conn_id.upper()}",
    )


_OPERATION = re.compile(r"^[a-z][a-z_-]*$")


def operation_of(what: str) -> tuple[str, str | None]:
    """The operation and bucket a failure is counted under, from the ``what`` of a storage call
    (``"<operation> <bucket>/<key>"``): an operation is a word (``put``, ``list``, ``stat``); a ``what``
    that starts with anything else (a key, a path) counts as ``transfer``, so error figures group by kind
    of operation, never by object."""
    operation, _, target = what.partition(" ")
    if not _OPERATION.match(operation):
        return "transfer", None
    return operation, target.split("/", 1)[0] or None


@dataclass(frozen=True)
class StorageSettings:
    """What a storage connection says, read once: where the server is and how to reach it, its credentials
    (keys and session token never in the repr), and the extras this provider reads."""

    #: ``host:port`` of the S3 endpoint, and whether it is HTTPS
    endpoint: str
    secure: bool
    region: str | None
    #: TLS verification: ``True``, ``False`` or a CA bundle's path (the ``aws`` connection's ``verify``)
    verify: bool | str
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    #: the session token of temporary keys (extra ``aws_session_token``)
    session_token: str | None = field(default=None, repr=False)
    #: where the credentials come from: ``keys``, ``keys+token``, ``profile``, ``role`` or ``default-chain``
    credentials_method: str = "keys"
    #: extra ``profile_name`` (a profile of the AWS shared files) and extra ``role_arn`` (assumed through STS)
    profile_name: str | None = None
    role_arn: str | None = None
    #: all of the above as read by the amazon provider's AwsConnectionWrapper (storage_credentials.read)
    credentials: ConnectionCredentials | None = field(default=None, repr=False, compare=False)
    #: a backup target's bucket (the ``e2e3d_backup`` connection's extra ``bucket``)
    bucket: str | None = None
    #: the endpoint pre-signed URLs are signed for: the name a browser reaches, where the workers use
    #: another (http://minio:9000 inside compose, http://localhost:9000 outside)
    presign_endpoint: str | None = None
    presign_secure: bool | None = None
    #: seconds a transient error is retried (extra ``retry_deadline``), ``None``: the default
    retry_deadline: float | None = None


class StorageHook(BaseHook):
    """Object storage for E2E3D: buckets, checksummed parallel transfers, presigned URLs, statistics.

    The connection is Airflow's standard ``aws`` type, as Airflow users configure MinIO and S3, or this
    provider's ``e2e3d_s3`` type (the same fields, with a Test button that works against MinIO:
    :class:`S3CompatibleStorageHook`). In extras: ``endpoint_url`` (``http://host:9000``), optional
    ``region_name`` and ``verify`` (``false`` to skip TLS verification, or the path of a CA bundle), and
    ``retry_deadline`` (seconds, below). The credentials are read by the amazon provider's
    ``AwsConnectionWrapper``, as its S3 hook reads them: access key as login and secret key as password
    (extra ``aws_session_token`` for temporary keys), else extra ``profile_name``, extra ``role_arn``
    (assumed through STS at ``service_config.sts.endpoint_url``), else the AWS default credential chain
    (:mod:`~e2e3d_provider.hooks.storage_credentials`).

    Outages: every request (a file of a transfer, a listing page, a HEAD) that meets a transient error (the
    server unreachable or restarting, a dropped connection, a 5xx or throttling answer) is retried with
    jittered exponential backoff (0.5 s doubling to at most 10 s) until ``retry_deadline`` seconds after its
    first attempt: 120 s unless the hook's parameter or the connection's extra ``retry_deadline`` says
    otherwise. Errors no retry cures (refused credentials, AccessDenied, a missing object or bucket, a
    failed TLS verification) fail at once.

    :param minio_conn_id: Airflow connection id (default ``minio_default``).
    :param max_workers: threads for the thread-pool operations (server-side copies).
    :param concurrency: requests in flight at once on the data path (uploads, downloads).
    :param part_size: multipart part size and ranged-GET size in bytes for large files (at least 5 MiB).
    :param attempts: at most this many calls per request or file for transient errors (dropped
        connections, 5xx, timeouts); ``None`` (default): as many as fit in ``retry_deadline``. The only
        retry layer, so an error's "after N attempts" is what was made.
    :param retry_delay: seconds before the first retry; each further one waits about twice as long
        (at most 10 s, jittered).
    :param retry_deadline: seconds after a request's first attempt that it is no longer retried; ``None``
        (default): the connection's extra ``retry_deadline``, else 120.
    :param connect_timeout: seconds to wait for a TCP connection to the endpoint.
    :param read_timeout: seconds to wait for data on an open connection.
    :param connection: an Airflow ``Connection`` already fetched (by a trigger, asynchronously);
        when given, ``minio_conn_id`` only names it in messages.
    """

    conn_name_attr = "minio_conn_id"
    default_conn_name = DEFAULT_MINIO_CONN_ID
    conn_type = "aws"
    hook_name = "E2E3D object storage (MinIO / S3)"

    def __init__(
        self,
        minio_conn_id: str = default_conn_name,
        *,
        max_workers: int = transfer.DEFAULT_WORKERS,
        concurrency: int = transfer.DEFAULT_CONCURRENCY,
        part_size: int = transfer.DEFAULT_PART_SIZE,
        attempts: int | None = DEFAULT_ATTEMPTS,
        retry_delay: float = DEFAULT_DELAY,
        retry_deadline: float | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
        connection: Any = None,
    ) -> None:
        super().__init__()
        self.minio_conn_id = minio_conn_id
        self._connection = connection  # an already fetched Connection (triggers fetch it asynchronously)
        self.max_workers = max_workers
        self.concurrency = concurrency
        self.part_size = part_size
        self._stores: dict[str, Any] = {}
        self.attempts = attempts
        self.retry_delay = retry_delay
        self._retry_deadline = retry_deadline
        RetryPolicy(attempts, retry_delay, retry_deadline or 0.0)  # bad values fail here, not at first use
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._versioning: dict[str, bool] = {}  # bucket -> has had versioning (count_units)
        self._touched: dict[str, set[str]] = {}  # bucket -> usage units written since the last recount
        self._known = UsageCounts()  # units a writer derived from its own listing since (note_counted)
        self._touched_lock = threading.Lock()

    # -----------------------------------------------------------------------------------
    # Connection
    # -----------------------------------------------------------------------------------

    @cached_property
    def settings(self) -> StorageSettings:
        """Endpoint, TLS, region and keys read from the Airflow connection (the keys never in its repr)."""
        try:
            conn = self._connection or self.get_connection(self.minio_conn_id)
        except AirflowNotFoundException as err:
            if self.minio_conn_id in ROLE_CONN_IDS.values():  # a role not set up: the default, said once
                _warn_role_fallback(self.minio_conn_id)
                return StorageHook(DEFAULT_MINIO_CONN_ID).settings
            raise StorageError(
                f"no Airflow connection {self.minio_conn_id!r}: define it (for example as "
                f"AIRFLOW_CONN_{self.minio_conn_id.upper()})"
            ) from err
        extra = conn.extra_dejson or {}
        endpoint = extra.get("endpoint_url") or extra.get("host")
        if not endpoint and conn.host:
            scheme = conn.schema if conn.schema in ("http", "https") else "http"
            endpoint = f"{scheme}://{conn.host}" + (f":{conn.port}" if conn.port else "")
        if not endpoint:
            raise StorageError(
                f"connection {self.minio_conn_id!r} has no endpoint: set extra 'endpoint_url' (e.g. http://minio:9000)"
            )
        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        public = extra.get("presign_endpoint_url") or None
        public_parts = urlsplit(public if "://" in public else f"http://{public}") if public else None
        if public_parts is not None and (public_parts.scheme not in ("http", "https") or not public_parts.netloc):
            raise StorageError(
                f"connection {self.minio_conn_id!r}: extra 'presign_endpoint_url' {public!r} is not an http(s) URL"
            )
        verify = extra.get("verify", True)
        if isinstance(verify, str) and verify.lower() in ("false", "0", "no"):
            verify = False
        elif isinstance(verify, str) and verify.lower() in ("true", "1", "yes"):
            verify = True
        creds = storage_credentials.read(conn, self.minio_conn_id)
        return StorageSettings(
            endpoint=parts.netloc,
            secure=parts.scheme == "https",
            region=creds.region or None,
            verify=verify,
            access_key=creds.access_key,
            secret_key=creds.secret_key,
            session_token=creds.session_token,
            credentials_method=creds.method,
            profile_name=creds.profile_name,
            role_arn=creds.role_arn,
            credentials=creds,
            bucket=extra.get("bucket") or None,
            presign_endpoint=public_parts.netloc if public_parts else None,
            presign_secure=(public_parts.scheme == "https") if public_parts else None,
            retry_deadline=self._extra_deadline(extra.get("retry_deadline")),
        )

    def _extra_deadline(self, value: Any) -> float | None:
        """The connection's extra ``retry_deadline`` as seconds (``None`` when not set)."""
        if value is None or value == "":
            return None
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = -1.0
        if seconds < 0:
            raise StorageError(
                f"connection {self.minio_conn_id!r}: extra 'retry_deadline' {value!r} is not a number of seconds >= 0"
            )
        return seconds

    @cached_property
    def retry(self) -> RetryPolicy:
        """How this hook retries transient errors: its own ``retry_deadline``, else the connection's extra
        ``retry_deadline``, else :data:`~e2e3d_provider.core.retry.DEFAULT_DEADLINE` (120 s)."""
        deadline = self._retry_deadline
        if deadline is None:
            deadline = self.settings.retry_deadline
        return RetryPolicy(
            self.attempts, self.retry_delay, DEFAULT_DEADLINE if deadline is None else deadline, MAX_DELAY
        )

    @property
    def _credentials(self) -> ConnectionCredentials:
        creds = self.settings.credentials
        assert creds is not None  # settings always reads them
        return creds

    @cached_property
    def session_credentials(self) -> Any:
        """The botocore ``Credentials`` of a connection without static keys (a profile, an assumed role, the
        default chain), found on first use (an assumed role: one STS request, refreshed before it expires);
        None for static keys, which need no session. StorageAuthError when no credentials are found."""
        creds = self._credentials
        return None if creds.static else storage_credentials.session_credentials(creds)

    @cached_property
    def minio_credentials(self) -> Provider:
        """The minio-py credentials provider of the control-plane clients (S3 API and MinIO admin API)."""
        return storage_credentials.minio_provider(self._credentials, self.session_credentials)

    def signing_keys(self) -> tuple[str, str, str | None]:
        """Access key, secret key and session token (None for long-lived keys) to sign a URL with now."""
        return storage_credentials.signing_keys(self._credentials, self.session_credentials)

    @property
    def keys(self) -> tuple[str, str]:
        """The connection's own access key and secret key, for what needs them as such: ``bootstrap --roles``
        compares the role connections' keys with the admin's. StorageAuthError when the connection has none
        (its credentials come from a profile, a role or the default chain)."""
        creds = self._credentials
        if not creds.static or not creds.access_key or not creds.secret_key:
            raise StorageAuthError(
                f"connection {self.minio_conn_id!r} has no access key (login) and secret key (password) of its "
                f"own (it uses {creds.describe()}): creating the roles' MinIO users needs the admin's keys there"
            )
        return creds.access_key, creds.secret_key

    @property
    def endpoint_url(self) -> str:
        s = self.settings
        return f"{'https' if s.secure else 'http'}://{s.endpoint}"

    @property
    def presign_endpoint_url(self) -> str:
        """The endpoint pre-signed URLs name: extra ``presign_endpoint_url``, else ``endpoint_url``."""
        s = self.settings
        if not s.presign_endpoint:
            return self.endpoint_url
        return f"{'https' if s.presign_secure else 'http'}://{s.presign_endpoint}"

    @cached_property
    def presign_client(self) -> Minio:
        """The client that signs URLs for :attr:`presign_endpoint_url`. A signature covers the host name,
        so a URL for the browser's name must be signed for that name; this client never sends a request
        (its region is fixed, so minio does not ask that endpoint for the bucket's location)."""
        s = self.settings
        if not s.presign_endpoint:
            return self.client
        return Minio(
            s.presign_endpoint,
            credentials=self.minio_credentials,  # a session token goes into the URL (X-Amz-Security-Token)
            secure=bool(s.presign_secure),
            region=s.region or "us-east-1",
            http_client=self.http,
        )

    def get_conn(self) -> Minio:
        """Return the (cached) MinIO client for this connection."""
        return self.client

    @cached_property
    def client(self) -> Minio:
        s = self.settings
        return Minio(
            s.endpoint,
            credentials=self.minio_credentials,
            secure=s.secure,
            region=s.region,
            http_client=self.http,
            cert_check=s.verify is not False,
        )

    @cached_property
    def http(self) -> urllib3.PoolManager:
        """The HTTP connection pool of the control plane (the minio client's, and signed-URL requests'):
        the connection's TLS settings, the hook's timeouts, no retries of its own."""
        s = self.settings
        pool_args: dict[str, Any] = {}
        if s.secure:
            if s.verify is False:
                pool_args["cert_reqs"] = "CERT_NONE"
            else:
                pool_args["cert_reqs"] = "CERT_REQUIRED"
                if isinstance(s.verify, str):
                    pool_args["ca_certs"] = s.verify
        return urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=self.connect_timeout, read=self.read_timeout),
            maxsize=max(10, self.max_workers * 3),
            retries=False,  # one retry layer only: StorageHook.retry (core/retry.py)
            **pool_args,
        )

    def store(self, bucket: str) -> Any:
        """The ``obstore`` S3 store of ``bucket`` (the data path's client), built from the same connection:
        endpoint, credentials, region and ``verify`` (False, or a CA bundle path); its own retries are off.
        Static keys (with a session token) are given as such; other credentials through a provider obstore
        asks again every few minutes (storage_credentials.obstore_credential_provider)."""
        if bucket not in self._stores:
            s = self.settings
            creds = self._credentials
            if creds.static:
                keys: dict[str, Any] = {"access_key_id": creds.access_key, "secret_access_key": creds.secret_key}
                if creds.session_token:
                    keys["session_token"] = creds.session_token
            else:
                keys = {
                    "credential_provider": storage_credentials.obstore_credential_provider(self.session_credentials)
                }
            options: dict[str, Any] = {
                "allow_http": not s.secure,
                "connect_timeout": timedelta(seconds=self.connect_timeout),
                "read_timeout": timedelta(seconds=self.read_timeout),
                "pool_max_idle_per_host": str(max(16, self.concurrency)),
            }
            if s.verify is False:
                options["allow_invalid_certificates"] = True
            elif isinstance(s.verify, str):
                options["root_certificate"] = Path(s.verify).read_bytes()  # the PEM itself, not its path
            self._stores[bucket] = S3Store(
                bucket,
                endpoint=self.endpoint_url,
                region=s.region or "us-east-1",
                virtual_hosted_style_request=False,
                client_options=options,  # type: ignore[arg-type]
                retry_config={  # one retry layer only: StorageHook.retry (core/retry.py)
                    "max_retries": 0,
                    "retry_timeout": timedelta(seconds=1),
                    "backoff": {
                        "init_backoff": timedelta(milliseconds=100),
                        "max_backoff": timedelta(seconds=1),
                        "base": 2,
                    },
                },
                **keys,
            )
        return self._stores[bucket]

    def engine(self, bucket: str) -> transfer.Engine:
        """The data-path settings of one transfer on ``bucket``."""
        return transfer.Engine(
            self.store(bucket),
            bucket,
            self.client,
            retry=self.retry,
            concurrency=self.concurrency,
            part_size=self.part_size,
        )

    def translate(self, err: BaseException, what: str = "") -> BaseException:
        """Turn a client error into a :class:`StorageError` that names the connection and the fix; each
        failure (after its retries) is counted by operation, bucket and error class, except a lookup's
        "no such object", which is an answer. The provider's own errors (a storage error already, a name or
        path refused, a manifest that cannot be used) already say what failed: they pass unchanged."""
        if isinstance(err, E2E3DError):
            return err
        translated = self._translate(err, what)
        if not isinstance(translated, ObjectNotFoundError):
            telemetry.storage_error(*operation_of(what), translated)
        return translated

    def _translate(self, err: BaseException, what: str) -> BaseException:
        where = f" ({what})" if what else ""
        conn = f"connection {self.minio_conn_id!r} at {self.endpoint_url}"
        refused = tls_failure(err)
        if refused:
            return StorageTLSError(
                f"TLS verification of the object storage server failed for {conn}{where}: {refused}. Set the "
                "connection's extra 'verify' to the CA bundle that signed the server's certificate, and use the "
                "host name the certificate names in endpoint_url."
            )
        if isinstance(err, S3Error):
            if err.code == "AccessDenied":
                return StorageAuthError(
                    f"object storage refused {what or 'the request'} to {conn}: AccessDenied. The keys are "
                    "valid but not allowed this: use the connection of a role granted it (core/roles.py), or "
                    "extend the role's policy."
                )
            if err.code in _AUTH_CODES:
                return StorageAuthError(
                    f"object storage rejected the credentials of {conn}{where}: {err.code}. "
                    f"Check {self._credentials.describe()}."
                )
            if err.code == "NoSuchBucket":
                return BucketNotFoundError(
                    f"bucket {err.bucket_name or what!r} does not exist on {conn}. "
                    "Create the buckets with StorageHook.bootstrap() or "
                    "`e2e3d bootstrap`."
                )
            if err.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return ObjectNotFoundError(f"no object {what or err.object_name!r} on {conn}")
            return StorageError(f"object storage error{where} on {conn}: {err.code}: {err.message}")
        if isinstance(err, obstore.exceptions.PermissionDeniedError) and "AccessDenied" in str(err):
            return StorageAuthError(
                f"object storage refused {what or 'the request'} to {conn}: AccessDenied. The keys are valid but "
                "not allowed this: use the connection of a role granted it (core/roles.py), or extend the role's "
                "policy."
            )
        if isinstance(err, obstore.exceptions.PermissionDeniedError | obstore.exceptions.UnauthenticatedError):
            return StorageAuthError(
                f"object storage rejected the credentials of {conn}{where}. Check {self._credentials.describe()}."
            )
        refused_code = _REFUSED_CREDENTIALS.search(str(err)) if isinstance(err, obstore.exceptions.BaseError) else None
        if refused_code:  # obstore files a 403 it has no class for (InvalidTokenId, ...) as a generic error
            return StorageAuthError(
                f"object storage rejected the credentials of {conn}{where}: {refused_code[1]}. "
                f"Check {self._credentials.describe()}."
            )
        if isinstance(err, FileNotFoundError | obstore.exceptions.NotFoundError) and "Error performing" in str(err):
            if "NoSuchBucket" in str(err):
                return BucketNotFoundError(
                    f"bucket in {what!r} does not exist on {conn}. Create the buckets with StorageHook.bootstrap() "
                    "or `e2e3d bootstrap`."
                )
            return ObjectNotFoundError(f"no object{where} on {conn}")
        if isinstance(err, obstore.exceptions.BaseError) and not is_unreachable(err):
            return StorageError(
                f"object storage error{where} on {conn}: {type(err).__name__}: {str(err).splitlines()[0]}"
            )
        if isinstance(err, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError) or is_unreachable(err):
            return StorageUnreachableError(
                f"object storage is unreachable through {conn}{where} after "
                f"{attempts_made(err)} attempt(s) over {seconds_spent(err):.0f} s: {type(err).__name__}. Check "
                "that the server runs and the connection's endpoint_url; the connection's extra 'retry_deadline' "
                f"(now {self.retry.deadline:g} s) sets how long an outage is waited out."
            )
        if isinstance(err, OSError):
            return err
        return StorageError(f"{type(err).__name__}{where}: {err}")

    def _call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one client call under the retry policy; errors come out translated."""
        try:
            return self.retry.call(lambda: func(*args, **kwargs), what)
        except Exception as err:
            raise self.translate(err, what) from err

    def test_connection(self) -> tuple[bool, str]:
        """List buckets (the amazon hook's STS call fails on MinIO, apache/airflow #43871). A probe: it says
        how things are now, so it waits out at most :data:`PROBE_DEADLINE` seconds, not a whole outage."""
        try:
            probe = replace(self.retry, deadline=min(self.retry.deadline, PROBE_DEADLINE))
            names = [b.name for b in probe.call(lambda: self.client.list_buckets(), "list buckets")]
        except Exception as err:
            return False, str(self.translate(err, "list buckets"))
        return True, f"connected to {self.endpoint_url}; buckets: {', '.join(names) or '(none)'}"

    def health(self) -> dict[str, Any]:
        """Reachability, latency and the buckets seen; never raises."""
        started = time.monotonic()
        ok, message = self.test_connection()
        try:
            endpoint = self.endpoint_url
        except Exception:
            endpoint = None  # the connection itself is missing or incomplete: the message says so
        return {
            "ok": ok,
            "endpoint": endpoint,
            "latency_ms": round((time.monotonic() - started) * 1000, 1),
            "message": message,
        }

    # -----------------------------------------------------------------------------------
    # Buckets
    # -----------------------------------------------------------------------------------

    def bucket_exists(self, bucket: str) -> bool:
        return bool(self._call(f"bucket {bucket}", self.client.bucket_exists, validate_bucket(bucket)))

    def bootstrap(
        self,
        buckets: tuple[str, ...] = DEFAULT_BUCKETS,
        versioned: tuple[str, ...] = VERSIONED_BUCKETS,
        noncurrent_days: int = DEFAULT_NONCURRENT_DAYS,
    ) -> dict[str, str]:
        """Create the buckets if missing; turn versioning on for ``versioned`` and expire their
        noncurrent versions after ``noncurrent_days``. Idempotent; returns bucket -> created|exists."""
        if noncurrent_days < 1:
            raise ValueError("noncurrent_days must be at least 1")
        states = {}
        for bucket in buckets:
            validate_bucket(bucket)
            if self.bucket_exists(bucket):
                states[bucket] = "exists"
            else:
                try:
                    self._call(f"create bucket {bucket}", self.client.make_bucket, bucket)
                    states[bucket] = "created"
                except StorageError as err:
                    if "BucketAlreadyOwnedByYou" not in str(err):
                        raise
                    states[bucket] = "exists"
            if bucket in versioned:
                self._call(f"versioning {bucket}", self.client.set_bucket_versioning, bucket, VersioningConfig(ENABLED))
                rule = Rule(
                    ENABLED,
                    rule_filter=Filter(prefix=""),
                    rule_id=LIFECYCLE_RULE_ID,
                    noncurrent_version_expiration=NoncurrentVersionExpiration(noncurrent_days),
                )
                # a PUT of the lifecycle replaces the bucket's whole configuration: keep every rule an
                # operator added, replace only ours
                current = self._call(f"lifecycle {bucket}", self.client.get_bucket_lifecycle, bucket)
                others = [r for r in (current.rules if current else []) if r.rule_id != LIFECYCLE_RULE_ID]
                config = LifecycleConfig([*others, rule])
                self._call(f"lifecycle {bucket}", self.client.set_bucket_lifecycle, bucket, config)
            self.log.info("bucket %s: %s%s", bucket, states[bucket], " (versioned)" if bucket in versioned else "")
        return states

    def apply_roles(
        self, role_keys: dict[str, tuple[str, str]], backup: tuple[str, str, str] | None = None
    ) -> list[str]:
        """Create or update the least-privilege roles as MinIO users and policies, through MinIO's admin
        API with this connection's keys (the admin role's); role -> (access key, secret key); with
        ``backup`` (access key, secret, bucket) also the backup target's user, limited to its bucket
        (which is created). Idempotent."""
        if backup is not None:
            self.bootstrap(buckets=(backup[2],), versioned=())
        s = self.settings
        admin = storage_roles.admin_client(s.endpoint, self.minio_credentials, s.secure, s.verify)
        where = f"the server of connection {self.minio_conn_id!r} at {self.endpoint_url}"
        try:
            return storage_roles.apply_roles(admin, role_keys, where, backup=backup)
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise self.translate(err, "roles") from err

    def data_usage(self) -> dict[str, Any] | None:
        """The server's own usage figures per bucket, where it keeps them: MinIO's admin data-usage report
        (its scanner's totals, saved at ``lastUpdate``), with this connection's keys (the maintenance role
        may read it). None when the server offers no such API (SeaweedFS: counts per bucket only by a
        listing). Raises StorageAuthError when the keys may not read it."""
        s = self.settings
        admin = storage_roles.admin_client(s.endpoint, self.minio_credentials, s.secure, s.verify)
        where = f"the server of connection {self.minio_conn_id!r} at {self.endpoint_url}"
        try:
            return storage_roles.data_usage(admin, where)
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise self.translate(err, "data usage") from err

    def versioning_enabled(self, bucket: str) -> bool:
        return self._call(f"versioning {bucket}", self.client.get_bucket_versioning, bucket).status == ENABLED

    def noncurrent_expiry_days(self, bucket: str) -> int | None:
        """Days after which the bootstrap lifecycle rule expires noncurrent versions, if set."""
        config = self._call(f"lifecycle {bucket}", self.client.get_bucket_lifecycle, bucket)
        for rule in config.rules if config else []:
            if rule.rule_id == LIFECYCLE_RULE_ID and rule.noncurrent_version_expiration:
                return rule.noncurrent_version_expiration.noncurrent_days
        return None

    # -----------------------------------------------------------------------------------
    # Transfers
    # -----------------------------------------------------------------------------------

    def upload_dir(
        self,
        local_dir: str | Path,
        bucket: str,
        prefix: str = "",
        *,
        files: list[tuple[str, Path]] | None = None,
        checksums: dict[str, str] | None = None,
        on_progress: Any = None,
    ) -> TransferResult:
        """Upload a directory in parallel; files whose stored sha256 equals the local one are skipped.

        ``files`` limits the upload to ``(relpath, path)`` pairs; ``checksums`` maps relpath to a
        sha256 already computed; ``on_progress(files_done, files_total)`` follows each file.
        """
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise FileNotFoundError(f"cannot upload {local_dir}: no such directory")
        bucket, prefix = validate_bucket(bucket), normalize_prefix(prefix)
        self.require_bucket(bucket)
        self._touch(bucket, [prefix + rel for rel, _ in files] if files is not None else [prefix] if prefix else [])
        result = transfer.upload_directory(
            self.engine(bucket),
            local_dir,
            prefix,
            translate=self.translate,
            files=files,
            checksums=checksums,
            on_progress=on_progress,
        )
        self._touch(bucket, [prefix + rel for rel in result.checksums])
        self._log_result(result)
        return result

    def upload_objects(
        self,
        bucket: str,
        items: list[tuple[str, Path]],
        *,
        checksums: dict[str, str] | None = None,
        on_progress: Any = None,
    ) -> TransferResult:
        """Upload ``(key, path)`` pairs in parallel, each skipped when its object already holds the same
        bytes (one HEAD per key); ``checksums`` maps key to a sha256 computed before, checked as sent."""
        bucket = validate_bucket(bucket)
        self.require_bucket(bucket)
        checked = [(validate_relpath(key), Path(path)) for key, path in items]
        self._touch(bucket, [key for key, _ in checked])
        result = transfer.upload_objects(
            self.engine(bucket), checked, translate=self.translate, checksums=checksums, on_progress=on_progress
        )
        self._log_result(result)
        return result

    def upload_file(self, path: str | Path, bucket: str, key: str, *, sha256: str | None = None) -> bool:
        """Upload one file (skipped if identical); returns True if bytes were sent."""
        return self.send_file(path, bucket, key, sha256=sha256).sent

    def send_file(
        self, path: str | Path, bucket: str, key: str, *, sha256: str | None = None
    ) -> transfer.object_io.Sent:
        """Upload one file (skipped if identical, one HEAD decides); returns whether bytes were sent, the
        size and sha256 of what the object holds, and the ETag the server gave it."""
        bucket, key = validate_bucket(bucket), validate_relpath(key)
        self._touch(bucket, [key])
        try:
            return transfer.upload_file(self.engine(bucket), key, Path(path), sha256=sha256)
        except Exception as err:
            raise self.translate(err, f"upload {bucket}/{key}") from err

    def download_prefix(
        self,
        bucket: str,
        prefix: str,
        local_dir: str | Path,
        *,
        delete_extraneous: bool = False,
        manifest: Manifest | None = None,
        expected: Mapping[str, tuple[int, str]] | None = None,
    ) -> TransferResult:
        """Mirror a prefix into ``local_dir`` in parallel, verified; unchanged local files move 0 bytes.

        With ``manifest`` (or ``expected``: relative path -> (size, sha256)), exactly those files are
        fetched and each is checked against that sha256 (the truth for a published job), not against the
        objects' own labels."""
        bucket, prefix = validate_bucket(bucket), normalize_prefix(prefix)
        self.require_bucket(bucket)
        result = transfer.download_prefix(
            self.engine(bucket),
            prefix,
            Path(local_dir),
            translate=self.translate,
            delete_extraneous=delete_extraneous,
            expected=expected if manifest is None else {e.path: (e.size, e.sha256) for e in manifest.files},
        )
        self._log_result(result)
        return result

    def download_file(
        self, bucket: str, key: str, dest: str | Path, *, sha256: str | None = None, size: int | None = None
    ) -> bool:
        """Download one object to ``dest`` (verified, atomic); returns False if ``dest`` already matched.

        With ``sha256`` (and ``size``) from a manifest, the bytes are checked against those, not
        against the object's labels."""
        bucket, key = validate_bucket(bucket), validate_relpath(key)
        remote = self.stat(bucket, key)
        if remote is None:
            raise ObjectNotFoundError(f"no object {bucket}/{key} (connection {self.minio_conn_id!r})")
        if size is not None:
            remote = replace(remote, size=size)
        engine = self.engine(bucket)
        if engine.local_matches(Path(dest), remote, sha256):
            return False
        try:
            transfer.download_object(engine, remote, Path(dest), expected_sha256=sha256)
        except Exception as err:
            raise self.translate(err, f"download {bucket}/{key}") from err
        return True

    def _log_result(self, result: TransferResult) -> None:
        telemetry.transfer_metrics(
            result.direction, result.bucket, result.files, result.bytes, result.skipped_bytes, result.seconds
        )
        rate = f", {result.mb_per_s:.1f} MB/s" if result.bytes else ""  # nothing moved: no throughput to speak of
        self.log.info(
            "%s %s/%s: %d sent (%.1f MB), %d unchanged (%.1f MB) in %.2fs%s",
            result.direction,
            result.bucket,
            result.prefix,
            result.files,
            result.bytes / 1e6,
            result.skipped_files,
            result.skipped_bytes / 1e6,
            result.seconds,
            rate,
        )

    def require_bucket(self, bucket: str) -> None:
        """Raise BucketNotFoundError (naming the connection and the fix) unless ``bucket`` exists."""
        if not self.bucket_exists(bucket):
            raise BucketNotFoundError(
                f"bucket {bucket!r} does not exist on connection {self.minio_conn_id!r} at "
                f"{self.endpoint_url}. Create the buckets with StorageHook.bootstrap() "
                "or `e2e3d bootstrap`."
            )

    # -----------------------------------------------------------------------------------
    # Small objects, listing, deletion
    # -----------------------------------------------------------------------------------

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Write a small object with its sha256 in metadata; returns the sha256."""
        bucket, key = validate_bucket(bucket), validate_relpath(key)
        sha = hashlib.sha256(data).hexdigest()
        self._touch(bucket, [key])
        self._call(  # a fresh stream for each attempt: a retry must send the bytes again, not an empty stream
            f"put {bucket}/{key}",
            lambda: self.client.put_object(
                bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type=content_type,
                metadata={transfer.SHA256_META: sha},
            ),
        )
        return sha

    def get_bytes(
        self, bucket: str, key: str, max_bytes: int = 64 * 1024 * 1024, version_id: str | None = None
    ) -> bytes:
        """Read a small object (or one stored version of it) whole (one GET), verifying its sha256
        metadata when present."""
        bucket, key = validate_bucket(bucket), validate_relpath(key)

        def read() -> tuple[bytes, str | None]:
            try:
                response = self.client.get_object(bucket, key, version_id=version_id)
            except S3Error as err:
                if err.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                    raise ObjectNotFoundError(f"no object {bucket}/{key} (connection {self.minio_conn_id!r})") from err
                raise
            try:
                size = int(response.headers.get("content-length") or 0)
                if size > max_bytes:
                    raise StorageError(
                        f"{bucket}/{key} is {size} bytes, over the {max_bytes} byte limit of get_bytes; "
                        "use download_file"
                    )
                return response.read(), response.headers.get(f"x-amz-meta-{transfer.SHA256_META}")
            finally:
                response.close()
                response.release_conn()

        data, label = self._call(f"get {bucket}/{key}", read)
        if label and hashlib.sha256(data).hexdigest() != label.lower():
            raise ChecksumMismatchError(f"{bucket}/{key}: bytes do not match the recorded sha256")
        return data

    def read_sha256(self, bucket: str, key: str, version_id: str | None = None) -> str:
        """The SHA-256 of an object's bytes (of ``version_id``, else the current ones) as read now
        (streamed; memory stays flat): the truth, where the ``x-amz-meta-sha256`` label is only what some
        writer said."""
        bucket, key = validate_bucket(bucket), validate_relpath(key)

        def read() -> str:
            digest = hashlib.sha256()
            response = self.client.get_object(bucket, key, version_id=version_id)
            try:
                for chunk in response.stream(CHUNK_SIZE):
                    digest.update(chunk)
            finally:
                response.close()
                response.release_conn()
            return digest.hexdigest()

        return str(self._call(f"read {bucket}/{key}", read))

    def object_versions(self, bucket: str, key: str) -> list[transfer.RemoteObject]:
        """Every stored version of exactly ``key`` (delete markers left out), newest first; on a bucket
        without versioning, the object alone."""
        bucket, key = validate_bucket(bucket), validate_relpath(key)

        def versions() -> list[transfer.RemoteObject]:
            found = [
                transfer.RemoteObject(
                    key=o.object_name,
                    size=o.size or 0,
                    etag=etags.clean_etag(o.etag),
                    version_id=o.version_id,
                    last_modified=o.last_modified,
                )
                for o in self.client.list_objects(bucket, prefix=key, include_version=True)
                if o.object_name == key and not o.is_delete_marker
            ]
            return sorted(found, key=lambda o: o.last_modified or datetime.min.replace(tzinfo=UTC), reverse=True)

        return list(self._call(f"list versions {bucket}/{key}", versions))

    def stat(self, bucket: str, key: str) -> transfer.RemoteObject | None:
        """Size, ETag, sha256 and version of an object, or None if it does not exist."""
        bucket, key = validate_bucket(bucket), validate_relpath(key)
        return self._call(f"stat {bucket}/{key}", transfer.stat_remote, self.client, bucket, key)

    def exists(self, bucket: str, key: str) -> bool:
        return self.stat(bucket, key) is not None

    def list_objects(self, bucket: str, prefix: str = "") -> list[transfer.RemoteObject]:
        """Every object below ``prefix`` (key, size, ETag)."""
        bucket, prefix = validate_bucket(bucket), normalize_prefix(prefix)
        return self._call(f"list {bucket}/{prefix}", transfer.list_remote, self.client, bucket, prefix)

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        return [obj.key for obj in self.list_objects(bucket, prefix)]

    def list_versions(self, bucket: str, prefix: str) -> list[listing.Version]:
        """Every stored version and delete marker below ``prefix`` (key, version id, ETag, whether latest),
        in key order: ListObjectVersions pages, each retried on its own. What deleting a set whole by
        version needs, and the current objects' ETags besides, in one listing."""
        bucket, prefix = validate_bucket(bucket), normalize_prefix(prefix)
        query: dict[str, Any] = {"versions": "", "prefix": prefix, "max-keys": "1000"}
        found: list[listing.Version] = []

        def one_page(q: dict[str, Any]) -> listing.VersionPage:
            return listing.parse_versions(self.client._execute("GET", bucket, query_params=q).data)

        while True:
            try:
                page = self.retry.call(partial(one_page, dict(query)), f"list versions {bucket}/{prefix}")
            except Exception as err:
                raise self.translate(err, f"list versions {bucket}/{prefix}") from err
            found.extend(page.versions)
            if not page.truncated:
                return found
            if not page.next_key:
                raise StorageError(f"listing versions of {bucket}/{prefix}: a truncated page named no next page")
            query["key-marker"] = page.next_key
            if page.next_version:
                query["version-id-marker"] = page.next_version
            else:
                query.pop("version-id-marker", None)

    def delete_object(self, bucket: str, key: str) -> None:
        bucket, key = validate_bucket(bucket), validate_relpath(key)
        self._touch(bucket, [key])
        self._call(f"delete {bucket}/{key}", self.client.remove_object, bucket, key)

    def delete_prefix(self, bucket: str, prefix: str, *, all_versions: bool = False) -> int:
        """Delete every object below ``prefix`` in batches; returns how many keys (or versions) went.

        An empty prefix is refused: emptying a whole bucket is not something to do by accident.
        On a versioned bucket only delete markers are added unless ``all_versions`` is set.
        """
        bucket, prefix = validate_bucket(bucket), normalize_prefix(prefix)
        if not prefix:
            raise ValueError("delete_prefix needs a non-empty prefix")
        if all_versions:
            objects = self._call(
                f"list versions {bucket}/{prefix}",
                lambda: list(self.client.list_objects(bucket, prefix=prefix, recursive=True, include_version=True)),
            )
            targets = [DeleteObject(o.object_name, o.version_id) for o in objects]
        else:
            targets = [DeleteObject(key) for key in self.list_keys(bucket, prefix)]
        self._delete(bucket, targets, f"{bucket}/{prefix}", parallel=DELETE_BATCHES_IN_FLIGHT)
        self.log.info(
            "deleted %d %s below %s/%s", len(targets), "versions" if all_versions else "objects", bucket, prefix
        )
        return len(targets)

    def delete_keys(self, bucket: str, keys: Sequence[str]) -> int:
        """Delete these keys with multi-object deletes (1,000 keys a request, a few requests in parallel;
        absent keys are no error); returns how many were asked for. Raises naming the keys the server
        refused."""
        bucket = validate_bucket(bucket)
        targets = [DeleteObject(validate_relpath(key)) for key in keys]
        self._delete(bucket, targets, f"{len(targets)} keys in {bucket}", parallel=DELETE_BATCHES_IN_FLIGHT)
        return len(targets)

    def delete_versions(
        self, bucket: str, versions: Sequence[tuple[str, str | None]], *, parallel: int = DELETE_BATCHES_IN_FLIGHT
    ) -> list[tuple[str, str | None, str]]:
        """Delete these ``(key, version_id)`` stored versions and delete markers for good (a version id of
        None: the key's current version, as :meth:`delete_keys`) with multi-object deletes of at most 1,000 a
        request, ``parallel`` requests in flight, in the order given (list a key's older versions first: the
        server then never looks for a new current version of a key that is going whole). Returns what the
        server refused, as ``(key, version_id, error code)``, so a caller deleting many sets at once can tell
        which ones are whole gone; a request that fails (after its retries) raises. On a server that deletes
        versions faster one request each (:meth:`deletes_versions_singly`: SeaweedFS) the versions go that way,
        :data:`SINGLE_DELETES_IN_FLIGHT` requests in flight, with the same order within each key and the same
        answer."""
        bucket = validate_bucket(bucket)
        targets = [DeleteObject(validate_relpath(key), version_id) for key, version_id in versions]
        self._touch(bucket, [target.name for target in targets])
        if targets and self.deletes_versions_singly(bucket):
            return self._delete_versions_singly(bucket, targets)
        refused: list[tuple[str, str | None, str]] = []
        lock = threading.Lock()

        def delete(batch: list[DeleteObject]) -> None:
            what = f"delete {len(batch)} versions in {bucket}"
            errors = self._call(what, lambda: list(self.client.remove_objects(bucket, iter(batch))))
            with lock:
                refused.extend((e.name or "", e.version_id, e.code) for e in errors)

        # spread over ``parallel`` requests (at most 1,000 versions, at least MIN_DELETE_BATCH each): a server
        # works through one request's list in turn, so a few hundred versions in one request keep the others idle
        size = min(1000, max(MIN_DELETE_BATCH, -(-len(targets) // max(1, parallel))))
        batches = [targets[start : start + size] for start in range(0, len(targets), size)]
        transfer.run_parallel(batches, delete, parallel, lambda batch: batch[0].name, self.translate)
        return refused

    def deletes_versions_singly(self, bucket: str) -> bool:
        """Whether this server deletes stored versions faster with one ``DELETE ?versionId`` request each, many
        in flight, than with multi-object deletes. SeaweedFS (4.48) does: it works through multi-object
        deletes of versions at about the same rate however many requests are in flight (150-550 versions/s with
        3 to 32 requests of 50 to 1,000 versions, on a bucket of 60,000 jobs), and answers 550-770 versions/s
        to single deletes 16 to 32 in flight (retention of 2,000 jobs there: 98-148 jobs/s against 64-85 with
        multi-object deletes, alternating in one session); on MinIO the multi-object delete is the fast way.
        Told by the ``Server`` header of one unsigned HEAD of ``bucket`` (answered, if only with 403, with that
        header; a HEAD of the endpoint's root is not: SeaweedFS answers 405 without it), asked once per
        endpoint; a server that cannot be asked gets multi-object deletes (right everywhere)."""
        endpoint = self.endpoint_url
        with _CONDITION_LOCK:
            if endpoint in _SINGLE_DELETES:
                return _SINGLE_DELETES[endpoint]
        try:
            response = self.http.request("HEAD", f"{endpoint.rstrip('/')}/{validate_bucket(bucket)}")
        except (urllib3.exceptions.HTTPError, OSError):
            return False  # not remembered: the next call asks again
        singly = response.headers.get("Server", "").startswith("SeaweedFS")
        with _CONDITION_LOCK:
            _SINGLE_DELETES[endpoint] = singly
        return singly

    def _delete_versions_singly(self, bucket: str, targets: list[DeleteObject]) -> list[tuple[str, str | None, str]]:
        """:meth:`delete_versions` one request per version, :data:`SINGLE_DELETES_IN_FLIGHT` in flight: each key's
        versions in turn in the order given (so a key's older versions still go before its current one), the
        keys side by side; each request retried on its own. A version already gone counts as deleted (as a
        multi-object delete reports it); any other refusal of the server is returned, not raised."""
        by_key: dict[str, list[DeleteObject]] = {}
        for target in targets:
            by_key.setdefault(target.name, []).append(target)
        refused: list[tuple[str, str | None, str]] = []
        lock = threading.Lock()

        def delete_one(target: DeleteObject) -> str | None:
            try:
                self.client.remove_object(bucket, target.name, version_id=target.version_id)
            except S3Error as err:
                if is_transient(err) or err.code in _AUTH_CODES - {"AccessDenied"}:
                    raise  # retried, or the keys themselves are wrong: nothing of the list can go
                if err.code not in ("NoSuchKey", "NoSuchVersion"):
                    return err.code
            return None

        def delete_key(versions: list[DeleteObject]) -> None:
            for target in versions:
                what = f"delete {bucket}/{target.name} version {target.version_id}"
                code = self._call(what, delete_one, target)
                if code is not None:
                    with lock:
                        refused.append((target.name, target.version_id, code))

        groups = list(by_key.values())
        transfer.run_parallel(groups, delete_key, SINGLE_DELETES_IN_FLIGHT, lambda group: group[0].name, self.translate)
        return refused

    def _delete(self, bucket: str, targets: list[DeleteObject], what: str, parallel: int = 1) -> None:
        self._touch(bucket, [target.name for target in targets])

        def delete(batch: list[DeleteObject]) -> None:
            errors = self._call(f"delete {what}", lambda: list(self.client.remove_objects(bucket, iter(batch))))
            if errors:
                raise StorageError(
                    f"could not delete {len(errors)} objects of {what}: "
                    + "; ".join(f"{e.name}: {e.code}" for e in errors[:5])
                )

        batches = [targets[start : start + 1000] for start in range(0, len(targets), 1000)]
        transfer.run_parallel(batches, delete, parallel, lambda batch: batch[0].name, self.translate)

    def copy_object(
        self,
        src_bucket: str,
        src_key: str,
        dest_bucket: str,
        dest_key: str,
        *,
        if_match: str | None = None,
        size: int | None = None,
        version_id: str | None = None,
    ) -> str | None:
        """Server-side copy, keeping the object's metadata (and so its sha256); returns the new ETag.

        With ``if_match`` the server copies only while the source still has that ETag, else
        :class:`ChecksumMismatchError` (the check and the copy are one step: nothing can change in
        between). ``version_id`` copies that stored version of the source (a repair from history). With
        ``size`` known and at most 5 GiB it is one request; otherwise the client first
        asks the size (a HEAD) to choose between a copy and a multipart compose."""
        src_bucket, src_key = validate_bucket(src_bucket), validate_relpath(src_key)
        dest_bucket, dest_key = validate_bucket(dest_bucket), validate_relpath(dest_key)
        self._touch(dest_bucket, [dest_key])
        source = CopySource(
            src_bucket, src_key, version_id=version_id, match_etag=f'"{if_match}"' if if_match else None
        )

        def copy() -> str | None:
            etag: str | None
            try:
                if size is not None and size <= MAX_SINGLE_COPY:
                    # the CopyObject request minio's copy_object sends after its HEAD, without the HEAD
                    response = self.client._execute(
                        "PUT",
                        dest_bucket,
                        object_name=dest_key,
                        headers=dict(source.gen_copy_headers()),
                    )
                    etag, _ = parse_copy_object(response)
                else:
                    etag = self.client.copy_object(dest_bucket, dest_key, source).etag
            except S3Error as err:
                if err.code == "PreconditionFailed":
                    raise ChecksumMismatchError(
                        f"{src_bucket}/{src_key} is no longer the object it was (ETag not {if_match}); not copied"
                    ) from err
                raise
            return etags.clean_etag(etag)

        return self._call(f"copy {src_bucket}/{src_key}", copy)

    def copy_objects(self, src_bucket: str, dest_bucket: str, pairs: list[tuple[str, str]]) -> int:
        """Server-side copies of ``(src_key, dest_key)`` pairs in parallel (no bytes pass through this
        host), each keeping its metadata; returns how many were copied. On failure the rest is not
        started and the error names every key that failed."""
        src_bucket, dest_bucket = validate_bucket(src_bucket), validate_bucket(dest_bucket)
        checked = [(validate_relpath(src), validate_relpath(dest)) for src, dest in pairs]

        transfer.run_parallel(
            checked,
            lambda pair: self.copy_object(src_bucket, pair[0], dest_bucket, pair[1]),
            self.max_workers,
            lambda pair: pair[0],
            self.translate,
        )
        return len(checked)

    def statistics(self, bucket: str, prefix: str = "", *, partitions: int = COUNT_PARTITIONS) -> dict[str, Any]:
        """What a prefix of a bucket holds: current ``objects`` and their ``bytes``, and what the server
        stores in all (``versions`` and ``stored_bytes``, noncurrent ones included, ``noncurrent_bytes``,
        ``delete_markers``), so space used on a versioned bucket is not understated.

        Counted, never kept: the listings stream. A bucket that has never had versioning is counted by
        plain listings (ListObjectsV2); any other by version listings. A large prefix is split at its
        top-level names into ``partitions`` key ranges listed side by side (``how`` says which way)."""
        bucket, prefix = validate_bucket(bucket), normalize_prefix(prefix)
        versions = self.versions_kept(bucket)
        ranges = self.key_ranges(bucket, prefix, partitions)
        counts = transfer.run_parallel(
            ranges,
            lambda span: self._count_range(bucket, prefix, span, versions=versions),
            len(ranges),
            lambda span: f"{bucket}/{prefix}{span[0] or ''}",
            self.translate,
        )
        totals = {key: sum(c[key] for c in counts) for key in listing.COUNT_FIELDS}
        return {
            "bucket": bucket,
            "prefix": prefix,
            **totals,
            "noncurrent_bytes": totals["stored_bytes"] - totals["bytes"],
            "how": ("version" if versions else "plain") + f" listings in {len(ranges)} key range(s)",
        }

    def count_units(self, bucket: str, units: Iterable[str]) -> UsageCounts:
        """The totals of each usage unit (:mod:`e2e3d_provider.core.usage`) of ``bucket`` as the server holds
        them now: one listing of each unit (versions too on a bucket that has had versioning), in parallel.
        What a writer stores after it changed these units; an empty unit counts all zeros."""
        bucket = validate_bucket(bucket)
        wanted = sorted(set(units))
        counts = UsageCounts()
        if not wanted:
            return counts
        with self._touched_lock:  # counted from now on: only a write after this notes them again
            self._touched.get(bucket, set()).difference_update(wanted)
        versions = self.versions_kept(bucket)

        def count(unit: str) -> tuple[str, dict[str, int]]:
            if unit.endswith("/"):
                return unit, self._count_range(bucket, unit, (None, None), versions=versions)
            return unit, self._count_range(bucket, unit, (unit, unit + "\0"), versions=versions)

        for unit, totals in transfer.run_parallel(
            wanted, count, min(len(wanted), self.max_workers), lambda unit: f"{bucket}/{unit}", self.translate
        ):
            counts.add(bucket, unit, totals)
        return counts

    def _touch(self, bucket: str, keys: Iterable[str]) -> None:
        """Note the usage units of ``keys`` as changed (before the change: a failure half-way changed them
        too). Bounded: past :data:`MAX_TOUCHED_UNITS` a bucket's notes are dropped, and the next
        reconciliation finds what they would have counted."""
        units = {unit_of(key) for key in keys}
        with self._touched_lock:
            known = self._known.units.get(bucket, {})
            for unit in units & known.keys():  # changed again: what its writer derived no longer holds
                del known[unit]
            noted = self._touched.setdefault(bucket, set())
            if len(noted) + len(units) <= MAX_TOUCHED_UNITS:
                noted.update(units)

    def forget_touched(self, bucket: str, units: Iterable[str]) -> None:
        """Drop these units of ``bucket`` from the changed ones: the caller stores their totals itself (it
        knows them without a listing, as retention knows a unit it emptied is empty)."""
        with self._touched_lock:
            self._touched.get(bucket, set()).difference_update(units)

    def take_touched(self) -> dict[str, set[str]]:
        """The units this hook changed since the last call (bucket -> units), forgotten here, with any
        totals :meth:`note_counted` kept for them."""
        with self._touched_lock:
            touched, self._touched = self._touched, {}
            self._known = UsageCounts()
        return {bucket: units for bucket, units in touched.items() if units}

    def list_unit(self, bucket: str, unit: str) -> UnitListing:
        """One listing of the usage unit ``unit`` (a folder) for a writer that checks what it holds and will
        derive its totals after its own further writes (:meth:`UnitListing.after`, then
        :meth:`note_counted`): a version listing on a bucket that has had versioning, else ListObjectsV2."""
        bucket = validate_bucket(bucket)
        started = datetime.now(UTC)
        versioned = self.versions_kept(bucket)
        if versioned:
            found = self.list_versions(bucket, unit)
        else:
            found = [
                listing.Version(obj.key, None, (obj.etag or "").lower() or None, obj.size, True, False)
                for obj in self.list_objects(bucket, unit)
            ]
        return UnitListing(bucket, unit, versioned, found, started)

    def note_counted(self, counts: UsageCounts | None) -> None:
        """Take ``counts`` (units whose totals a writer derived after its last write to them) as what the
        next :meth:`recount_touched` gives for those units, with no listing; None changes nothing (the
        units stay noted as changed and are listed)."""
        if not counts:
            return
        with self._touched_lock:
            for bucket, units in counts.units.items():
                self._touched.get(bucket, set()).difference_update(units)
            self._known = self._known.merge(counts) if self._known else counts

    def recount_touched(self) -> UsageCounts:
        """The fresh totals of every unit this hook changed since the last recount (:meth:`count_units`,
        or what :meth:`note_counted` was given for a unit not changed since): what a writer stores with the
        record of its change, so the kept figures follow every write."""
        with self._touched_lock:
            counts, self._known = self._known, UsageCounts()
        for bucket, units in sorted(self.take_touched().items()):
            counts = counts.merge(self.count_units(bucket, units)) if counts else self.count_units(bucket, units)
        return counts

    def versions_kept(self, bucket: str) -> bool:
        """Whether ``bucket`` has ever had versioning (so it must be counted by version listings); asked
        once per bucket and hook (a bucket's versioning is never turned off)."""
        cached = self._versioning.get(bucket) or _VERSIONS_KEPT.get((self.endpoint_url, bucket))
        if cached is None:
            status = self._call(f"versioning of {bucket}", lambda: self.client.get_bucket_versioning(bucket).status)
            # "Enabled", or "Suspended" with older versions still stored; a bucket that never had versioning
            # answers no status at all (minio's ``status`` None, not "Off")
            cached = self._versioning[bucket] = status in (ENABLED, "Suspended")
            if cached:  # for good: every hook of this process to this server may skip the question
                _VERSIONS_KEPT[(self.endpoint_url, bucket)] = True
        return cached

    def key_ranges(self, bucket: str, prefix: str, partitions: int) -> list[tuple[str | None, str | None]]:
        """Contiguous key ranges ``[first, next first)`` that cover ``prefix`` whole, split at its
        top-level names (one delimiter listing); one range when there are few of them."""
        if partitions <= 1:
            return [(None, None)]
        names = self._call(
            f"list {bucket}/{prefix}",
            lambda: [entry.object_name for entry in self.client.list_objects(bucket, prefix=prefix)],
        )
        if len(names) < partitions * COUNT_NAMES_PER_RANGE:
            return [(None, None)]
        firsts = [None, *(names[i * len(names) // partitions] for i in range(1, partitions))]
        return list(zip(firsts, [*firsts[1:], None], strict=True))

    def _count_range(
        self, bucket: str, prefix: str, span: tuple[str | None, str | None], *, versions: bool
    ) -> dict[str, int]:
        """Totals of the keys in ``[first, stop)`` below ``prefix``, page by page (each page retried on
        its own), starting just below ``first``."""
        first, stop = span
        totals = dict.fromkeys(listing.COUNT_FIELDS, 0)
        for page in self.listing_pages(bucket, prefix, first, versions=versions):
            if listing.count_page(totals, page, first, stop) or not page.truncated:
                break
        return totals

    def listing_pages(
        self, bucket: str, prefix: str = "", first: str | None = None, *, versions: bool
    ) -> Generator[listing.Page, None, None]:
        """The listing pages of ``bucket`` below ``prefix`` from just below ``first`` on (version listings,
        else ListObjectsV2), one at a time and each retried on its own, for a caller that folds them and
        stops when it has what it needs (a page may start a few keys before ``first``: filter them).

        A listing that starts at ``first`` is a version listing on any bucket: SeaweedFS's ListObjectsV2
        ``start-after=job-1`` skips every key below the folder ``job-1/`` (its ``key-marker`` does not),
        and a bucket without versioning lists each object once either way."""
        # keys after the marker: every key from ``first`` on, a few before it. A marker outside the prefix is
        # no seek (the prefix starts later anyway) and MinIO refuses it (NotImplemented)
        marker = first[:-1] if first and first[:-1].startswith(prefix) and len(first) > 1 else None
        versions = versions or marker is not None
        query: dict[str, str] = {"versions": ""} if versions else {"list-type": "2"}
        query |= {"prefix": prefix, "delimiter": "", "max-keys": "1000"}
        if marker:
            query["key-marker" if versions else "start-after"] = marker

        def one_page(q: dict[str, Any]) -> listing.Page:
            return listing.parse_page(self.client._execute("GET", bucket, query_params=q).data)

        while True:
            page = self.retry.call(partial(one_page, dict(query)), f"list {bucket}/{prefix}{first or ''}")
            yield page
            if not page.truncated:
                return
            if not (page.next_version or page.next_key) if versions else not page.next_token:
                raise StorageError(f"listing {bucket}/{prefix}: a truncated page named no next page")
            if versions:
                query["key-marker"] = page.next_key or ""
                if page.next_version:
                    query["version-id-marker"] = page.next_version
                else:
                    query.pop("version-id-marker", None)
            else:
                query.pop("start-after", None)
                query["continuation-token"] = page.next_token or ""

    def list_multipart_uploads(self, bucket: str, prefix: str = "") -> list[transfer.PendingUpload]:
        """Every incomplete multipart upload below ``prefix`` (key, upload id, when it was started)."""
        bucket, prefix = validate_bucket(bucket), normalize_prefix(prefix)

        def pages() -> list[transfer.PendingUpload]:
            found, key_marker, id_marker = [], None, None
            while True:
                page = self.client._list_multipart_uploads(
                    bucket, prefix=prefix, key_marker=key_marker, upload_id_marker=id_marker
                )
                found += [
                    transfer.PendingUpload(u.object_name, u.upload_id, u.initiated_time)
                    for u in page.uploads
                    if u.object_name and u.upload_id
                ]
                # minio 7.2.20 stores NextUploadIdMarker under a misspelt attribute name
                key_marker = page.next_key_marker
                id_marker = page.next_upload_id_marker or getattr(page, "self._next_upload_id_marker", None)
                if not page.is_truncated or not (key_marker or id_marker):
                    return found

        return list(self._call(f"list uploads {bucket}/{prefix}", pages))

    def lists_uploads_by_prefix(self, bucket: str) -> bool:
        """Whether this server lists incomplete multipart uploads below a prefix (SeaweedFS, AWS) or only
        for an exact key (MinIO: a listing of a whole bucket or folder comes back empty). Asked once per
        endpoint and bucket: an upload started on a probe key under ``.e2e3d-probe/`` is looked for by its
        folder, then aborted."""
        cache_key = (self.endpoint_url, bucket)
        with _CONDITION_LOCK:
            if cache_key in _PREFIX_LISTING:
                return _PREFIX_LISTING[cache_key]
        key = probe_key(uuid.uuid4().hex)
        upload_id = self._call(f"probe upload {bucket}/{key}", self.client._create_multipart_upload, bucket, key, {})
        try:
            folder = key.rsplit("/", 1)[0] + "/"
            found = any(u.upload_id == upload_id for u in self.list_multipart_uploads(bucket, folder))
        finally:
            self.abort_multipart_upload(bucket, key, upload_id)
        with _CONDITION_LOCK:
            _PREFIX_LISTING[cache_key] = found
        return found

    def multipart_upload_bytes(self, bucket: str, key: str, upload_id: str) -> int | None:
        """The bytes the uploaded parts of an incomplete multipart upload hold; None if it is gone."""
        bucket, key = validate_bucket(bucket), validate_relpath(key)

        def parts() -> int | None:
            total, marker = 0, None
            while True:
                try:
                    page = self.client._list_parts(bucket, key, upload_id, part_number_marker=marker)
                except S3Error as err:
                    if err.code == "NoSuchUpload":
                        return None
                    raise
                total += sum(int(part.size or 0) for part in page.parts)
                marker = page.next_part_number_marker
                if not page.is_truncated or not marker:
                    return total

        return self._call(f"list parts {bucket}/{key}", parts)

    def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> bool:
        """Abort an incomplete multipart upload (the server drops its parts); False if it was gone already."""
        bucket, key = validate_bucket(bucket), validate_relpath(key)

        def abort() -> bool:
            try:
                self.client._abort_multipart_upload(bucket, key, upload_id)
            except S3Error as err:
                if err.code == "NoSuchUpload":
                    return False
                raise
            return True

        return bool(self._call(f"abort upload {bucket}/{key}", abort))

    # -----------------------------------------------------------------------------------
    # Presigned URLs
    # -----------------------------------------------------------------------------------

    bound_expiry = staticmethod(bound_expiry)

    def presigned_get(self, bucket: str, key: str, expires: timedelta | int | None = None) -> str:
        """A URL that downloads the object without credentials until it expires."""
        bucket, key = validate_bucket(bucket), validate_relpath(key)
        return self._call(
            f"presign GET {bucket}/{key}",
            self.presign_client.presigned_get_object,
            bucket,
            key,
            expires=bound_expiry(expires),
        )

    def presigned_head(self, bucket: str, key: str, expires: timedelta | int | None = None) -> str:
        """A URL that answers ``HEAD`` for the object (size, type, ETag) without credentials until it
        expires: a GET signature does not cover HEAD, the method is part of what is signed."""
        bucket, key = validate_bucket(bucket), validate_relpath(key)
        return self._call(
            f"presign HEAD {bucket}/{key}",
            self.presign_client.get_presigned_url,
            "HEAD",
            bucket,
            key,
            expires=bound_expiry(expires),
        )

    def presigned_put(
        self,
        bucket: str,
        key: str,
        expires: timedelta | int | None = None,
        *,
        create_only_bytes: int | None = None,
    ) -> str:
        """A URL that uploads the object without credentials until it expires.

        With ``create_only_bytes``, the URL also signs ``If-None-Match: *`` and that
        ``Content-Length`` (:func:`~e2e3d_provider.core.presign.upload_headers`): the server accepts
        only a body of exactly that size, and only while no object has the key, so the URL creates one
        object once and can never replace one."""
        bucket, key = validate_bucket(bucket), validate_relpath(key)
        expiry = bound_expiry(expires)
        if create_only_bytes is None:
            return self._call(
                f"presign PUT {bucket}/{key}", self.presign_client.presigned_put_object, bucket, key, expires=expiry
            )
        return self.create_only_grant(bucket, key, create_only_bytes, expiry)[0]

    def create_only_grant(
        self, bucket: str, key: str, size: int, expires: timedelta | int | None = None
    ) -> tuple[str, dict[str, str]]:
        """A pre-signed PUT URL that creates ``bucket/key`` with a body of exactly ``size`` bytes, once, and
        never replaces an object; and the headers its client must send as given. The condition signed is
        the one this server honours (:meth:`create_only_condition`)."""
        bucket, key = validate_bucket(bucket), validate_relpath(key)
        if size < 0:
            raise ValueError(f"an upload size cannot be negative, got {size}")
        headers = upload_headers(size, self.create_only_condition(bucket))
        return self._signed_put(bucket, key, bound_expiry(expires), headers, self.presign_endpoint_url), headers

    def _signed_put(
        self, bucket: str, key: str, expires: timedelta, headers: dict[str, str], endpoint_url: str | None = None
    ) -> str:
        """A PUT URL signing ``headers``, for ``endpoint_url`` (default: the endpoint this hook talks to)."""
        s = self.settings
        access_key, secret_key, session_token = self.signing_keys()
        return presign_put_url(
            endpoint_url or self.endpoint_url,
            bucket,
            key,
            access_key=access_key,
            secret_key=secret_key,
            session_token=session_token,
            region=s.region or "us-east-1",
            expires=expires,
            headers=headers,
        )

    def create_only_condition(self, bucket: str) -> dict[str, str]:
        """The conditional-write headers with which this server refuses to replace an object in ``bucket``.

        Servers differ: SeaweedFS, AWS and current MinIO honour ``If-None-Match: *`` on PUT; MinIO
        RELEASE.2024-01-01 ignores it (and replaces the object) but checks ``If-Match``. So the hook asks the
        server once per endpoint and bucket: it writes a probe object under ``.e2e3d-probe/`` through a
        signed URL with each condition of :data:`CREATE_ONLY_CONDITIONS`, writes it again, and takes the
        first condition the server refused the second time (412); the probes are removed. A server that
        honours none gets no create-only grant at all: :class:`StorageError` says so."""
        cache_key = (self.endpoint_url, bucket)
        with _CONDITION_LOCK:
            if cache_key in _CREATE_ONLY_CONDITION:
                return _CREATE_ONLY_CONDITION[cache_key]
        found = None
        for condition in CREATE_ONLY_CONDITIONS:
            if self._refuses_second_write(bucket, condition):
                found = condition
                break
        if found is None:
            raise StorageError(
                f"the server of connection {self.minio_conn_id!r} at {self.endpoint_url} replaces objects "
                f"despite every conditional write ({', '.join(str(c) for c in CREATE_ONLY_CONDITIONS)}): it "
                "cannot enforce create-only upload grants, so none is given. Upgrade the server."
            )
        with _CONDITION_LOCK:
            _CREATE_ONLY_CONDITION[cache_key] = found
        return found

    def _refuses_second_write(self, bucket: str, condition: dict[str, str]) -> bool:
        """Write a probe object twice through one URL signing ``condition``: True when the server created it
        and then refused (412) the second write; False when it replaced it, or refused to create it."""
        key = probe_key(uuid.uuid4().hex)
        headers = upload_headers(1, condition)
        url = self._signed_put(bucket, key, timedelta(minutes=1), headers)
        http = self.http
        try:
            first = self._call(f"probe {bucket}/{key}", lambda: http.request("PUT", url, body=b"1", headers=headers))
            if first.status == 412:  # the condition refuses even a new key (AWS: If-Match on an absent key)
                return False
            if first.status != 200:
                raise StorageError(
                    f"probing conditional writes in {bucket} at {self.endpoint_url} ({self.minio_conn_id!r}): "
                    f"the first write answered {first.status}: {first.data[:300]!r}"
                )
            second = self._call(f"probe {bucket}/{key}", lambda: http.request("PUT", url, body=b"1", headers=headers))
            return second.status == 412
        finally:
            self.delete_object(bucket, key)


class S3CompatibleStorageHook(StorageHook):
    """The storage hook for connections of this provider's own type, ``e2e3d_s3``: the fields and extras of
    an ``aws`` connection, read the same way (:class:`StorageHook`), for S3-compatible servers such as MinIO.

    Why a type of its own: the UI's Test button runs the hook registered for the connection's type, and for
    ``aws`` that is the amazon provider's, which calls STS GetCallerIdentity, an action MinIO does not serve
    (apache/airflow#43870). For ``e2e3d_s3`` it runs :meth:`StorageHook.test_connection`, which lists the
    buckets. ``aws`` connections keep working with every hook and operator of this provider."""

    conn_type = "e2e3d_s3"
    hook_name = "E2E3D object storage (S3-compatible, e.g. MinIO)"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """How Airflow's connection form shows this type: the endpoint and the other options go in the extra
        (as for ``aws``), the keys in login and password."""
        return {
            "hidden_fields": ["host", "schema", "port"],
            "relabeling": {"login": "Access key ID", "password": "Secret access key"},
            "placeholders": {
                "login": "(empty: extra profile_name, role_arn or the AWS default credential chain)",
                "extra": (
                    '{"endpoint_url": "http://minio:9000", "region_name": "us-east-1", "verify": true, '
                    '"presign_endpoint_url": "http://localhost:9000", "retry_deadline": 120}'
                ),
            },
        }
