"""The loop transfers run on: uvloop's (a declared dependency, so the installed wheel brings it), asyncio's when
``E2E3D_EVENT_LOOP=asyncio`` says so or uvloop is missing, and a clear error for a value naming no loop. A round
trip on the real server on the standard loop keeps that path working, since every other test runs on uvloop."""

from __future__ import annotations

import asyncio
import sys
import warnings
from pathlib import Path

import pytest

from e2e3d_provider.core import event_loop
from e2e3d_provider.core.transfer import run_engine
from e2e3d_provider.hooks.storage import StorageHook
from tests.helpers import write_files


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_transfers_run_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.EVENT_LOOP_ENV, raising=False)
    assert run_engine(loop_module()).startswith("uvloop")


def test_the_standard_loop_when_chosen_or_when_uvloop_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "asyncio")
    assert run_engine(loop_module()).startswith("asyncio")
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "uvloop")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert run_engine(loop_module()).startswith("asyncio")


def test_a_value_naming_no_loop_is_an_error_and_nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "trio")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a coroutine left unawaited would warn
        with pytest.raises(ValueError, match=r"\$E2E3D_EVENT_LOOP: must be uvloop or asyncio, not 'trio'"):
            run_engine(loop_module())


def test_a_round_trip_on_the_standard_loop(
    storage: StorageHook, bucket: str, tmp_path: Path, unique_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "asyncio")
    files = {f"f{i}.bin": bytes([i]) * (1000 + i) for i in range(20)} | {"big.bin": b"x" * (20 * 1024 * 1024)}
    write_files(tmp_path / "src", files)
    assert storage.upload_dir(tmp_path / "src", bucket, f"{unique_id}/").files == len(files)
    assert storage.download_prefix(bucket, f"{unique_id}/", tmp_path / "dst").files == len(files)
    assert {p.name: p.read_bytes() for p in (tmp_path / "dst").iterdir()} == files
