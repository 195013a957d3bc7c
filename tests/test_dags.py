"""The example DAGs: they load, the lifecycle runs end to end, failures are recorded and cleaned,
maintenance works on seeded old jobs; ingest and the demo command."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import laspy
import pygltflib
import pytest
import trimesh
from PIL import Image

from e2e3d_provider.core.layout import RunLayout, archive_prefix, job_id_from_run_id
from e2e3d_provider.devstack.demo import SAMPLE_DIR as SAMPLE
from e2e3d_provider.devstack.demo import VIEWER_PATH, viewer_lines
from e2e3d_provider.example_dags import DAGS_DIR
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.inputs.datasets import read_dataset
from e2e3d_provider.lifecycle.inputs.ingest import InvalidInputError, ingest
from tests.helpers import REPO, load_repo_dag, load_textured, task_states, write_files, xcom
from tests.tileset_check import accessor, check_tileset, walk_tiles


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("E2E3D_DATA_ROOT", str(tmp_path / "data"))
    return tmp_path / "data"


def test_every_dag_loads_without_import_errors() -> None:
    from airflow.dag_processing.dagbag import DagBag

    for folder, expected in (
        (DAGS_DIR, {"e2e3d_reconstruction", "e2e3d_maintenance", "e2e3d_backup"}),
        (REPO / "tests" / "dags", {"e2e3d_test_blocks", "e2e3d_test_deferrable"}),
    ):
        bag = DagBag(dag_folder=str(folder))
        assert bag.import_errors == {}, bag.import_errors
        assert expected <= set(bag.dag_ids)
    lifecycle = DagBag(dag_folder=str(DAGS_DIR)).dags["e2e3d_reconstruction"]
    assert {"dataset", "job_id"} <= set(lifecycle.params)
    assert lifecycle.get_task("cleanup").trigger_rule == "all_done_min_one_success"
    assert "prepare" in lifecycle.get_task("cleanup").upstream_task_ids
    assert lifecycle.get_task("mark_failed").trigger_rule == "one_failed"


def test_job_ids_derived_from_run_ids_are_valid() -> None:
    assert job_id_from_run_id("manual__2026-11-24T10:00:00+00:00") == "manual__2026-11-24T10-00-00-00-00"
    assert job_id_from_run_id("__..x..") == "x"
    assert len(job_id_from_run_id("a" * 300)) == 128


def test_lifecycle_dag_end_to_end(
    run_dag, storage: StorageHook, metadata: MetadataHook, data_root: Path, unique_id: str, tmp_path: Path
) -> None:
    dataset = f"ds-{unique_id}"
    ingest(storage, SAMPLE, dataset)
    stale = data_root / "temp" / "a-run-of-three-days-ago"  # scratch a crashed run left on this worker
    stale.mkdir(parents=True)
    os.utime(stale, (time.time() - 3 * 86400,) * 2)
    dag = load_repo_dag("e2e3d_reconstruction.py", "e2e3d_reconstruction")
    tiny_tiles = {"tile_threshold": 128, "tile_size": 128, "mip_min_size": 64}  # the demo's 256 px texture is tiled
    dr = run_dag(dag, {"dataset": dataset, "job_id": unique_id, "right_size_settings": tiny_tiles})
    states = task_states(dr)
    assert str(dr.state) == "success", states
    assert states.pop("mark_failed") == "skipped" and set(states.values()) == {"success"}, states

    prepared = xcom(dr, "prepare")
    stamp = prepared["stamp"]
    run = RunLayout(data_root, unique_id, stamp)
    manifest = json.loads(storage.get_bytes("output", f"{unique_id}/metadata.json"))
    entries = {e["path"]: e for e in manifest["files"]}
    originals = {
        "mesh/reconstructed_mesh.obj",
        "mesh/reconstructed_mesh.mtl",
        "textures/texture.png",
        "pointcloud/pointcloud.ply",
    }
    assert {p for p, e in entries.items() if e["role"] == "original"} == originals  # at the seed's keys
    assert entries["logs/reconstruct.log"]["role"] == "intermediate"
    assert manifest["dropped"] == [
        {"prefix": "temp/", "files": 1, "bytes": (run.run_dir / "temp" / "mean_image.npy").stat().st_size}
    ]
    variants = {p: e for p, e in entries.items() if e["role"] in ("lod", "web", "tile", "stream")}
    assert len(variants) == len(entries) - 5
    assert {(e["source"], e["role"]) for e in variants.values()} >= {
        ("mesh/reconstructed_mesh.obj", "lod"),
        ("mesh/reconstructed_mesh.obj", "web"),
        ("textures/texture.png", "web"),
        ("textures/texture.png", "tile"),
        ("pointcloud/pointcloud.ply", "lod"),
        ("mesh/reconstructed_mesh.obj", "stream"),
        ("pointcloud/pointcloud.ply", "stream"),
    }
    for entry in manifest["files"]:
        remote = storage.stat("output", f"{unique_id}/{entry['path']}")
        assert (remote.size, remote.sha256) == (entry["size"], entry["sha256"])
        assert hashlib.sha256((run.run_dir / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
        archived = storage.stat("archive", archive_prefix(unique_id, stamp) + entry["path"])
        assert archived.sha256 == entry["sha256"]
    assert storage.exists("output", f"{unique_id}/SUCCESS")
    assert storage.exists("archive", archive_prefix(unique_id, stamp) + "SUCCESS")
    assert manifest["statistics"]["images"] == 6 and manifest["statistics"]["faces"] > 0

    # an independent reader opens every published variant (fetched from the bucket) and finds its figures
    fetched = tmp_path / "fetched"
    for path in [*variants, *originals]:
        local = fetched / path
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(storage.get_bytes("output", f"{unique_id}/{path}"))
    for path, entry in variants.items():
        assert independent_counts(fetched / path) == expected_counts(entry), path
    assert check_tileset(fetched / "mesh/tiles/reconstructed_mesh/tileset.json") == []  # as published
    for path in originals - {"mesh/reconstructed_mesh.mtl"}:
        assert independent_counts(fetched / path) == expected_counts(entries[path]), path
    texture = load_textured(fetched / "mesh/lod1/reconstructed_mesh.obj").visual.material.image  # via its MTL
    assert texture is not None and texture.size == Image.open(fetched / "textures/texture.png").size

    job = metadata.get_job(unique_id, stamp)
    assert job["status"] == "archived" and job["dataset"] == dataset and job["files"] == len(entries)
    assert job["archive_key"] == f"archive/{archive_prefix(unique_id, stamp)}"
    inventory = metadata.job_files(unique_id, stamp)
    assert {(r["key"].split("/", 1)[1], r["role"], r["source"], r["level"]) for r in inventory} == {
        (p, e["role"], e.get("source"), e.get("level")) for p, e in entries.items()
    }
    assert all(r["figures"] == entries[r["key"].split("/", 1)[1]].get("figures") for r in inventory)
    with metadata.transaction() as cur:
        cur.execute(
            "SELECT direction, split_part(transfer_key, '/', 3), files FROM e2e3d.transfers WHERE job_id = %s",
            (unique_id,),
        )
        transfers = {(direction, task): files for direction, task, files in cur.fetchall()}
    assert transfers == {
        ("download", "stage_in"): 6,  # the images
        ("upload", "reconstruct:handoff"): 6,  # results (and its temp/ file) handed on through object storage
        ("upload", "right_size:handoff"): len(variants) + 1,  # the variants and their record; originals skipped
        ("copy", "upload_results"): len(entries),  # published by server-side copies
    }
    assert not run.temp_dir.exists() and run.run_dir.exists()  # temp cleaned, results kept locally
    assert not stale.exists()  # the worker's own tasks swept its scratch: no maintenance DAG ran
    cached = {p.name for p in (data_root / "cache" / "sha256").glob("*/*")}  # the content-addressed input cache
    assert cached == {hashlib.sha256(p.read_bytes()).hexdigest() for p in SAMPLE.iterdir()}
    assert xcom(dr, "stage_in")["output_dir"] == str(run.run_dir)
    assert xcom(dr, "right_size")["variants"] == len(variants)


def test_failing_reconstruct_marks_the_job_failed_and_still_cleans(
    run_dag, storage: StorageHook, metadata: MetadataHook, data_root: Path, unique_id: str
) -> None:
    dataset = f"bad-{unique_id}"
    for i in range(2):  # files named like images that are not images: the reconstruction cannot read them
        storage.put_bytes("input", f"{dataset}/broken_{i}.jpg", b"definitely not a jpeg")
    dag = load_repo_dag("e2e3d_reconstruction.py", "e2e3d_reconstruction")
    dr = run_dag(dag, {"dataset": dataset, "job_id": unique_id})
    states = task_states(dr)
    assert str(dr.state) == "failed", states
    assert states["reconstruct"] == "failed" and states["upload_results"] == "upstream_failed"
    assert states["cleanup"] == "success" and states["mark_failed"] == "failed"
    stamp = xcom(dr, "prepare")["stamp"]
    job = metadata.get_job(unique_id, stamp)
    assert job["status"] == "failed" and "reconstruct" in job["error"]
    assert job["error"].startswith("failed tasks: reconstruct (run ")  # not the upstream_failed ones
    assert not RunLayout(data_root, unique_id, stamp).temp_dir.exists()
    assert not storage.exists("output", f"{unique_id}/SUCCESS")


def test_maintenance_dag_on_seeded_old_jobs(
    run_dag, storage: StorageHook, metadata: MetadataHook, data_root: Path, unique_id: str
) -> None:
    from e2e3d_provider.lifecycle.results.publish import publish_run
    from e2e3d_provider.lifecycle.results.record import record_transfer

    stamp = "20260101T000000Z"
    old, fresh, done = f"{unique_id}-old", f"{unique_id}-fresh", f"{unique_id}-done"
    for job in (old, fresh, done):
        run_dir = data_root / "output" / job / f"{job}_{stamp}"
        write_files(run_dir, {"mesh/reconstructed_mesh.obj": f"v {job}".encode()})
        published = publish_run(storage, run_dir, job, stamp, "output")
        # recorded as upload_results records it: the throughput summary below reads these rows, not
        # whatever an earlier test of the session may have left
        record_transfer(metadata, published.transfer, f"seeded/{job}/upload_results", job_id=job, stamp=stamp)
        metadata.record_job(job, stamp, "ds", "running")
        metadata.record_job(job, stamp, "ds", "succeeded")
    with metadata.transaction() as cur:  # an old job, finished 90 days ago
        cur.execute(
            "UPDATE e2e3d.jobs SET finished_at = now() - interval '90 days' WHERE job_id IN (%s, %s)", (old, done)
        )
    # temp dirs: one abandoned two days ago, one in use
    stale_temp, live_temp = data_root / "temp" / f"{old}_{stamp}", data_root / "temp" / f"{fresh}_{stamp}"
    write_files(stale_temp, {"x.tmp": b"x"})
    write_files(live_temp, {"y.tmp": b"y"})
    two_days_ago = time.time() - 2 * 86400
    for path in (stale_temp / "x.tmp", stale_temp):
        os.utime(path, (two_days_ago, two_days_ago))
    metadata.set_config("output_retention_days", 30)

    dag = load_repo_dag("e2e3d_maintenance.py", "e2e3d_maintenance")
    dr = run_dag(dag, {})
    assert set(task_states(dr).values()) == {"success"}, task_states(dr)

    assert not stale_temp.exists() and live_temp.exists()
    for job in (old, fresh, done):
        assert metadata.get_job(job, stamp)["status"] == "archived"
        assert storage.exists("archive", archive_prefix(job, stamp) + "SUCCESS")
    assert storage.list_keys("output", old) == [] and storage.list_keys("output", done) == []  # past retention
    assert storage.exists("output", f"{fresh}/SUCCESS")  # within retention: kept
    assert xcom(dr, "apply_retention")["removed"] >= 2
    reconciled = xcom(dr, "reconcile_usage")  # before the snapshot: every bucket compared with the server
    assert set(reconciled) == {"input", "output", "models", "archive"}
    for part in reconciled.values():
        assert part.get("listing", {}).get("complete") or part["usage_api"]["comparable"], part
    latest = {s["bucket"]: s for s in metadata.latest_storage_stats()}
    assert set(latest) >= {"input", "output", "models", "archive"}
    assert latest["archive"]["taken_at"] > datetime.now(UTC) - timedelta(minutes=5)
    assert "upload" in metadata.get_config("transfer_throughput_24h")
    hygiene = xcom(dr, "storage_hygiene")
    assert set(hygiene) == {"multipart", "strays", "metadata", "volumes"}
    assert "skipped" in hygiene["volumes"]  # the session's stack is not the default one: nothing to compact
    # the scrub reads every published run in the session's database: another test's rows (a job recorded
    # archived with nothing stored, say) are rightly damaged; these three jobs are whole
    assert not {old, fresh, done} & set(xcom(dr, "scrub_results")["damaged"])

    again = run_dag(dag, {})  # idempotent: nothing left to do, nothing breaks
    assert set(task_states(again).values()) == {"success"}
    assert xcom(again, "apply_retention")["removed"] == 0


def test_ingest_rejects_non_images_and_uploads_nothing(storage: StorageHook, tmp_path: Path, unique_id: str) -> None:
    write_files(
        tmp_path,
        {
            "a.jpg": (SAMPLE / "view_01.jpg").read_bytes(),
            "notes.txt": b"hello",
            "fake.png": b"not a png",
            ".DS_Store": b"junk",
        },
    )
    with pytest.raises(InvalidInputError, match=r"2 file\(s\).*notes\.txt.*fake\.png|2 file\(s\).*fake\.png"):
        ingest(storage, tmp_path, unique_id)
    assert storage.list_keys("input", unique_id) == []
    result = ingest(storage, tmp_path, unique_id, skip_invalid=True)
    assert result.total_files == 1 and storage.list_keys("input", unique_id) == [f"{unique_id}/dataset.json"]
    assert [image.path for image in read_dataset(storage, unique_id).images] == ["a.jpg"]


def test_ingest_cli(storage: StorageHook, connections: dict, tmp_path: Path, unique_id: str) -> None:
    e2e3d = str(Path(sys.executable).parent / "e2e3d")
    write_files(tmp_path, {"x.txt": b"x"})
    bad = subprocess.run([e2e3d, "ingest", str(tmp_path), "--dataset", unique_id], capture_output=True, text=True)
    assert bad.returncode == 1 and "x.txt" in bad.stderr and "Traceback" not in bad.stderr
    good = subprocess.run([e2e3d, "ingest", str(SAMPLE), "--dataset", unique_id], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr[-2000:]
    assert "6 distinct images" in good.stdout


@pytest.mark.slow
def expected_counts(entry: dict) -> dict:
    """What a file's manifest figures say a reader must find in it."""
    figures, path = entry["figures"], entry["path"]
    if path.endswith((".obj", ".glb")):
        return {"faces": figures["faces"]}
    if path.endswith((".ply", ".laz")):
        return {"points": figures["points"]}
    if path.endswith(".json"):
        return {"tiles": figures["tiles"]}
    if path.endswith(".mtl"):
        return {"bytes": figures["bytes"]}
    return {"size": (figures["width"], figures["height"])}


def independent_counts(path: Path) -> dict:
    """Faces, points, pixels or tiles of a file as trimesh, pygltflib + meshoptimizer, laspy and Pillow see it."""
    if path.suffix == ".obj":
        return {"faces": len(trimesh.load(path, force="mesh", process=False).faces)}
    if path.suffix == ".glb":  # meshopt-compressed: decoded by meshoptimizer
        gltf = pygltflib.GLTF2.load_binary(path)
        primitive = gltf.meshes[0].primitives[0]
        indices = accessor(gltf, primitive.indices)
        assert indices.max() < gltf.accessors[primitive.attributes.POSITION].count
        return {"faces": len(indices) // 3}
    if path.suffix == ".ply":
        return {"points": len(trimesh.load(path, process=False).vertices)}
    if path.suffix == ".laz":  # the LAZ and the COPC (a LAZ whose chunks are octree nodes): every point
        return {"points": len(laspy.read(path).points)}
    if path.suffix == ".json":  # the texture tiles' index, or a 3D Tiles tileset (tiles with content)
        data = json.loads(path.read_text())
        if "asset" in data:
            return {"tiles": sum(1 for _, tile in walk_tiles(data) if "content" in tile)}
        return {"tiles": len(data["tiles"])}
    if path.suffix == ".mtl":
        return {"bytes": path.stat().st_size}
    with Image.open(path) as image:
        image.load()
        return {"size": image.size}


@pytest.mark.integration  # runs processes of its own
def test_demo_command_runs_the_whole_lifecycle_quietly_and_leaves_nothing_in_tmp(tmp_path: Path) -> None:
    import glob
    import tempfile

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "E2E3D"))}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "e2e3d-demo-*")))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "e2e3d"), "demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("sha256 matches the manifest") == 3
    lines = result.stdout.splitlines()
    assert len(lines) <= 40 and not result.stderr.strip(), result.stdout + result.stderr  # one screen, no noise
    assert any(line.startswith("job demo-") and line.endswith(": archived") for line in lines)
    task_lines = {line.split()[0]: line.split()[1] for line in lines if line.startswith("  ") and len(line.split()) > 2}
    assert {t: task_lines.get(t) for t in ("stage_in", "reconstruct", "upload_results", "archive")} == dict.fromkeys(
        ("stage_in", "reconstruct", "upload_results", "archive"), "success"
    )
    assert "MB/s" in next(line for line in lines if line.startswith("  stage_in"))
    log = tmp_path / "state" / "e2e3d" / "demo.log"
    assert f"Airflow's logs go to {log}" in result.stdout and log.stat().st_size > 0
    assert "INFO" in log.read_text() or "info" in log.read_text()  # what the terminal was spared
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "e2e3d-demo-*"))) <= before  # nothing left behind
    job_id = next(line.split()[1] for line in lines if line.startswith("job demo-"))
    assert lines[-2:] == viewer_lines(job_id, keep_stack=False, stack_dir=None)  # it ends pointing at the viewer


def test_the_demos_last_lines_point_at_the_viewer_page_of_its_job(tmp_path: Path) -> None:
    """The viewer's URL on the api-server `e2e3d airflow` starts (no api-server outlives the demo itself)."""
    from e2e3d_provider.plugin import URL_PREFIX

    assert f"{URL_PREFIX}/viewer" == VIEWER_PATH
    kept = viewer_lines("demo-20261205T010203Z", keep_stack=True, stack_dir=None)
    assert kept[0].startswith("3D view: `e2e3d airflow` starts Airflow on this stack")
    assert kept[-1] == "  <that URL>/e2e3d/viewer?job=demo-20261205T010203Z"
    there = viewer_lines("demo-1", keep_stack=True, stack_dir=tmp_path / "my stack")
    assert f"`e2e3d airflow --dir '{tmp_path / 'my stack'}'`" in there[0]
    gone = viewer_lines("demo-1", keep_stack=False, stack_dir=None)
    assert "/e2e3d/viewer?job=demo-1" in gone[0] and "--keep-stack" in gone[0] and "e2e3d airflow" in gone[1]


def test_lifecycle_params_leave_the_trigger_form_usable_with_defaults() -> None:
    """The UI marks a param required unless its schema admits null; an empty-string default then
    keeps the Trigger button disabled. Every optional param must admit null, and {} must validate."""
    dag = load_repo_dag("e2e3d_reconstruction.py", "e2e3d_reconstruction")
    for name, param in dag.params.items():
        types = param.schema.get("type")
        types = types if isinstance(types, list) else [types]
        if param.value in ("", None):
            assert "null" in types, f"param {name!r} has an empty default but does not admit null: {param.schema}"
    dag.params.validate()


def test_maintenance_runs_nothing_before_health() -> None:
    dag = load_repo_dag("e2e3d_maintenance.py", "e2e3d_maintenance")
    for task_id in dag.task_ids:
        if task_id != "health":
            assert "health" in {t.task_id for t in dag.get_task(task_id).get_flat_relatives(upstream=True)}, task_id


def test_a_conflicting_run_fails_in_prepare_saying_why_and_pulls_no_missing_xcom(
    run_dag, metadata: MetadataHook, data_root: Path, unique_id: str, capfd: pytest.CaptureFixture[str], caplog
) -> None:
    """Another DAG run holds the job: prepare fails at once (its reason first in its log) and the run
    fails. Nothing downstream pulls an XCom prepare never pushed (each pull of a missing one is an
    ``[error] XCom not found`` line in the scheduler's log): cleanup has nothing to clean, and is not run."""
    elsewhere = {"dag_run_id": "manual__elsewhere"}  # a live run of the job that no DAG here can see end
    metadata.record_job(unique_id, "20200101T000000Z", "terrain", "running", statistics=elsewhere)
    dag = load_repo_dag("e2e3d_reconstruction.py", "e2e3d_reconstruction")
    dr = run_dag(dag, {"dataset": "terrain", "job_id": unique_id})
    states = task_states(dr)
    assert str(dr.state) == "failed", states
    assert states["prepare"] == "failed" and states["mark_failed"] == "failed", states
    assert states["cleanup"] == "upstream_failed", states  # nothing of this run to clean
    assert dr.get_task_instance("prepare").try_number == 1
    output = capfd.readouterr().out + capfd.readouterr().err + caplog.text
    assert "has a run in progress" in output
    assert "XCom not found" not in output
    job = metadata.get_job(unique_id, "20200101T000000Z")
    assert job["status"] == "running" and job["statistics"]["dag_run_id"] == "manual__elsewhere"  # untouched


def test_an_ingest_that_stops_part_way_says_how_many_are_stored_and_a_rerun_completes_it(
    storage: StorageHook, tmp_path: Path, unique_id: str
) -> None:
    import re

    from e2e3d_provider.exceptions import IngestIncompleteError

    sample = (SAMPLE / "view_01.jpg").read_bytes()  # 40 distinct images: a JPEG ignores bytes after its end
    write_files(tmp_path, {f"img_{i:02d}.jpg": sample + unique_id.encode() + bytes([i]) for i in range(40)})

    def fail_after_eight(done: int, total: int) -> None:
        if done == 8:
            raise RuntimeError("worker lost")  # a failure injected into the upload

    few_at_a_time = StorageHook(concurrency=4)  # so the failure comes while most images are still to go
    with pytest.raises(IngestIncompleteError, match=r"stopped: \d+ of 40 images are stored\. Rerun") as stopped:
        ingest(few_at_a_time, tmp_path, unique_id, on_progress=fail_after_eight)
    stored = int(re.search(r"stopped: (\d+) of 40", str(stopped.value)).group(1))
    assert 8 <= stored < 40
    assert read_dataset(storage, unique_id) is None  # no manifest: the dataset is not there until it is whole
    rerun = ingest(storage, tmp_path, unique_id)
    assert (rerun.files, rerun.skipped_files) == (40 - stored, stored)
    assert len(read_dataset(storage, unique_id).images) == 40
