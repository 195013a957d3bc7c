"""The XCom contract (docs/architecture.md, "Data contracts"): what each task hands the next, as types.

Small JSON-safe dicts of object locations and counters, never file contents. Local paths are hints,
valid on ``host`` only; the object locations are the truth a task on another host rebuilds from.
``NotRequired`` marks the keys a value carries only in some runs (models, a hand-off).
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class ObjectLocation(TypedDict):
    """Where a set of objects lives: bucket and key prefix (and its manifest, when it has one)."""

    bucket: str
    prefix: str
    manifest_key: NotRequired[str | None]


class StageInXCom(TypedDict):
    """``stage_in``: a run's directories on ``host`` and the input's place in object storage."""

    dataset: str
    job_id: str
    stamp: str
    host: str
    input_dir: str
    temp_dir: str
    output_dir: str
    files: int
    bytes: int
    transferred_bytes: int
    seconds: float
    source: ObjectLocation | dict[str, Any]
    models_dir: NotRequired[str]
    models: NotRequired[ObjectLocation | None]


class HandOffXCom(TypedDict):
    """Where a run's files wait for the next task."""

    bucket: str
    prefix: str
    manifest_key: str
    files: int
    bytes: int
    sent_bytes: int


class RightSizeXCom(TypedDict):
    """``right_size``: what it wrote beside the originals (and where the run waits, when handed off)."""

    enabled: bool
    variants: int
    original_bytes: int
    variant_bytes: int
    seconds: float
    dropped: list[str]
    handoff: NotRequired[HandOffXCom]


class PublishXCom(TypedDict):
    """``upload_results``: the published set and what crossed the wire."""

    job_id: str
    stamp: str
    bucket: str
    prefix: str
    files: int
    bytes: int
    manifest_key: str
    success_key: str
    uploaded_files: int
    uploaded_bytes: int
    seconds: float


class ArchiveXCom(TypedDict):
    """``archive``: where the run's archive copy is."""

    job_id: str
    stamp: str
    archive_bucket: str
    archive_key: str
    files: int
    bytes: int


class MetadataRecordXCom(TypedDict):
    """``metadata_record``: the job's status as recorded."""

    job_id: str
    status: str
