"""Native work on untrusted input, in a child process that can be stopped: a time limit and an address-space
limit bound what a hostile file costs. No Airflow.

meshoptimizer's simplifier and Draco's encoder are C++ and hold the interpreter while they run, so a
Python timeout cannot interrupt them, and some inputs (tens of thousands of identical faces) make them
run for minutes. :func:`run_bounded` therefore calls a function of ``e2e3d_provider.rightsize`` in a fresh
interpreter: numpy arrays in and out through ``.npz`` files in a private temporary folder (under
``TMPDIR``; :mod:`~e2e3d_provider.rightsize.scratch` removes one a killed process left), the child's
address space limited with ``RLIMIT_AS``, and the child killed when the wall-clock limit passes. A
refusal inside the child (:class:`RightSizeInputError`), a kill, or running out of memory all come back
as a :class:`RightSizeInputError` that names the limit, so the task fails once instead of retrying.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import math
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from e2e3d_provider.exceptions import RightSizeInputError
from e2e3d_provider.rightsize.scratch import work_folder

#: only functions of these modules run in the worker
ALLOWED_PREFIX = "e2e3d_provider.rightsize."
#: the child's exit codes besides 0 (done) and 1 (an unexpected error, with its traceback on stderr)
INPUT_ERROR, OUT_OF_MEMORY = 3, 4
#: the folder holding the ``e2e3d_provider`` package this process runs: the child imports the same copy
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
#: signals that mean the child died of its input (native code out of memory, or crashing on it)
CRASH_SIGNALS = {
    signal.SIGABRT: "aborted",
    signal.SIGSEGV: "crashed",
    signal.SIGBUS: "crashed",
    signal.SIGKILL: "was killed",
}


def run_bounded(
    target: str,
    arrays: dict[str, np.ndarray],
    options: dict[str, Any],
    *,
    seconds: float,
    memory_bytes: int,
    what: str,
    preload: Sequence[str] = (),
    settings: tuple[str, str] = ("mesh_seconds", "mesh_memory_bytes"),
) -> dict[str, np.ndarray]:
    """``target`` (``"e2e3d_provider.rightsize.<module>:<function>"``) called as ``function(arrays,
    **options)`` in a child interpreter that may use ``memory_bytes`` of address space and is killed after
    ``seconds``; returns the dict of arrays the function returned. The modules in ``preload`` (the native
    libraries the function imports) are imported before the memory limit is set, so the limit bounds the
    work on the input, and a library that cannot load is never mistaken for an input too large.

    Raises :class:`RightSizeInputError` naming ``what`` when the function refused its input, or the child
    was stopped by a limit (``settings`` names the two policy settings, for the message), or died of a
    signal; any other failure of the child is a RuntimeError with the end of its stderr (a bug, not input).
    """
    module, _, name = target.partition(":")
    if not module.startswith(ALLOWED_PREFIX) or not name.isidentifier():
        raise ValueError(f"the right-sizing worker runs functions of {ALLOWED_PREFIX}*, not {target!r}")
    time_setting, memory_setting = settings
    with work_folder() as work:
        np.savez(work / "input.npz", **cast("dict[str, Any]", arrays))
        request = {
            "target": target,
            "options": options,
            "seconds": seconds,
            "memory_bytes": memory_bytes,
            "preload": list(preload),
            "parent": os.getpid(),
        }
        (work / "request.json").write_text(json.dumps(request))
        command = [
            sys.executable,
            "-P",  # no current folder on the child's path: it imports the parent's copy of the package
            "-c",
            "import sys; from e2e3d_provider.rightsize.worker import main; sys.exit(main(sys.argv[1]))",
            str(work),
        ]
        with open(work / "stderr.txt", "wb") as stderr:
            try:
                done = subprocess.run(
                    command,
                    cwd=work,
                    env=child_environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    timeout=seconds,
                    check=False,
                )
            except subprocess.TimeoutExpired:  # subprocess.run has killed the child
                raise RightSizeInputError(
                    f"{what}: stopped after {time_setting} = {seconds:g} s; the input is too large or "
                    f"pathological for it (raise {time_setting} if it is sound)"
                ) from None
        code = done.returncode
        if code == 0:
            with np.load(work / "output.npz") as data:
                return {key: data[key] for key in data.files}
        if code == INPUT_ERROR:
            raise RightSizeInputError(f"{what}: {(work / 'error.txt').read_text()}")
        if code == -signal.SIGXCPU:  # the CPU-time backstop (an orphaned child stops by itself too)
            raise RightSizeInputError(f"{what}: stopped after its CPU time limit ({time_setting} = {seconds:g} s)")
        if code == OUT_OF_MEMORY or -code in CRASH_SIGNALS:
            how = "ran out of memory" if code == OUT_OF_MEMORY else CRASH_SIGNALS[signal.Signals(-code)]
            raise RightSizeInputError(
                f"{what}: the worker {how} within {memory_setting} = {memory_bytes:,} bytes; the input needs more "
                f"memory than allowed, or the native code fails on it (raise {memory_setting} if it is sound)"
            )
        tail = (work / "stderr.txt").read_bytes()[-3000:].decode(errors="replace")
        raise RuntimeError(f"{what}: the right-sizing worker failed (exit {code}):\n{tail}")


def child_environment() -> dict[str, str]:
    """The child's environment: this one, with this package first on its path, at most two glibc malloc
    arenas and single-threaded BLAS (each extra arena or BLAS buffer reserves address space, which
    ``RLIMIT_AS`` counts even when it is never touched)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env.setdefault("MALLOC_ARENA_MAX", "2")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _limit(which: int, soft: int, hard: int | None = None) -> None:
    """Set a resource limit (``hard`` defaults to ``soft``), never above the hard limit already in force."""
    _, current = resource.getrlimit(which)
    hard = soft if hard is None else hard
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(which, (soft, hard))


def _die_with_parent(parent: int) -> None:
    """Have Linux kill this process when the process that started it dies (a worker killed with SIGKILL
    cannot stop its children itself), and stop at once if that has already happened."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the CPU-time limit is the backstop
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def main(folder: str) -> int:
    """The child: import what the request in ``folder`` needs, limit itself, run it, and write
    ``output.npz`` (or ``error.txt``); returns the exit code."""
    work = Path(folder)
    request = json.loads((work / "request.json").read_text())
    _die_with_parent(int(request["parent"]))
    module, _, name = str(request["target"]).partition(":")
    if not module.startswith(ALLOWED_PREFIX):
        raise ValueError(f"the right-sizing worker runs functions of {ALLOWED_PREFIX}*, not {module!r}")
    function = getattr(importlib.import_module(module), name)
    for library in request["preload"]:
        importlib.import_module(library)
    _limit(resource.RLIMIT_AS, int(request["memory_bytes"]))
    # a backstop: every core busy for the whole wall-clock limit, and more
    cpu = math.ceil(float(request["seconds"]) * (os.cpu_count() or 1)) + 5
    _limit(resource.RLIMIT_CPU, cpu, cpu + 5)  # SIGXCPU first (reported as time), SIGKILL later
    _limit(resource.RLIMIT_CORE, 0)  # a crash leaves no core file of a large process behind
    try:
        with np.load(work / "input.npz") as data:
            arrays = {key: data[key] for key in data.files}
        result = function(arrays, **request["options"])
        np.savez(work / "output.npz", **cast("dict[str, Any]", result))
    except RightSizeInputError as err:
        (work / "error.txt").write_text(str(err))
        return INPUT_ERROR
    except MemoryError:
        return OUT_OF_MEMORY
    return 0
