"""Every error the provider raises, all under :class:`E2E3DError`; each message says what failed and
what to do about it. No Airflow imports: the storage core raises these too."""

from __future__ import annotations


class E2E3DError(Exception):
    """Base class of every error this provider raises on purpose."""


class InvalidNameError(E2E3DError, ValueError):
    """An id, stamp, bucket or relative path that the naming contract rejects (before any I/O)."""


class UnsafePathError(InvalidNameError):
    """A local path refused before anything is read, written or removed through it: it lies outside the
    data root where the contract puts it, or its way passes through a symbolic link (which could lead out)."""


class ManifestError(E2E3DError, ValueError):
    """A manifest that cannot be read, or a run directory that does not match its manifest."""


class RunMismatchError(ManifestError):
    """A published set, archive copy or hand-off names another job or run than the one asked for (PostgreSQL's
    record of it): a stale copy, or one a writer put there. Nothing is copied over it or served from it.
    ``found`` is the run (stamp) it names, when it names one."""

    def __init__(self, message: str, found: str | None = None) -> None:
        super().__init__(message)
        self.found = found


class UnreadablePathError(E2E3DError, OSError):
    """A file or folder a transfer or publish must read cannot be read; nothing is skipped in silence."""


class IngestIncompleteError(E2E3DError):
    """An ingest stopped part-way; the message says how many images are stored and that a rerun completes it."""


class InvalidInputError(E2E3DError):
    """An input folder holds files that are not images (or no images at all)."""


class MissingInputError(E2E3DError, FileNotFoundError):
    """A dataset or models prefix a run needs has no objects in object storage: upload it first. A retry
    of the task cannot help."""


class LocalPathError(E2E3DError, FileNotFoundError):
    """A local path handed on from another task does not exist on this host."""


class StorageError(E2E3DError):
    """Object storage refused or failed a request."""


class StorageAuthError(StorageError):
    """The object store rejected the connection's credentials."""


class StorageTLSError(StorageError):
    """The object storage server's TLS certificate is not trusted, or not for the host connected to."""


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


class RunFinishedError(MetadataError):
    """A run of a job that already succeeded or was archived was started again (an Airflow Clear)."""


class RunConflictError(MetadataError):
    """Another DAG run is already working on this run of the job (same job id and stamp)."""


class StackError(E2E3DError, RuntimeError):
    """The embedded local stack could not be started, found or stopped."""


class ReconstructionError(E2E3DError, RuntimeError):
    """The demo reconstruction cannot use its input (no images, unreadable images)."""


class RightSizeInputError(E2E3DError, ValueError):
    """A result cannot be right-sized: a corrupt or empty mesh, image or point cloud, an unsupported
    pixel mode, NaN coordinates. The original is left exactly as it was."""
