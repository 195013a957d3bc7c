"""Where the CPU of deleting stored versions goes: the S3 server's and the client's, per version, in one run.

Run:  python -m bench.delete_cpu [--server seaweedfs|minio] [--versions 7000] [--repeat 2]

Retention's time on SeaweedFS is its version deletes (94-96 % of a run at 100,000 jobs). On a machine
whose cores are all busy, deletes per second = cores / (server CPU + client CPU per delete): this shows
how much of a delete each side spends, and so the most a leaner client could give back.

Each round uploads --versions small objects to the versioned ``output`` bucket (one version each) and
deletes them again, measuring wall seconds, the client's CPU (getrusage of this process) and the
server's (/proc of every ``weed`` / ``minio`` process):

  hook N in flight   ``StorageHook.delete_versions`` as retention calls it (on SeaweedFS one
                     ``DELETE ?versionId`` each, N in flight; on MinIO multi-object deletes)
  minio-py, serial   minio's ``remove_object`` one after another: one request's client cost, no threads
  lean, serial       the same requests signed here (SigV4, the day's key kept) and sent with
                     ``http.client`` on one kept-alive connection: about the least CPU a Python client spends

The last line gives the ceiling: deletes per second if the client took no CPU at all (the machine's cores
over the server's CPU per delete in the hook's best round). Never a test assertion.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import http.client
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import BENCH_CONN_ID, bench_environment
from bench.cpu_split import client_cpu, server_cpu

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
BUCKET = "output"


class LeanSigner:
    """SigV4 header signing of body-less requests, the day's signing key computed once."""

    def __init__(self, access_key: str, secret_key: str, region: str = "us-east-1") -> None:
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self._day, self._key = "", b""

    def headers(self, method: str, host: str, path: str, query: str) -> dict[str, str]:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        if day != self._day:
            key = hmac.new(f"AWS4{self.secret_key}".encode(), day.encode(), hashlib.sha256).digest()
            for part in (self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._day, self._key = day, key
        signed = "host;x-amz-content-sha256;x-amz-date"
        canonical = (
            f"{method}\n{path}\n{query}\nhost:{host}\nx-amz-content-sha256:{EMPTY_SHA256}\nx-amz-date:{stamp}\n\n"
            f"{signed}\n{EMPTY_SHA256}"
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._key, to_sign.encode(), hashlib.sha256).hexdigest()
        return {
            "Host": host,
            "x-amz-content-sha256": EMPTY_SHA256,
            "x-amz-date": stamp,
            "Authorization": f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, SignedHeaders={signed}, "
            f"Signature={signature}",
        }


def lean_deletes(endpoint: str, signer: LeanSigner, versions: list[tuple[str, str]]) -> None:
    """One ``DELETE ?versionId`` after another on one kept-alive plain-HTTP connection."""
    url = urlparse(endpoint)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port)
    try:
        for key, version in versions:
            path, query = f"/{BUCKET}/{quote(key, safe='/~')}", f"versionId={quote(version, safe='~')}"
            connection.request("DELETE", f"{path}?{query}", headers=signer.headers("DELETE", url.netloc, path, query))
            response = connection.getresponse()
            body = response.read()
            if response.status != 204:
                raise RuntimeError(f"DELETE {path}?{query}: {response.status} {body[:200]!r}")
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="seaweedfs", choices=("seaweedfs", "minio"))
    parser.add_argument("--versions", type=int, default=7000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with bench_environment("delete-cpu", server=args.server) as base:
        from e2e3d_provider.hooks import storage as storage_module
        from e2e3d_provider.hooks.storage import StorageHook

        storage = StorageHook(BENCH_CONN_ID)
        storage.bootstrap()
        conn = json.loads(os.environ[f"AIRFLOW_CONN_{BENCH_CONN_ID.upper()}"])
        endpoint = conn["extra"]["endpoint_url"]
        signer = LeanSigner(conn["login"], conn["password"])
        src = base / "src"
        for i in range(args.versions):
            path = src / f"job-{i // 7:05d}" / f"file-{i % 7}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(2048))

        def load() -> list[tuple[str, str]]:
            storage.upload_dir(src, BUCKET, "bench-delete/")
            listed = storage.client.list_objects(BUCKET, prefix="bench-delete/", recursive=True, include_version=True)
            return [(obj.object_name or "", obj.version_id or "") for obj in listed]

        def hook(in_flight: int) -> Callable[[list[tuple[str, str]]], None]:
            def run(versions: list[tuple[str, str]]) -> None:
                storage_module.SINGLE_DELETES_IN_FLIGHT = in_flight
                refused = storage.delete_versions(BUCKET, versions)
                if refused:
                    raise RuntimeError(f"{len(refused)} versions refused: {refused[:3]}")

            return run

        def minio_serial(versions: list[tuple[str, str]]) -> None:
            for key, version in versions:
                storage.client.remove_object(BUCKET, key, version_id=version)

        methods: dict[str, Callable[[list[tuple[str, str]]], None]] = {
            **{f"hook, {n} in flight": hook(n) for n in (8, 16, 32)},
            "minio-py, serial": minio_serial,
            "lean, serial": lambda versions: lean_deletes(endpoint, signer, versions),
        }
        rows: dict[str, list[tuple[float, float, float, int]]] = {name: [] for name in methods}
        for _ in range(args.repeat):
            for name, func in methods.items():
                versions = load()
                server, client, started = server_cpu(), client_cpu(), time.perf_counter()
                func(versions)
                wall = time.perf_counter() - started
                rows[name].append((wall, client_cpu() - client, server_cpu() - server, len(versions)))
        cores = os.cpu_count() or 1
        print(f"\n{args.server}: deleting {args.versions} versions, medians of {args.repeat}; CPU per delete in us\n")
        print(f"{'client':22s} {'wall s':>7s} {'deletes/s':>10s} {'client CPU':>11s} {'server CPU':>11s}")
        best_server = float("inf")
        for name, runs in rows.items():
            wall = statistics.median(r[0] for r in runs)
            n = runs[0][3]
            client = statistics.median(r[1] / r[3] for r in runs) * 1e6
            server = statistics.median(r[2] / r[3] for r in runs) * 1e6
            if name.startswith("hook"):
                best_server = min(best_server, server)
            print(f"{name:22s} {wall:7.2f} {n / wall:10.0f} {client:11.0f} {server:11.0f}")
        print(
            f"\nceiling with a client that takes no CPU: {cores} cores / {best_server:.0f} us of server CPU per delete "
            f"= {cores / best_server * 1e6:.0f} deletes/s"
        )


if __name__ == "__main__":
    main()
