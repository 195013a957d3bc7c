"""ETags: what an S3 server says it stored, and how to compute the same from local bytes.

A single-part object's ETag is the MD5 of its bytes; a multipart one's is the MD5 of its parts' MD5s,
a dash and the part count (``...-N``). Uploads compare the ETag the server answered with what they read;
downloads check bytes against it when no sha256 vouches for them; a local file is "already there" when
its ETag, computed with the object's own part size, equals the stored one. Every rule about ETags is
here, so the transfer engine and the per-object steps (:mod:`e2e3d_provider.core.object_io`) only ask.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MIB = 1024 * 1024


def clean_etag(etag: str | None) -> str | None:
    return (etag or "").strip('"').lower() or None


def simple_md5_etag(etag: str | None) -> str | None:
    """The ETag if it is a plain MD5 (single-part upload), else None."""
    etag = clean_etag(etag)
    if etag and len(etag) == 32 and all(c in "0123456789abcdef" for c in etag):
        return etag
    return None


def multipart_etag(part_md5s: list[bytes]) -> str:
    """The ETag S3 servers give a multipart object: MD5 of the parts' MD5s, a dash, the part count."""
    return f"{hashlib.md5(b''.join(part_md5s), usedforsecurity=False).hexdigest()}-{len(part_md5s)}"


def parts_of(etag: str | None) -> int | None:
    """How many parts a multipart ETag says the object was uploaded in (None for a single-part one)."""
    etag = clean_etag(etag)
    if etag and "-" in etag:
        count = etag.rsplit("-", 1)[1]
        return int(count) if count.isdigit() else None
    return None


def local_etag(path: Path, size: int, part_size: int, *, sha: bool = True) -> tuple[str, str]:
    """``(sha256, etag)`` of a local file as this module would store it (single-part MD5 up to one part,
    else the multipart ETag with ``part_size`` parts); one read. Without ``sha`` the sha256 is ``""``."""
    digest = hashlib.sha256()
    md5s: list[bytes] = []
    with open(path, "rb") as handle:
        while chunk := handle.read(part_size):
            if sha:
                digest.update(chunk)
            md5s.append(hashlib.md5(chunk, usedforsecurity=False).digest())
    sha256 = digest.hexdigest() if sha else ""
    if size <= part_size:
        return sha256, (md5s[0].hex() if md5s else hashlib.md5(b"", usedforsecurity=False).hexdigest())
    return sha256, multipart_etag(md5s)


def part_size_of(size: int, etag: str | None, ours: int, max_part: int) -> int:
    """The part size a multipart object of ``size`` bytes was uploaded with, when its ETag's part count
    tells it (so the parts' MD5s give the ETag back): ``ours`` when it fits (what this package's uploads
    use; several sizes may fit the count, ours first), else the smallest whole MiB that gives that count,
    up to ``max_part``; ``ours`` when nothing fits."""
    count = parts_of(etag)
    if count and -(-size // ours) == count:
        return ours
    if count and count > 1:
        guess = -(-size // count)
        guess = -(-guess // MIB) * MIB
        if -(-size // guess) == count and guess <= max_part:
            return guess
    return ours


def md5_mismatch(etag: str | None, md5: str | None, part_md5s: list[bytes] | None) -> str | None:
    """Why bytes read (their MD5, or their parts' MD5s) are not the object ``etag`` names, ``None`` when
    they are; raises LookupError when the ETag cannot be checked against them (neither a plain MD5 nor a
    multipart ETag with as many parts as were read)."""
    if md5 is not None and simple_md5_etag(etag):
        return None if md5 == simple_md5_etag(etag) else f"md5 {md5} != ETag {etag}"
    if part_md5s and parts_of(etag) == len(part_md5s):
        whole = multipart_etag(part_md5s)
        return None if whole == etag else f"multipart ETag {whole} != {etag}"
    raise LookupError(f"ETag {etag} cannot be checked against the bytes read")


def local_part_size(size: int, etag: str | None, ours: int, max_part: int) -> int | None:
    """The part size to compute a local file's ETag with to compare it with ``etag``: the multipart
    upload's (:func:`part_size_of`), the whole file for a plain MD5, ``None`` for an ETag nothing here can
    reproduce."""
    if parts_of(etag):
        return part_size_of(size, etag, ours, max_part)
    if simple_md5_etag(etag):
        return max(size, 1)  # one part: the plain MD5
    return None
