"""What a person sees of a CLI command: its own lines and a progress bar, while the noise goes to a file.

:class:`Console` points the process's stdout and stderr (file descriptors 1 and 2, so Airflow's logs,
warnings and child processes too) at a log file for its block, and writes its own lines to the terminal
that was there before. A progress bar is drawn only when that terminal is a TTY.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO

BAR_WIDTH = 28


def state_dir() -> Path:
    """Where CLI runs keep their logs: ``$XDG_STATE_HOME/e2e3d`` (default ``~/.local/state/e2e3d``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "e2e3d"


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Console:
    """Route the process's output to ``log_path`` for the block; :meth:`say` and the progress bar reach the
    terminal. With ``quiet=False`` nothing is redirected (the log file is not written)."""

    def __init__(self, log_path: Path, *, quiet: bool = True) -> None:
        self.log_path = log_path
        self.quiet = quiet
        self._terminal: IO[str] = sys.stdout
        self._saved: list[int] = []
        self._lock = threading.Lock()
        self._bar_shown = False
        self._last_draw = 0.0
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
        self._clear_bar()
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
        """One line on the terminal (above the progress bar, if one is drawn)."""
        with self._lock:
            self._clear_bar_locked()
            self._terminal.write(line + "\n")
            self._terminal.flush()

    def progress(self, label: str, done: int, total: int, finished: bool) -> None:
        """A transfer's progress (a :data:`~e2e3d_provider.core.transfer.PROGRESS_LISTENERS` callable)."""
        if not self.tty:
            return
        with self._lock:
            now = time.monotonic()
            if finished:
                self._clear_bar_locked()
                return
            if now - self._last_draw < 0.1:
                return
            self._last_draw = now
            share = done / total if total else 1.0
            filled = int(BAR_WIDTH * min(share, 1.0))
            text = f"  {label[:48]:<48} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {share:4.0%} {human_bytes(done)}"
            self._terminal.write("\r" + text[:160])
            self._terminal.flush()
            self._bar_shown = True

    def _clear_bar(self) -> None:
        with self._lock:
            self._clear_bar_locked()

    def _clear_bar_locked(self) -> None:
        if self._bar_shown:
            self._terminal.write("\r\033[K")
            self._terminal.flush()
            self._bar_shown = False
