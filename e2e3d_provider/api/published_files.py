"""Which files a job published, remembered per process for the results API's file route.

A viewer loading a tileset through ``/api/v1/jobs/{id}/files/...`` asks for tens or hundreds of files of one job
in a few seconds. Reading the published set for each (:func:`locate_published`: the SUCCESS marker and the
manifest, two GETs and a parse) would cost more than the redirect it decides. So the set is kept here per
job, and each hit checks only that it is still the one published: one ``HEAD`` of the SUCCESS marker,
whose ETag changes with every publish (a republish removes it first, then writes a new one naming the new
manifest). A job whose results moved (retention took the output away: the archive copy is served now)
no longer matches the place remembered and is read again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from e2e3d_provider.core.layout import SUCCESS_NAME
from e2e3d_provider.core.manifest import FileEntry
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.results.published import Place, locate_published, published_places

#: jobs remembered at most (least recently used go first): a few hundred manifests, each a few KB to a
#: few hundred KB (a tileset's tiles), in a process that serves many users
CAPACITY = 256


@dataclass(frozen=True)
class PublishedFiles:
    """A job's published set as the file route needs it: where it is, and its files by run-relative path."""

    place: Place
    marker_etag: str | None
    files: Mapping[str, FileEntry]


def marker_etag(storage: StorageHook, place: Place) -> str | None:
    """The ETag of the SUCCESS marker at ``place`` (None when there is none: not or no longer published)."""
    found = storage.stat(place.bucket, place.prefix + SUCCESS_NAME)
    return found.etag if found is not None else None


class PublishedFilesCache:
    """Published sets by job id, bounded (LRU), safe to share between the API's worker threads.

    :meth:`lookup` raises what :func:`locate_published` raises (ObjectNotFoundError without a SUCCESS,
    ChecksumMismatchError / ManifestError for a set that is not whole), so the caller maps them as the
    results route does."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, PublishedFiles] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, storage: StorageHook, job: Mapping[str, Any]) -> PublishedFiles:
        """The published set of ``job`` (its metadata row, read fresh by the caller), from memory while the
        first place a reader tries still holds the SUCCESS remembered, else read and remembered again."""
        job_id = str(job["job_id"])
        places = published_places(job)
        first = places[0] if places else None
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is not None:
                self._entries.move_to_end(job_id)
        etag = marker_etag(storage, first) if first is not None else None
        # the place too: the archive's SUCCESS is a copy of the output's, the same bytes and so the same ETag
        if entry is not None and entry.place == first and etag is not None and etag == entry.marker_etag:
            return entry
        # the marker is asked for before the manifest is read: a publish in between leaves an older ETag
        # remembered, which the next hit sees differ (never a new ETag over an old manifest)
        place, published = locate_published(storage, job)
        fresh = PublishedFiles(place, etag, {e.path: e for e in published.manifest.files})
        with self._lock:
            if place == first and etag is not None:
                self._entries[job_id] = fresh
                self._entries.move_to_end(job_id)
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
            else:  # served from a later place (the output lacks its SUCCESS): read each time, never kept
                self._entries.pop(job_id, None)
        return fresh
