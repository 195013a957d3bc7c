"""Storage usage kept as the provider writes: the unit a key is counted in, and a unit's totals.

A bucket's figures are the sum of its *units*: the sets the provider writes and removes as one (a job's
results ``<job_id>/``, a dataset ``<dataset>/``, an archived job ``<job_id>/`` in ``archive``, a run's
hand-off ``.work/<job_id>/``, one of the 256 shards ``.cas/sha256/<2 hex>/`` of the input blobs). After
each change the writer lists the units it touched (one small version listing each), or derives their
totals from the listing it took for its own checks and the writes it made after it (:class:`UnitListing`:
publish), and stores them in PostgreSQL in the transaction that records the change; a trigger keeps the
per-bucket sums.
So a figure is exact without a listing of the bucket, and a reconciliation can correct a unit at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from e2e3d_provider.core.layout import BLOB_AREA
from e2e3d_provider.core.listing import COUNT_FIELDS, Page, Version, count_page
from e2e3d_provider.core.transfer import RemoteObject

#: leading folders that make a unit, by a key's first folder (dot areas hold many sets below them)
_AREA_DEPTH = {BLOB_AREA.split("/")[0]: 3}
#: the depth of any other area whose name starts with a dot (``.work/<job_id>/``)
_DOT_DEPTH = 2
#: the unit a reconciliation files what it found but could not place (a usage API's bucket totals)
UNATTRIBUTED = ""


def unit_of(key: str) -> str:
    """The unit ``key`` is counted in: its first folder with the slash (``job/`` for ``job/a/b.obj``); in a
    dot area as many folders as the area's sets need (``.cas/sha256/ab/``, ``.work/job/``); a key with
    fewer folders than that is its own unit."""
    parts = key.split("/")
    depth = _AREA_DEPTH.get(parts[0], _DOT_DEPTH) if parts[0].startswith(".") else 1
    if len(parts) <= depth:
        return key
    return "/".join(parts[:depth]) + "/"


def units_of(keys: Iterable[str]) -> set[str]:
    """The units of ``keys``."""
    return {unit_of(key) for key in keys}


def in_unit(key: str, unit: str) -> bool:
    """Whether ``key`` is counted in ``unit`` (a folder unit holds what is below it; a key unit, itself)."""
    return key.startswith(unit) if unit.endswith("/") else key == unit


def zero() -> dict[str, int]:
    """Totals of an empty unit."""
    return dict.fromkeys(COUNT_FIELDS, 0)


@dataclass
class UsageCounts:
    """Totals of some units of some buckets as listed at ``counted_at`` (when the listings started: a
    stored count older than a newer one never overwrites it). An empty unit has all-zero totals."""

    units: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # bucket -> unit -> totals
    counted_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def add(self, bucket: str, unit: str, totals: Mapping[str, int]) -> None:
        self.units.setdefault(bucket, {})[unit] = {name: int(totals.get(name, 0)) for name in COUNT_FIELDS}

    def merge(self, other: UsageCounts) -> UsageCounts:
        """This and ``other`` together, counted at the earlier of the two instants."""
        merged = UsageCounts(counted_at=min(self.counted_at, other.counted_at))
        for source in (self, other):
            for bucket, units in source.units.items():
                for unit, totals in units.items():
                    merged.add(bucket, unit, totals)
        return merged

    def rows(self) -> list[tuple[str, str, int, int, int, int, int]]:
        """``(bucket, unit, objects, bytes, versions, stored_bytes, delete_markers)`` of every unit."""
        return [
            (bucket, unit, totals["objects"], totals["bytes"], totals["versions"], totals["stored_bytes"],
             totals["delete_markers"])
            for bucket, units in sorted(self.units.items())
            for unit, totals in sorted(units.items())
        ]  # fmt: skip

    def __bool__(self) -> bool:
        return any(self.units.values())

    def __len__(self) -> int:
        return sum(len(units) for units in self.units.values())


@dataclass
class UnitListing:
    """One listing of a whole unit, taken by a writer for its own checks, that also gives the unit's totals
    after the writer's later writes (:meth:`after`): a publish lists its job once to verify what it sent,
    then deletes stale objects and writes its manifest and SUCCESS, and stores exact figures with no second
    listing. ``versions``: every version and delete marker of the unit (a bucket that never had versioning:
    its objects, each its own latest version)."""

    bucket: str
    unit: str
    versioned: bool
    versions: list[Version]
    counted_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def objects(self) -> dict[str, RemoteObject]:
        """The current objects (key -> what the listing says of it), folder placeholders left out."""
        return {
            v.key: RemoteObject(v.key, v.size, v.etag, version_id=v.version_id)
            for v in self.versions
            if v.latest and not v.delete_marker and v.key and not v.key.endswith("/")
        }

    def after(self, *, deleted: Iterable[str] = (), put: Iterable[tuple[str, int]] = ()) -> UsageCounts | None:
        """The unit's counts once each key of ``deleted`` was deleted (a delete marker on top, on a
        versioned bucket) and then each ``(key, size)`` of ``put`` stored as its key's latest, as the server
        applies them to a bucket with versioning enabled or never had. None when a written key holds a
        ``null`` version (versioning suspended, or objects from before it was enabled: what a write does to
        those is the server's to say) or lies outside the unit; the caller then counts by listing."""
        deleted, put = list(deleted), list(put)
        written = set(deleted) | {key for key, _ in put}
        if any(not in_unit(key, self.unit) for key in written):
            return None
        history: dict[str, list[tuple[int, bool, bool]]] = {}
        for v in self.versions:
            if self.versioned and v.key in written and v.version_id in (None, "null"):
                return None
            history.setdefault(v.key, []).append((v.size, v.latest, v.delete_marker))

        def on_top(key: str, size: int, marker: bool) -> None:
            older = [(s, False, m) for s, _, m in history.get(key, [])] if self.versioned else []
            history[key] = [*older, (size, True, marker)]

        for key in deleted:
            if self.versioned:
                on_top(key, 0, True)
            else:
                history.pop(key, None)
        for key, size in put:
            on_top(key, size, False)
        totals = zero()
        count_page(totals, Page(entries=[(key, *entry) for key, entries in history.items() for entry in entries]))
        counts = UsageCounts(counted_at=self.counted_at)
        counts.add(self.bucket, self.unit, totals)
        return counts
