"""Credentials of an object-storage connection, read the way the amazon provider reads an ``aws`` connection.

The connection goes through :class:`~airflow.providers.amazon.aws.utils.connection_wrapper.AwsConnectionWrapper`,
so everything an Airflow user sets on an ``aws`` connection for S3 works here too:

* keys: login/password, or extras ``aws_access_key_id``/``aws_secret_access_key``, with an optional
  ``aws_session_token`` (temporary credentials);
* extra ``profile_name``: a profile of the AWS shared credentials/config files;
* extra ``role_arn`` (with ``assume_role_method``/``assume_role_kwargs``, and the STS endpoint in
  ``service_config.sts.endpoint_url``): credentials assumed through STS and refreshed before they expire;
* nothing at all: the AWS default credential chain (environment, shared files, container or instance role).

Static keys (the usual MinIO/SeaweedFS connection) stay cheap: they are read from the wrapper and no boto3
session is created, and the amazon provider's session module (about half a second to import) is not loaded.
Everything else goes through the provider's ``BaseSessionFactory`` and comes out as a botocore
``Credentials`` object, which the two S3 clients consume through :class:`BotocoreMinioProvider` (minio-py)
and :func:`obstore_credential_provider` (obstore): both ask it again for every request or every few minutes,
so refreshed credentials are picked up.

No key, secret or token appears in a repr, a message or a log line of this module.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from minio.credentials import Credentials as MinioCredentials
from minio.credentials import Provider, StaticProvider

from e2e3d_provider.exceptions import StorageAuthError, StorageUnreachableError

#: how long obstore keeps one set of credentials before asking the provider again. botocore hands out refreshable
#: credentials only while they have more than 10 minutes left (its mandatory refresh window), so 5 minutes is safe
OBSTORE_CREDENTIAL_TTL = timedelta(minutes=5)
#: where a connection without credentials of its own looks: said in the error when none is found
SOURCES = (
    "login/password (or extras aws_access_key_id/aws_secret_access_key, with aws_session_token for temporary "
    "keys), extra profile_name, extra role_arn, or the AWS default chain (AWS_ACCESS_KEY_ID/"
    "AWS_SECRET_ACCESS_KEY, AWS_PROFILE and the shared credentials file, a container or instance role)"
)
#: the wrapper logs at INFO where it found keys, on every hook; this keeps that out of task logs (WARNING and up
#: pass). Lower its level to see them.
WRAPPER_LOG = logging.getLogger("e2e3d_provider.hooks.storage_credentials.aws_connection")
WRAPPER_LOG.setLevel(logging.WARNING)


@dataclass(frozen=True)
class ConnectionCredentials:
    """What a connection says about its credentials, read without any request: the static keys (never in the
    repr) when it has them, else how they are to be found (a profile, a role, the default chain)."""

    conn_id: str
    #: ``keys``, ``keys+token``, ``profile``, ``role`` or ``default-chain``
    method: str
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    profile_name: str | None = None
    role_arn: str | None = None
    region: str | None = None
    #: the AwsConnectionWrapper itself (its own repr shows the keys, so it is kept out of this one)
    wrapper: Any = field(default=None, repr=False, compare=False)

    @property
    def static(self) -> bool:
        """True when the keys are in the connection itself: no session, no request needed to sign."""
        return self.method in ("keys", "keys+token")

    def describe(self) -> str:
        """Where the credentials come from, for messages (names only, never a key)."""
        if self.method == "keys":
            return "its access key (login) and secret key (password)"
        if self.method == "keys+token":
            return "its temporary keys (login, password and extra aws_session_token)"
        if self.method == "profile":
            return f"profile {self.profile_name!r} of the AWS shared credentials/config files"
        if self.method == "role":
            return f"role {self.role_arn!r} assumed through STS"
        return "the AWS default credential chain"


@functools.cache
def _wrapper_class() -> Any:
    """The amazon provider's AwsConnectionWrapper, logging to :data:`WRAPPER_LOG` (imported on first use)."""
    from airflow.providers.amazon.aws.utils.connection_wrapper import AwsConnectionWrapper

    class QuietAwsConnectionWrapper(AwsConnectionWrapper):
        # LoggingMixin's logger (typed as structlog's, a stdlib one works the same): a stdlib logger whose level
        # drops the INFO lines on where the keys were found, noise on every hook
        _log = WRAPPER_LOG  # type: ignore[assignment]

    return QuietAwsConnectionWrapper


def read(conn: Any, conn_id: str) -> ConnectionCredentials:
    """Read the credential part of ``conn`` (an Airflow ``Connection`` of type ``aws`` or ``e2e3d_s3``)
    through the amazon provider's wrapper, as its S3 hook would; no request is made."""
    # as an ``aws`` connection whatever its type (e2e3d_s3 is one with a Test button of its own), so the
    # wrapper does not warn about the type
    wrapper = _wrapper_class().from_connection_metadata(
        conn_id=conn_id, login=conn.login, password=conn.password, extra=conn.extra_dejson or {}
    )
    if wrapper.role_arn:
        method = "role"
    elif wrapper.profile_name:
        method = "profile"
    elif wrapper.aws_access_key_id and wrapper.aws_secret_access_key:
        method = "keys+token" if wrapper.aws_session_token else "keys"
    else:
        method = "default-chain"
    static = method in ("keys", "keys+token")
    return ConnectionCredentials(
        conn_id=conn_id,
        method=method,
        access_key=wrapper.aws_access_key_id if static else None,
        secret_key=wrapper.aws_secret_access_key if static else None,
        session_token=wrapper.aws_session_token if static else None,
        profile_name=wrapper.profile_name,
        role_arn=wrapper.role_arn,
        region=wrapper.region_name,
        wrapper=wrapper,
    )


def session_credentials(creds: ConnectionCredentials) -> Any:
    """The botocore ``Credentials`` of a connection without static keys, from a boto3 session made by the
    amazon provider's ``BaseSessionFactory`` (a profile, an assumed role refreshed before it expires, or the
    default chain). Raises :class:`StorageAuthError` when nothing yields credentials."""
    import botocore.exceptions
    from airflow.providers.amazon.aws.hooks.base_aws import BaseSessionFactory

    where = f"connection {creds.conn_id!r}"
    try:
        # STS is signed for a region: us-east-1 when the connection names none (MinIO's and AWS's global one)
        session = BaseSessionFactory(conn=creds.wrapper, region_name=creds.region or "us-east-1").create_session()
        found = session.get_credentials()
    except botocore.exceptions.ProfileNotFound as err:
        raise StorageAuthError(
            f"{where}: profile {creds.profile_name!r} is in no AWS shared credentials/config file ({err}); "
            "set AWS_SHARED_CREDENTIALS_FILE/AWS_CONFIG_FILE, or fix the connection's extra profile_name"
        ) from err
    except botocore.exceptions.ClientError as err:  # STS refused the role (or its caller's keys)
        raise StorageAuthError(
            f"{where}: could not get credentials from {creds.describe()}: {err}. Check role_arn, the keys that "
            "assume it and the STS endpoint (extra service_config.sts.endpoint_url)"
        ) from err
    except botocore.exceptions.EndpointConnectionError as err:
        raise StorageUnreachableError(
            f"{where}: the STS endpoint for {creds.describe()} is unreachable: {err}. Set extra "
            "service_config.sts.endpoint_url (for MinIO: its own endpoint_url)"
        ) from err
    except botocore.exceptions.BotoCoreError as err:
        raise StorageAuthError(f"{where}: could not get credentials from {creds.describe()}: {err}") from err
    if found is None:
        raise StorageAuthError(f"{where} has no credentials and none were found: set {SOURCES}")
    return found


class BotocoreMinioProvider(Provider):
    """minio-py's credentials :class:`~minio.credentials.Provider` over botocore ``Credentials``: minio asks
    for every request, botocore refreshes (an assumed role) when they near expiry."""

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials

    def retrieve(self) -> MinioCredentials:
        frozen = self._credentials.get_frozen_credentials()
        return MinioCredentials(frozen.access_key, frozen.secret_key, frozen.token)

    def __repr__(self) -> str:
        return f"BotocoreMinioProvider(method={getattr(self._credentials, 'method', None)!r})"


def minio_provider(creds: ConnectionCredentials, session: Any = None) -> Provider:
    """The minio-py credentials of a connection: its static keys (with the session token), else ``session``
    (the botocore credentials of :func:`session_credentials`)."""
    if creds.static:
        return StaticProvider(creds.access_key or "", creds.secret_key or "", creds.session_token)
    return BotocoreMinioProvider(session)


def obstore_credential_provider(credentials: Any) -> Callable[[], dict[str, Any]]:
    """An obstore ``credential_provider`` over botocore ``Credentials``: obstore calls it (from its own threads)
    when the last answer is :data:`OBSTORE_CREDENTIAL_TTL` old."""

    def provide() -> dict[str, Any]:
        frozen = credentials.get_frozen_credentials()
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": datetime.now(UTC) + OBSTORE_CREDENTIAL_TTL,
        }

    return provide


def signing_keys(creds: ConnectionCredentials, session: Any = None) -> tuple[str, str, str | None]:
    """Access key, secret key and session token to sign one request or URL with, now."""
    if creds.static:
        return creds.access_key or "", creds.secret_key or "", creds.session_token
    frozen = session.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token
