"""Storage usage kept as the provider writes: the unit a key is counted in, and a unit's totals.

A bucket's figures are the sum of its *units*: the sets the provider writes and removes as one (a job's
results ``<job_id>/``, a dataset ``<dataset>/``, an archived job ``<job_id>/`` in ``archive``, a run's
hand-off ``.work/<job_id>/``, one of the 256 shards ``.cas/sha256/<2 hex>/`` of the input blobs). After
each change the writer lists the units it touched (one small version listing each) and stores their
totals in PostgreSQL in the transaction that records the change; a trigger keeps the per-bucket sums.
So a figure is exact without a listing of the bucket, and a reconciliation can correct a unit at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from e2e3d_provider.core.layout import BLOB_AREA
from e2e3d_provider.core.listing import COUNT_FIELDS

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
