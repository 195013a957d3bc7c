"""Async triggers behind the deferrable sensors: they poll object storage from the triggerer,
holding no worker slot, and resume the task with one event.

Every blocking call runs in a thread of its own (``asyncio.to_thread``), never on one shared
thread, so a trigger stuck on a slow or silent endpoint holds up no other trigger.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from e2e3d_provider.hooks import DEFAULT_MINIO_CONN_ID, ROLE_CONN_IDS
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.inputs.readiness import input_state, marker_present


async def storage_hook(conn_id: str) -> StorageHook:
    """A StorageHook whose connection was fetched asynchronously (no sync secrets call in the loop)."""
    try:
        connection = await StorageHook.aget_connection(conn_id)
    except AirflowNotFoundException:
        if conn_id not in ROLE_CONN_IDS.values():
            raise
        connection = await StorageHook.aget_connection(DEFAULT_MINIO_CONN_ID)  # the role is not set up
    return StorageHook(conn_id, connection=connection)


class SuccessMarkerTrigger(BaseTrigger):
    """Fires once ``bucket/key`` (a SUCCESS marker) exists; errors come back as events."""

    def __init__(
        self,
        bucket: str,
        key: str,
        manifest_key: str | None = None,
        minio_conn_id: str = StorageHook.default_conn_name,
        poke_interval: float = 5.0,
    ) -> None:
        super().__init__()
        self.bucket = bucket
        self.key = key
        self.manifest_key = manifest_key
        self.minio_conn_id = minio_conn_id
        self.poke_interval = poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "bucket": self.bucket,
                "key": self.key,
                "manifest_key": self.manifest_key,
                "minio_conn_id": self.minio_conn_id,
                "poke_interval": self.poke_interval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            hook = await storage_hook(self.minio_conn_id)
            while not await asyncio.to_thread(marker_present, hook, self.bucket, self.key):
                self.log.info("waiting for %s/%s", self.bucket, self.key)
                await asyncio.sleep(self.poke_interval)
            yield TriggerEvent(
                {"status": "success", "bucket": self.bucket, "marker_key": self.key, "manifest_key": self.manifest_key}
            )
        except Exception as err:
            yield TriggerEvent({"status": "error", "message": f"{type(err).__name__}: {err}"})


class InputPresenceTrigger(BaseTrigger):
    """Fires once a prefix holds ``min_files`` objects matching ``patterns``, unchanged for ``stable_for`` s."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        patterns: Sequence[str],
        min_files: int = 1,
        stable_for: float = 0.0,
        minio_conn_id: str = StorageHook.default_conn_name,
        poke_interval: float = 5.0,
    ) -> None:
        super().__init__()
        self.bucket = bucket
        self.prefix = prefix
        self.patterns = list(patterns)
        self.min_files = min_files
        self.stable_for = stable_for
        self.minio_conn_id = minio_conn_id
        self.poke_interval = poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "bucket": self.bucket,
                "prefix": self.prefix,
                "patterns": self.patterns,
                "min_files": self.min_files,
                "stable_for": self.stable_for,
                "minio_conn_id": self.minio_conn_id,
                "poke_interval": self.poke_interval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            hook = await storage_hook(self.minio_conn_id)
            while True:
                state = await asyncio.to_thread(
                    input_state, hook, self.bucket, self.prefix, self.patterns, self.min_files, self.stable_for
                )
                if state.ready:
                    yield TriggerEvent({"status": "success", **state.to_xcom()})
                    return
                self.log.info("not ready: %s", state.reason)
                await asyncio.sleep(self.poke_interval)
        except Exception as err:
            yield TriggerEvent({"status": "error", "message": f"{type(err).__name__}: {err}"})
