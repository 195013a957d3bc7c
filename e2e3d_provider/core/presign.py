"""Expiry limits of pre-signed URLs, the one place they are defined (the hook and the API use them)."""

from __future__ import annotations

from datetime import timedelta

MIN_PRESIGN_EXPIRY = timedelta(seconds=1)
MAX_PRESIGN_EXPIRY = timedelta(days=7)  # the S3 API's own limit for SigV4 pre-signed URLs
DEFAULT_PRESIGN_EXPIRY = timedelta(hours=24)


def bound_expiry(expires: timedelta | float | None) -> timedelta:
    """Default 24 h; anything outside 1 s .. 7 days is refused with a clear error."""
    if expires is None:
        return DEFAULT_PRESIGN_EXPIRY
    if not isinstance(expires, timedelta):
        expires = timedelta(seconds=expires)
    if not MIN_PRESIGN_EXPIRY <= expires <= MAX_PRESIGN_EXPIRY:
        raise ValueError(f"presigned URL expiry must be between 1 second and 7 days, got {expires}")
    return expires


MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # largest input image an upload grant allows, unless configured
#: the standard conditional create: the server refuses (412) to replace an existing object
CREATE_ONLY_HEADERS = {"If-None-Match": "*"}
#: the conditional create of servers that ignore ``If-None-Match: *`` on PUT but check ``If-Match`` (MinIO
#: before its 2024 conditional-write support): an ETag no object has, so an existing object fails the
#: precondition (412), while an absent key has nothing to compare and is created
CREATE_ONLY_IF_MATCH_HEADERS = {"If-Match": '"00000000000000000000000000000000"'}
#: the conditions a create-only grant may sign, in the order they are tried on a server
CREATE_ONLY_CONDITIONS = (CREATE_ONLY_HEADERS, CREATE_ONLY_IF_MATCH_HEADERS)


def upload_headers(content_length: int, condition: dict[str, str] | None = None) -> dict[str, str]:
    """The headers a create-only upload grant signs and its client must send exactly as given: the
    server's conditional create (:data:`CREATE_ONLY_CONDITIONS`; the standard one by default) and the size."""
    return {**(condition or CREATE_ONLY_HEADERS), "Content-Length": str(content_length)}


def presign_put_url(
    endpoint_url: str,
    bucket: str,
    key: str,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    expires: timedelta,
    headers: dict[str, str],
    session_token: str | None = None,
) -> str:
    """A SigV4 query-signed PUT URL that also signs ``headers``: the server refuses the request unless
    the client sends each of them with the signed value (so ``If-None-Match: *`` and ``Content-Length``
    bind the URL to creating one object of one size, once). Temporary keys carry their ``session_token``
    in the URL (``X-Amz-Security-Token``)."""
    from urllib.parse import quote

    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"{endpoint_url.rstrip('/')}/{quote(bucket)}/{quote(key, safe='/~')}"
    request = AWSRequest(method="PUT", url=url, headers=dict(headers))
    credentials = Credentials(access_key, secret_key, session_token)
    S3SigV4QueryAuth(credentials, "s3", region, expires=int(expires.total_seconds())).add_auth(request)
    return str(request.url)
