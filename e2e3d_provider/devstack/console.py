"""What a person sees of a CLI command: its own lines and a progress bar, while the noise goes to a file.

:class:`Console` points the process's stdout and stderr (file descriptors 1 and 2, so Airflow's logs,
warnings and child processes too) at a log file for its block, and writes its own lines to the terminal
that was there before. Progress bars (rich's, one per transfer in flight) are drawn only when that terminal
is a TTY.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from rich.filesize import decimal


def state_dir() -> Path:
    """Where CLI runs keep their logs: ``$XDG_STATE_HOME/e2e3d`` (default ``~/.local/state/e2e3d``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "e2e3d"


def human_bytes(n: float) -> str:
    """``1.5 MB``: decimal units (rich's formatter); a negative size (a shrinking bucket) keeps its sign."""
    return ("-" if n < 0 else "") + decimal(int(abs(n)))


class Console:
    """Route the process's output to ``log_path`` for the block; :meth:`say` and the progress bars reach the
    terminal. With ``quiet=False`` nothing is redirected (the log file is not written); with ``bar=False``
    no progress is drawn (``-q``, ``--json``)."""

    def __init__(self, log_path: Path, *, quiet: bool = True, bar: bool = True) -> None:
        self.log_path = log_path
        self.quiet = quiet
        self.bar = bar
        self._terminal: IO[str] = sys.stdout
        self._saved: list[int] = []
        self._lock = threading.Lock()
        self._progress: Any = None  # rich.progress.Progress while a transfer is drawn
        self._tasks: dict[str, Any] = {}
        self.tty = False

    def __enter__(self) -> Console:
        if not self.quiet:
            self.tty = sys.stdout.isatty()
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = [os.dup(1), os.dup(2)]
        self._terminal = os.fdopen(os.dup(1), "w", buffering=1)
        self.tty = self._terminal.isatty()
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop_progress()
        if not self._saved:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._saved = []
        self._terminal.close()

    def say(self, line: str = "") -> None:
        """One line on the terminal (above the progress bars, if any are drawn)."""
        with self._lock:
            if self._progress is not None:
                self._progress.console.print(line, markup=False, highlight=False)
                return
            self._terminal.write(line + "\n")
            self._terminal.flush()

    def progress(self, label: str, done: int, total: int, finished: bool) -> None:
        """A transfer's progress (a :data:`~e2e3d_provider.core.transfer.PROGRESS_LISTENERS` callable): a rich
        bar per transfer in flight, with its bytes, rate and time left; gone when it finishes."""
        if not (self.tty and self.bar):
            return
        with self._lock:
            task = self._tasks.get(label)
            if finished:
                if task is not None:
                    self._progress.remove_task(self._tasks.pop(label))
                if not self._tasks:
                    self._stop_progress_locked()
                return
            if self._progress is None:
                self._progress = self._start_progress()
            if task is None:
                task = self._tasks[label] = self._progress.add_task(label[:48], total=total or None)
            self._progress.update(task, completed=done, total=total or None)

    def _start_progress(self) -> Any:
        from rich.console import Console as RichConsole
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        progress = Progress(
            TextColumn("  {task.description}", markup=False),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=RichConsole(file=self._terminal),
            transient=True,  # the bars go; the command's own lines stay
            redirect_stdout=False,  # fd 1 and 2 are the log file's: the bars never take them over
            redirect_stderr=False,
            refresh_per_second=8,
        )
        progress.start()
        return progress

    def _stop_progress(self) -> None:
        with self._lock:
            self._stop_progress_locked()

    def _stop_progress_locked(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._tasks.clear()
