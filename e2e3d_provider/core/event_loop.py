"""The event loop a transfer runs on: uvloop's where it is installed, else asyncio's own.

Why: a small object's download or upload is mostly per-object work on the loop's thread (a task, the
wake-ups from the object store client's threads, the callbacks), and the standard loop's share of that is
the largest single piece. uvloop (a declared dependency of the provider on every platform Airflow runs on)
does the same scheduling in C, with less of the client's CPU per object (the performance page has the
measurement). Nothing else changes: the coroutines, the threads they hand file work to and the cancellation
on Ctrl-C are the same on both.

``E2E3D_EVENT_LOOP=asyncio`` (a setting of :mod:`~e2e3d_provider.core.settings`) chooses the standard loop
anyway, for a comparison or a platform where uvloop misbehaves; a value that is neither is an error, not a
silent fallback.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from e2e3d_provider.core.settings import default, setting

T = TypeVar("T")

#: the environment variable that chooses the loop
EVENT_LOOP_ENV = "E2E3D_EVENT_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """The constructor of the loop to run transfers on (see the module's docstring); ValueError for a
    ``E2E3D_EVENT_LOOP`` that names no loop."""
    chosen = setting(EVENT_LOOP_ENV).check(os.environ.get(EVENT_LOOP_ENV) or default(EVENT_LOOP_ENV))
    if chosen == "uvloop":
        try:
            import uvloop
        except ImportError:  # a platform without its wheels: the standard loop does the same work
            return asyncio.new_event_loop
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a new loop of the chosen kind, closed afterwards (``asyncio.run``'s
    contract: the caller is synchronous, with no loop running in its thread)."""
    try:
        factory = loop_factory()
    except ValueError:
        coro.close()  # never started: no "was never awaited" warning on top of the error
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)
