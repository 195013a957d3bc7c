"""Input deduplication: bucket bytes and staging transfers for datasets that share most of their images.

Run:  python -m bench.input_dedup [--images 100] [--shared 0.8] [--datasets 3] [--side 256]

Data: ``--datasets`` datasets of ``--images`` noise PNGs each (incompressible, ``--side`` px square), every
one holding the same ``shared`` fraction of images plus images of its own.
Baseline (same images, same server, same run):
  plain      the layout before content addressing: every dataset's images as objects below ``<dataset>/``
             (``StorageHook.upload_dir``), staged by mirroring the prefix into ``<root>/input/<dataset>``
Ours:
  cas        ``e2e3d ingest``'s path: each distinct image once in ``.cas/sha256/``, a ``dataset.json`` per
             dataset; staged through the worker's content-addressed cache
Prints: bytes each layout occupies in the bucket over the unique bytes (target <= 1.3x), and the bytes that
staging the second dataset on a worker that already staged the first moves, over that dataset's new images'
bytes (target 1.0x). Never used as a test assertion.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import BENCH_CONN_ID, bench_environment


def noise_png(seed: int, side: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=1)
    return out.getvalue()


def make_datasets(base: Path, count: int, images: int, shared: float, side: int) -> dict[str, dict[str, bytes]]:
    n_shared = round(images * shared)
    common = {f"view_{i:03d}.png": noise_png(i, side) for i in range(n_shared)}
    datasets = {}
    for d in range(count):
        own = {f"view_{n_shared + i:03d}.png": noise_png(1000 * (d + 1) + i, side) for i in range(images - n_shared)}
        files = {**common, **own}
        folder = base / f"ds{d}"
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        datasets[f"ds{d}"] = files
    return datasets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--shared", type=float, default=0.8)
    parser.add_argument("--datasets", type=int, default=3)
    parser.add_argument("--side", type=int, default=256)
    args = parser.parse_args()

    with bench_environment("dedup") as base:
        from e2e3d_provider.core.layout import BLOB_AREA, DATASET_MANIFEST_NAME, input_prefix
        from e2e3d_provider.hooks.storage import StorageHook
        from e2e3d_provider.lifecycle.inputs.ingest import ingest
        from e2e3d_provider.lifecycle.worker.input_cache import stage_dataset

        storage = StorageHook(BENCH_CONN_ID)
        storage.bootstrap()
        datasets = make_datasets(base / "src", args.datasets, args.images, args.shared, args.side)
        unique = {hashlib.sha256(d).hexdigest(): len(d) for files in datasets.values() for d in files.values()}
        unique_bytes = sum(unique.values())
        logical = sum(len(d) for files in datasets.values() for d in files.values())

        # ours: content-addressed
        t0 = time.perf_counter()
        for name in datasets:
            ingest(storage, base / "src" / name, f"cas-{name}")
        ingest_s = time.perf_counter() - t0
        blobs = storage.list_objects("input", BLOB_AREA + "/")
        manifests = [storage.stat("input", f"cas-{n}/{DATASET_MANIFEST_NAME}") for n in datasets]
        cas_bytes = sum(o.size for o in blobs) + sum(m.size for m in manifests if m)
        # baseline: plain objects per dataset
        t0 = time.perf_counter()
        for name in datasets:
            storage.upload_dir(base / "src" / name, "input", input_prefix(f"plain-{name}"))
        plain_s = time.perf_counter() - t0
        plain_bytes = sum(o.size for n in datasets for o in storage.list_objects("input", input_prefix(f"plain-{n}")))

        first, second = list(datasets)[:2]
        new_bytes = sum(
            len(d)
            for n, d in datasets[second].items()
            if hashlib.sha256(d).digest() not in {hashlib.sha256(x).digest() for x in datasets[first].values()}
        )
        with tempfile.TemporaryDirectory(dir=base) as cas_root, tempfile.TemporaryDirectory(dir=base) as plain_root:
            stage_dataset(storage, Path(cas_root), f"cas-{first}")
            t0 = time.perf_counter()
            cas_second = stage_dataset(storage, Path(cas_root), f"cas-{second}").transfer
            cas_stage_s = time.perf_counter() - t0
            storage.download_prefix("input", input_prefix(f"plain-{first}"), Path(plain_root) / "input" / first)
            t0 = time.perf_counter()
            plain_second = storage.download_prefix(
                "input", input_prefix(f"plain-{second}"), Path(plain_root) / "input" / second, delete_extraneous=True
            )
            plain_stage_s = time.perf_counter() - t0

    mb = 1e6
    print(
        f"\n{args.datasets} datasets x {args.images} images ({args.side} px noise PNGs), {args.shared:.0%} shared: "
        f"{len(unique)} distinct images, {unique_bytes / mb:.1f} MB unique, {logical / mb:.1f} MB as datasets"
    )
    print("\n| layout | bucket bytes | x unique bytes (target <= 1.3) | ingest s |")
    print("|---|---|---|---|")
    print(f"| plain (baseline) | {plain_bytes:,} | {plain_bytes / unique_bytes:.3f} | {plain_s:.2f} |")
    print(f"| cas (ours) | {cas_bytes:,} | {cas_bytes / unique_bytes:.3f} | {ingest_s:.2f} |")
    print(f"\ncas / plain bucket bytes: {cas_bytes / plain_bytes:.3f}")
    print(f"\nstaging {second} on a worker that staged {first}; its new images hold {new_bytes:,} bytes")
    print("\n| layout | files moved | bytes moved | x new-image bytes (target 1.0) | seconds |")
    print("|---|---|---|---|---|")
    for label, moved, secs in (
        ("plain (baseline)", plain_second, plain_stage_s),
        ("cas (ours)", cas_second, cas_stage_s),
    ):
        print(f"| {label} | {moved.files} | {moved.bytes:,} | {moved.bytes / max(new_bytes, 1):.3f} | {secs:.2f} |")


if __name__ == "__main__":
    main()
