"""Counting what a bucket holds from its listing pages, without keeping them.

A page of ListObjectsV2 or ListObjectVersions is parsed for what a count needs (key, size, latest,
delete marker) and folded into running totals; the caller asks for the next page with the markers the
page gives. Pages are the unit, not entries: some clients hand a page's delete markers after all its
versions, so an entry stream is not in key order and cannot tell where a key range ends.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import NamedTuple

#: what a count adds up
COUNT_FIELDS = ("objects", "bytes", "versions", "stored_bytes", "delete_markers")


@dataclass
class _Paging:
    """Where the next page of a listing starts: what every listing answer carries besides its entries."""

    truncated: bool = False
    next_key: str | None = None
    next_version: str | None = None
    next_token: str | None = None

    def read_paging(self, name: str, text: str | None) -> None:
        """Take the answer's element ``name`` (with ``text``) when it is one of the paging fields."""
        if name == "IsTruncated":
            self.truncated = (text or "").lower() == "true"
        elif name == "NextKeyMarker":
            self.next_key = text
        elif name == "NextVersionIdMarker":
            self.next_version = text
        elif name == "NextContinuationToken":
            self.next_token = text


@dataclass
class Page(_Paging):
    """One listing page: entries as (key, size, latest, delete marker), and where the next one starts."""

    entries: list[tuple[str, int, bool, bool]] = field(default_factory=list)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def parse_page(body: bytes) -> Page:
    """The entries and continuation markers of a ListObjectsV2 or ListObjectVersions answer."""
    page = Page()
    for child in ET.fromstring(body):
        name = _local(child.tag)
        if name in ("Contents", "Version", "DeleteMarker"):
            key, size, latest = "", 0, True
            for part in child:
                what = _local(part.tag)
                if what == "Key":
                    key = part.text or ""
                elif what == "Size":
                    size = int(part.text or 0)
                elif what == "IsLatest":
                    latest = (part.text or "").lower() != "false"
            page.entries.append((key, size, latest, name == "DeleteMarker"))
        else:
            page.read_paging(name, child.text)
    return page


def count_page(totals: dict[str, int], page: Page, first: str | None = None, stop: str | None = None) -> bool:
    """Add the page's entries with ``first <= key < stop`` to ``totals``; True once the page reached
    ``stop`` (no later page can hold a key of the range)."""
    past = False
    for key, size, latest, marker in page.entries:
        if stop is not None and key >= stop:
            past = True
            continue
        if first is not None and key < first:
            continue
        if marker:
            totals["delete_markers"] += 1
            continue
        if not key or key.endswith("/"):
            continue
        totals["versions"] += 1
        totals["stored_bytes"] += size
        if latest:
            totals["objects"] += 1
            totals["bytes"] += size
    return past


class Version(NamedTuple):
    """One entry of a ListObjectVersions page: a stored version or a delete marker (``etag`` None)."""

    key: str
    version_id: str | None
    etag: str | None
    size: int
    latest: bool
    delete_marker: bool


@dataclass
class VersionPage(_Paging):
    """One ListObjectVersions page with what deleting by version needs, and where the next one starts."""

    versions: list[Version] = field(default_factory=list)


def parse_versions(body: bytes) -> VersionPage:
    """The versions and delete markers (key, version id, ETag without quotes) of a ListObjectVersions
    answer, and its continuation markers."""
    page = VersionPage()
    for child in ET.fromstring(body):
        name = _local(child.tag)
        if name in ("Version", "DeleteMarker"):
            fields: dict[str, str] = {}
            for part in child:
                fields[_local(part.tag)] = part.text or ""
            etag = fields.get("ETag")
            page.versions.append(
                Version(
                    key=fields.get("Key", ""),
                    version_id=fields.get("VersionId") or None,
                    etag=etag.strip('"').lower() or None if etag else None,
                    size=int(fields.get("Size") or 0),
                    latest=fields.get("IsLatest", "true").lower() != "false",
                    delete_marker=name == "DeleteMarker",
                )
            )
        else:
            page.read_paging(name, child.text)
    return page
