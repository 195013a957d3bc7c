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
