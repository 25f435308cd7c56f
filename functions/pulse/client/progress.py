"""The progress bar of ``pulse import`` and ``pulse export``: rows, bytes and
rates, drawn by rich on stderr (redrawn in place on a terminal; elsewhere one
final line when the transfer ends)."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from rich import filesize
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.text import Text


class _Rows(ProgressColumn):
    """``12,345 / 100,000 rows  4,102 rows/s``"""

    def render(self, task: Task) -> Text:
        rows = int(task.fields.get("rows", 0))
        total = task.fields.get("total_rows")
        elapsed = task.elapsed or 0.0
        rate = f"{rows / elapsed:,.0f} rows/s" if elapsed > 0 else "– rows/s"
        shown = f"{rows:,} / {total:,} rows" if total is not None else f"{rows:,} rows"
        return Text(f"{shown}  {rate}", style="progress.download")


class _Bytes(ProgressColumn):
    """``1.2/8.4 MB``, or ``1.2 MB`` while the total is unknown (a download)."""

    def __init__(self) -> None:
        super().__init__()
        self.known = DownloadColumn()

    def render(self, task: Task) -> Text:
        if task.total is not None:
            return self.known.render(task)
        return Text(filesize.decimal(int(task.completed)), style="progress.download")


def _console() -> Console:
    """stderr; not a terminal (a log, a pipe): one wide line, never wrapped at 80 columns."""
    console = Console(stderr=True)
    return console if console.is_terminal else Console(stderr=True, width=max(console.width, 160))


class TransferBar:
    """One transfer: ``advance(bytes, rows)`` as data moves; a context manager."""

    def __init__(self, label: str, total_bytes: int | None, total_rows: int | None, enabled: bool = True,
                 console: Console | None = None) -> None:
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), _Rows(), _Bytes(),
            TransferSpeedColumn(), TimeElapsedColumn(),
            console=console or _console(), transient=False, refresh_per_second=5)
        self.task = self.progress.add_task(label, total=total_bytes, rows=0, total_rows=total_rows)
        self.rows = 0
        self.bytes = 0
        self.started = time.monotonic()

    def __enter__(self) -> TransferBar:
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.enabled:
            self.progress.refresh()
            self.progress.stop()

    def advance(self, data_bytes: int = 0, rows: int = 0) -> None:
        self.bytes += data_bytes
        self.rows += rows
        self.progress.update(self.task, completed=self.bytes, rows=self.rows)

    def describe(self, label: str, **fields: Any) -> None:
        self.progress.update(self.task, description=label, **fields)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started
