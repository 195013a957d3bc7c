"""Scrub: re-read published results against their manifests, and repair what no longer matches.

For each published run (``succeeded``, ``archived`` or ``damaged``) the scrub reads the set readers get:
its output, or once retention (or ``remove_output_after_archive``) retired that, its archive copy. It reads
the SUCCESS marker, the manifest it names, then every file's bytes (SHA-256). A file missing or with other
bytes is repaired from, in order, an earlier version of the object (versioned ``output``), the run's archive
copy (for its output), or the backup target (which holds contents by SHA-256),
whichever verifies first; the repaired object is read back. Each finding and repair is recorded in
``e2e3d.scrub_findings``. A run that cannot be repaired loses its SUCCESS marker and becomes
``damaged`` (the marker is kept in the job's statistics), so no reader trusts it; a damaged run found
whole again (restored from a backup, say) gets its marker back and its status.

A marker that names no run, another run (other than a newer one PostgreSQL knows, which owns the output now)
or no manifest is not the run's: it is a finding (``mismatch`` on SUCCESS), never skipped in silence, and is
treated as missing: the run's own marker comes back (an earlier version, the archive copy), or the run is damaged.

Each run is scrubbed under its job's lock, so no publish, archive or hygiene of the job runs meanwhile; a
job whose lock another task holds is left for the next scrub. A run whose output was taken away after its
archive copy was complete (``remove_output_after_archive``, retention) is not the scrub's to bring back.

A rolling scrub (``max_bytes``) stops at the first run boundary after it has read that many bytes (a run is
read whole) and carries on from there the next time (``e2e3d.config`` ``scrub_cursor``).

A scrub with ``repair=False`` only verifies (``e2e3d scrub --dry-run``): it reads and reports the same findings
and writes nothing (no repair, no marker removed or put back, no finding, status, usage or cursor recorded).
Each finding then says where a repair would come from (``repairable_from``, ``repaired_from`` stays None), and
``damaged`` names the runs a scrub would find damaged (nothing to repair them from). A manifest that would be
repaired is not read further: its files are checked by the scrub that repairs it.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e3d_provider.core.backup_catalog import backup_blob_key
from e2e3d_provider.core.layout import (
    BUCKET_ARCHIVE,
    BUCKET_OUTPUT,
    MANIFEST_NAME,
    SUCCESS_NAME,
    archive_prefix,
)
from e2e3d_provider.core.manifest import Manifest
from e2e3d_provider.core.marker import SuccessMarker
from e2e3d_provider.core.usage import UsageCounts, unit_of
from e2e3d_provider.exceptions import (
    ChecksumMismatchError,
    E2E3DError,
    ManifestError,
    ObjectNotFoundError,
    RunConflictError,
)
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.durability.backup import BackupTarget
from e2e3d_provider.lifecycle.locks import job_lock
from e2e3d_provider.lifecycle.results.published import published_places

log = logging.getLogger(__name__)

CONFIG_SCRUB_CURSOR = "scrub_cursor"


@dataclass
class ScrubResult:
    """What one scrub read, found and repaired."""

    runs: int = 0
    files: int = 0
    bytes_read: int = 0
    findings: list[dict[str, Any]] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # job ids that could not be repaired
    recovered: list[str] = field(default_factory=list)  # damaged job ids found whole again
    complete_pass: bool = True  # False: a rolling scrub stopped at its byte bound
    errors: list[str] = field(default_factory=list)  # runs that could not be scrubbed (unreachable, say)
    busy: list[str] = field(default_factory=list)  # jobs another task held (publishing, archiving): next time

    @property
    def repaired(self) -> int:
        return sum(1 for f in self.findings if f["repaired_from"])

    def to_xcom(self) -> dict[str, Any]:
        return {**self.__dict__, "repaired": self.repaired, "findings": self.findings[:50]}


@dataclass
class _Scrubber:
    storage: StorageHook
    metadata: MetadataHook
    backup: BackupTarget | None
    spool: Path
    result: ScrubResult
    repair: bool = True  # False: verify only, write nothing

    def run(self, job_id: str, stamp: str) -> None:
        """Scrub one run under its job's lock: no publish, archive or hygiene of the job runs meanwhile; a job
        whose lock another task holds is left for the next scrub (``busy``). A run whose output was retired
        (retention, ``remove_output_after_archive``) is scrubbed in its archive copy, which readers get."""
        try:
            with job_lock(self.metadata, job_id, wait=0):
                job = self.metadata.get_job(job_id, stamp)  # judged again under the lock
                if job is None or job["status"] not in ("succeeded", "archived", "damaged"):
                    return
                places = published_places(job)  # the copy readers get: its output, or the archive copy
                if places:
                    self._run(_Place(places[0].bucket, places[0].prefix, job_id, stamp), job["status"])
        except RunConflictError:
            self.result.busy.append(job_id)

    def _run(self, place: _Place, status: str) -> None:
        job_id, stamp = place.job_id, place.stamp
        kept: bytes | None = None
        reported = False
        try:
            marker: bytes | None = self.storage.get_bytes(place.bucket, place.prefix + SUCCESS_NAME)
        except (ObjectNotFoundError, ChecksumMismatchError):
            marker = None
        if marker is not None and not SuccessMarker.parse(marker).vouches_for(stamp):
            named = SuccessMarker.parse(marker).stamp
            if place.bucket == BUCKET_OUTPUT and self._newer_run(job_id, stamp, named):
                return  # the output holds a newer run of this job: this one was superseded
            # a marker no publish of this run wrote (no stamp, an older or unknown one, no manifest): reported,
            # then treated as missing, so the run's own marker comes back or the run is found damaged
            said = "no manifest" if named == stamp else f"run {named}" if named else "no run"
            self._finding(place, SUCCESS_NAME, "mismatch", None, f"SUCCESS names {said}, not run {stamp}")
            marker, reported = None, True
        if marker is None:
            if place.bucket == BUCKET_OUTPUT:
                if self.metadata.latest_stamps([job_id]).get(job_id) != stamp:
                    return
                archived = archive_prefix(job_id, stamp) + SUCCESS_NAME
                if status == "archived" and self.storage.exists(BUCKET_ARCHIVE, archived):
                    return  # its output was taken away after the archive copy was complete (retention, by choice)
            if status != "damaged" and not reported:
                self._finding(place, SUCCESS_NAME, "missing", None, "no SUCCESS marker")
            kept = self._kept_marker(place)
            if kept is None:
                self._damage(place, None, [SUCCESS_NAME])
                return
        self.result.runs += 1
        vouching = marker if marker is not None else kept
        assert vouching is not None
        manifest_sha = SuccessMarker.parse(vouching).manifest_sha256
        assert manifest_sha is not None  # it vouches for the run
        try:
            manifest = self._manifest(place, manifest_sha)
        except _Repairable:
            return
        broken = [MANIFEST_NAME] if manifest is None else self._files(place, manifest)
        if broken:
            self._damage(place, vouching, broken)
            return
        if not self.repair:
            return
        if marker is None:  # whole: the marker goes back last
            self.storage.put_bytes(place.bucket, place.prefix + SUCCESS_NAME, vouching, "application/json")
            if status != "damaged":
                self.metadata.record_usage(self._usage(place))
        if status == "damaged":  # whole again (repaired here, or restored): what it was before
            job = self.metadata.get_job(job_id, stamp) or {}
            back = "archived" if job.get("archive_key") else "succeeded"
            self.metadata.record_job(
                job_id, stamp, job["dataset"], back, statistics={"damaged": None}, usage=self._usage(place)
            )
            self.result.recovered.append(job_id)

    def _kept_marker(self, place: _Place) -> bytes | None:
        """The run's marker from the job's statistics (kept when it was damaged), an earlier version of
        the object, or (for its output) the archive copy."""
        job = self.metadata.get_job(place.job_id, place.stamp) or {}
        damaged = (job.get("statistics") or {}).get("damaged") or {}
        if damaged.get("marker") and SuccessMarker.parse(str(damaged["marker"]).encode()).vouches_for(place.stamp):
            return str(damaged["marker"]).encode()
        key = place.prefix + SUCCESS_NAME
        for version in self.storage.object_versions(place.bucket, key):
            body = self.storage.get_bytes(place.bucket, key, version_id=version.version_id)
            if SuccessMarker.parse(body).vouches_for(place.stamp):
                return body
        if place.bucket == BUCKET_ARCHIVE:
            return None
        try:
            body = self.storage.get_bytes(BUCKET_ARCHIVE, archive_prefix(place.job_id, place.stamp) + SUCCESS_NAME)
        except ObjectNotFoundError:
            return None
        return body if SuccessMarker.parse(body).vouches_for(place.stamp) else None

    def _newer_run(self, job_id: str, stamp: str, named: str | None) -> bool:
        """Whether ``named`` is a run of the job PostgreSQL knows, newer than ``stamp``: the one case in which
        an output marker naming another run is no finding (that run owns the output now)."""
        return named is not None and named > stamp and self.metadata.get_job(job_id, named) is not None

    def _manifest(self, place: _Place, sha: str) -> Manifest | None:
        key = place.prefix + MANIFEST_NAME
        try:
            raw = self.storage.get_bytes(place.bucket, key)
            problem = None if _sha(raw) == sha else "mismatch"
        except ObjectNotFoundError:
            problem = "missing"
        except ChecksumMismatchError:
            problem = "mismatch"
        if problem:
            source = self._repair(place, MANIFEST_NAME, sha, None)
            self._finding(place, MANIFEST_NAME, problem, source, "the manifest SUCCESS names")
            if source is None:
                return None
            if not self.repair:  # it would be repaired: its files are the repairing scrub's to check
                raise _Repairable
            raw = self.storage.get_bytes(place.bucket, key)
        try:
            return Manifest.from_json(raw)
        except ManifestError:
            return None

    def _files(self, place: _Place, manifest: Manifest) -> list[str]:
        listed = {o.key: o for o in self.storage.list_objects(place.bucket, place.prefix)}
        broken = []
        for entry in manifest.files:
            key = place.prefix + entry.path
            self.result.files += 1
            found = listed.get(key)
            problem: str | None = "missing"
            if found is not None:
                self.result.bytes_read += found.size
                actual = self.storage.read_sha256(place.bucket, key)
                problem = None if found.size == entry.size and actual == entry.sha256 else "mismatch"
            if problem is None:
                continue
            source = self._repair(place, entry.path, entry.sha256, entry.size)
            self._finding(place, entry.path, problem, source, f"manifest: {entry.size} bytes, {entry.sha256[:12]}...")
            if source is None:
                broken.append(entry.path)
        return broken

    def _repair(self, place: _Place, relpath: str, sha: str, size: int | None) -> str | None:
        """Put the bytes with ``sha`` back under the run's ``relpath``; returns where they came from (None
        when nothing could). Only verifying, it returns where they would come from, and writes nothing."""
        bucket, key = place.bucket, place.prefix + relpath
        for version in self.storage.object_versions(bucket, key):
            if size is not None and version.size != size:
                continue
            if self.storage.read_sha256(bucket, key, version.version_id) == sha:
                if not self.repair:
                    return "version"
                self.storage.copy_object(bucket, key, bucket, key, version_id=version.version_id, size=version.size)
                if self._holds(bucket, key, sha):
                    return "version"
        archived = archive_prefix(place.job_id, place.stamp) + relpath
        copy = self.storage.stat(BUCKET_ARCHIVE, archived) if bucket == BUCKET_OUTPUT else None
        if (
            copy is not None
            and (size is None or copy.size == size)
            and self.storage.read_sha256(BUCKET_ARCHIVE, archived) == sha
        ):
            if not self.repair:
                return "archive"
            self.storage.copy_object(BUCKET_ARCHIVE, archived, bucket, key, size=copy.size)
            if self._holds(bucket, key, sha):
                return "archive"
        if self.backup is not None and self.backup.storage.stat(self.backup.bucket, backup_blob_key(sha)):
            if not self.repair:
                return "backup"
            dest = self.spool / sha
            try:
                self.backup.storage.download_file(self.backup.bucket, backup_blob_key(sha), dest, sha256=sha)
                self.storage.upload_file(dest, bucket, key, sha256=sha)
            finally:
                dest.unlink(missing_ok=True)
            if self._holds(bucket, key, sha):
                return "backup"
        return None

    def _holds(self, bucket: str, key: str, sha: str) -> bool:
        try:
            return self.storage.read_sha256(bucket, key) == sha
        except ObjectNotFoundError:
            return False

    def _damage(self, place: _Place, marker: bytes | None, broken: list[str]) -> None:
        if not self.repair:  # verify only: reported, nothing changed
            self.result.damaged.append(place.job_id)
            return
        self.storage.delete_object(place.bucket, place.prefix + SUCCESS_NAME)  # no reader trusts it now
        job = self.metadata.get_job(place.job_id, place.stamp)
        error = (
            f"damaged: {len(broken)} published file(s) in {place.bucket} no earlier version, archive copy or "
            "backup could repair: " + ", ".join(broken[:10])
        )
        if job is not None:
            statistics = {"damaged": {"marker": marker.decode() if marker else None, "files": broken[:100]}}
            self.metadata.record_job(place.job_id, place.stamp, job["dataset"], "damaged", error=error,
                                     statistics=statistics, usage=self._usage(place))  # fmt: skip
        else:
            self.metadata.record_usage(self._usage(place))
        self.result.damaged.append(place.job_id)
        log.error("scrub: job %s run %s is %s", place.job_id, place.stamp, error)

    def _usage(self, place: _Place) -> UsageCounts:
        """The fresh totals of the unit holding ``place`` (what a repair or a removed marker changed)."""
        return self.storage.count_units(place.bucket, [unit_of(place.prefix)])

    def _finding(self, place: _Place, relpath: str, problem: str, source: str | None, detail: str) -> None:
        key = place.prefix + relpath
        finding = {
            "job_id": place.job_id, "stamp": place.stamp, "bucket": place.bucket, "key": key, "problem": problem,
            "repaired_from": source, "detail": detail,
        }  # fmt: skip
        if not self.repair:  # nothing was repaired: where a repair would come from
            finding.update(repaired_from=None, repairable_from=source)
            self.result.findings.append(finding)
            return
        self.result.findings.append(finding)
        self.metadata.record_scrub_findings([finding], usage=self._usage(place) if source else None)
        (log.warning if source else log.error)(
            "scrub: %s/%s %s; %s", place.bucket, key, problem, f"repaired from {source}" if source else "NOT repaired"
        )


class _Repairable(Exception):
    """Only verifying: the manifest would be repaired, so its files are not read against the broken one."""


@dataclass(frozen=True)
class _Place:
    """Where a run's published set is scrubbed: its output, or (once that is retired) its archive copy."""

    bucket: str
    prefix: str
    job_id: str
    stamp: str


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def scrub(
    storage: StorageHook,
    metadata: MetadataHook,
    spool: Path,
    *,
    backup: BackupTarget | None = None,
    job_id: str | None = None,
    max_bytes: int | None = None,
    repair: bool = True,
) -> ScrubResult:
    """Scrub every published run (or ``job_id``'s), or with ``max_bytes`` a rolling share of them; see
    the module. ``spool`` holds a content fetched from the backup on its way back. With ``repair=False``
    it only verifies and writes nothing (a rolling one starts at the saved cursor and leaves it)."""
    result = ScrubResult()
    rolling = max_bytes is not None and job_id is None
    saved = metadata.get_config(CONFIG_SCRUB_CURSOR) if rolling else None
    cursor: tuple[str, str] | None = (saved[0], saved[1]) if saved else None
    spool = spool / "scrub"
    spool.mkdir(parents=True, exist_ok=True)
    scrubber = _Scrubber(storage, metadata, backup, spool, result, repair)
    try:
        while True:
            runs = metadata.published_runs(after=cursor, job_id=job_id)
            if not runs:
                break
            for run_job, stamp, _status in runs:
                if rolling and max_bytes is not None and result.bytes_read >= max_bytes and result.runs:
                    result.complete_pass = False
                    if repair:
                        metadata.set_config(CONFIG_SCRUB_CURSOR, list(cursor) if cursor else None)
                    return result
                try:
                    scrubber.run(run_job, stamp)
                except E2E3DError as err:  # one run that cannot be read never stops the scrub of the rest
                    log.error("scrub: job %s run %s could not be scrubbed: %s", run_job, stamp, err)
                    result.errors.append(f"{run_job}: {err}")
                cursor = (run_job, stamp)
        if rolling and repair:
            metadata.set_config(CONFIG_SCRUB_CURSOR, None)  # a whole pass: the next one starts over
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    return result
