"""A folder that cannot be read fails the walk that meets it, naming it: never an incomplete set
published (SUCCESS), uploaded or ingested in silence.

CI runs as root, and root reads everything; the walks run in a child process without the
capabilities that bypass file permissions (``setpriv`` drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_files

WALKS = """
import sys
from pathlib import Path
from e2e3d_provider.core.manifest import build_manifest
from e2e3d_provider.core.transfer import iter_local_files
from e2e3d_provider.exceptions import UnreadablePathError

run = Path(sys.argv[1])
for name, walk in (("manifest", lambda: build_manifest(run, "job", "20260106T000000Z")),
                   ("transfer", lambda: iter_local_files(run))):
    try:
        result = walk()
    except UnreadablePathError as err:
        print(name, "refused:", err)
    else:
        print(name, "walked without error:", result)
"""


def without_dac_capabilities(*args: str) -> subprocess.CompletedProcess[str]:
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop capabilities"
    return subprocess.run(
        [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def run_with_a_locked_folder(tmp_path: Path):
    run = tmp_path / "run"
    write_files(run, {"mesh/m.obj": b"v 1", "pointcloud/pointcloud.ply": b"ply", "textures/t.png": b"png"})
    locked = run / "pointcloud"
    locked.chmod(0o000)
    try:
        yield run, locked
    finally:
        locked.chmod(0o755)


def test_walks_refuse_a_folder_they_cannot_read_and_name_it(run_with_a_locked_folder) -> None:
    run, locked = run_with_a_locked_folder
    result = without_dac_capabilities(sys.executable, "-P", "-c", WALKS, str(run))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    for line in lines:
        assert "refused: cannot read" in line and str(locked) in line, line


PUBLISH = """
import sys
from pathlib import Path
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.results.publish import publish_run
from e2e3d_provider.exceptions import UnreadablePathError

try:
    publish_run(StorageHook(), Path(sys.argv[1]), sys.argv[2], "20260106T000000Z", sys.argv[3])
except UnreadablePathError as err:
    print("refused:", err)
else:
    print("published")
"""


def test_a_publish_that_meets_a_locked_folder_writes_no_success(
    run_with_a_locked_folder, storage, bucket: str, unique_id: str
) -> None:
    """End to end against the real S3 server: the publish fails naming the folder, and neither
    SUCCESS nor a manifest stands over the incomplete set, in the bucket or in the run dir."""
    run, locked = run_with_a_locked_folder
    result = without_dac_capabilities(sys.executable, "-P", "-c", PUBLISH, str(run), unique_id, bucket)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("refused: cannot read") and str(locked) in result.stdout, result.stdout
    assert not storage.exists(bucket, f"{unique_id}/SUCCESS")
    assert not storage.exists(bucket, f"{unique_id}/metadata.json")
    assert not (run / "SUCCESS").exists()


def test_an_ingest_of_a_folder_with_a_locked_subfolder_fails_naming_it(
    tmp_path: Path, storage, connections, unique_id: str
) -> None:
    """`e2e3d ingest` used to report "1 images uploaded" for a folder of 2: it now stops before any
    upload, naming the folder it could not read."""
    from PIL import Image

    images = tmp_path / "images"
    (images / "more").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(images / "view_01.jpg")
    Image.new("RGB", (8, 8), "blue").save(images / "more" / "view_02.jpg")
    (images / "more").chmod(0o000)
    try:
        e2e3d = str(Path(sys.executable).parent / "e2e3d")
        result = without_dac_capabilities(e2e3d, "ingest", str(images), "--dataset", unique_id)
    finally:
        (images / "more").chmod(0o755)
    assert result.returncode != 0, result.stdout
    assert "cannot read" in result.stderr and str(images / "more") in result.stderr, result.stderr[-2000:]
    assert "uploaded" not in result.stdout
    assert storage.list_keys("input", unique_id) == []
