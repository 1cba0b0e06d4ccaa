"""Download progress: a rich bar on a terminal, a plain line now and then otherwise.

rich is optional (the ``fetch`` extra): without it a terminal gets the plain lines.
"""

from __future__ import annotations

import sys
import threading
import time

PLAIN_EVERY = 5.0  # seconds between plain progress lines


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


class PlainProgress:
    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()
        self.total = self.done = self.count = self.finished_count = 0
        self.last = 0.0
        self.started = 0.0

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start(self, total_bytes: int, count: int, cached: int) -> None:
        self.total, self.count = total_bytes, count
        self.started = self.last = time.monotonic()
        if cached:
            self._line(f"{cached} segment(s) already downloaded and verified")
        if count:
            self._line(f"downloading {count} segment(s), {_mb(total_bytes)}")

    def advance(self, nbytes: int) -> None:
        with self.lock:
            self.done += nbytes

    def finished(self, outcome) -> None:
        with self.lock:
            self.finished_count += 1
            now = time.monotonic()
            if outcome.status == "failed":
                self._line(f"FAILED {outcome.remote.name}: {outcome.error}")
            if now - self.last >= PLAIN_EVERY and self.finished_count < self.count:
                self.last = now
                self._line(
                    f"  {self.finished_count}/{self.count} segments, "
                    f"{_mb(self.done)} of {_mb(self.total)}"
                )

    def stop(self) -> None:
        if self.count:
            seconds = max(time.monotonic() - self.started, 1e-6)
            self._line(
                f"downloaded {self.finished_count}/{self.count} segment(s), {_mb(self.done)} "
                f"in {seconds:.1f} s ({_mb(self.done / seconds)}/s)"
            )


class RichProgress:
    def __init__(self, console):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.console = console
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[segments]}"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = None
        self.count = self.finished_count = 0
        self.lock = threading.Lock()  # downloads finish on their own threads

    def start(self, total_bytes: int, count: int, cached: int) -> None:
        if cached:
            self.console.print(f"{cached} segment(s) already downloaded and verified")
        self.count = count
        if not count:
            return
        self.task = self.bar.add_task(
            "downloading", total=total_bytes, segments=f"0/{count} segments"
        )
        self.bar.start()

    def advance(self, nbytes: int) -> None:
        if self.task is not None and nbytes:
            self.bar.update(self.task, advance=nbytes)

    def finished(self, outcome) -> None:
        with self.lock:
            self.finished_count += 1
            done = f"{self.finished_count}/{self.count} segments"
        if outcome.status == "failed":
            self.console.print(f"[red]FAILED[/] {outcome.remote.name}: {outcome.error}")
        if self.task is not None:
            self.bar.update(self.task, segments=done)

    def stop(self) -> None:
        if self.task is not None:
            self.bar.stop()


def make_progress(stream=None):
    """A rich bar on a terminal when rich is installed (the ``hatcam[fetch]`` extra);
    else plain lines, which say the same."""
    stream = stream or sys.stdout
    if stream.isatty():
        try:
            from rich.console import Console
        except ImportError:
            return PlainProgress(stream)
        return RichProgress(Console(file=stream))
    return PlainProgress(stream)
