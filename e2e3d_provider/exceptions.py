"""Errors the provider raises; each message says what failed and what to do about it."""

from __future__ import annotations


class E2E3DError(Exception):
    """Base class of every error this provider raises on purpose."""


class StorageError(E2E3DError):
    """Object storage refused or failed a request."""


class StorageAuthError(StorageError):
    """The object store rejected the connection's credentials."""


class StorageUnreachableError(StorageError):
    """The object store's endpoint did not answer within the bounded retries."""


class BucketNotFoundError(StorageError):
    """A bucket the operation needs does not exist."""


class ObjectNotFoundError(StorageError):
    """An object the operation needs does not exist."""


class ChecksumMismatchError(StorageError):
    """Bytes read or written do not match their recorded checksum; nothing was kept."""


class SourceChangedError(StorageError):
    """A local file changed while it was being uploaded; the partial object was removed."""


class TransferError(StorageError):
    """One or more files of a parallel transfer failed after their retries."""

    def __init__(self, message: str, failures: dict[str, BaseException]) -> None:
        super().__init__(message)
        self.failures = failures


class MetadataError(E2E3DError):
    """The metadata database refused a request."""


class InvalidTransitionError(MetadataError):
    """A job status change that the job lifecycle does not allow."""
