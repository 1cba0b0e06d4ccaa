"""Export: a range of one device's footage becomes MP4 files in a background job, by
``hatcam fetch``'s own download, verification and stitch (so an export is the same file
``hatcam fetch`` makes for that range), with its progress for the page to show."""

from __future__ import annotations

import io
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..fetch import command
from ..fetch.progress import PlainProgress
from ..segment import iso

RUNNING, DONE, FAILED = "running", "done", "failed"


class JobProgress(PlainProgress):
    """fetch's plain progress, kept as lines and counts instead of printed."""

    def __init__(self):
        super().__init__(io.StringIO())
        self.cached = 0

    def start(self, total_bytes: int, count: int, cached: int) -> None:
        super().start(total_bytes, count, cached)
        self.cached = cached


@dataclass
class Job:
    device: str
    start: datetime
    end: datetime
    out: Path
    state: str = RUNNING
    message: str = "listing"
    files: list[str] = field(default_factory=list)
    progress: JobProgress = field(default_factory=JobProgress)
    log: io.StringIO = field(default_factory=io.StringIO)

    def to_dict(self) -> dict:
        p = self.progress
        return {
            "state": self.state,
            "done": p.finished_count + p.cached,
            "total": p.count + p.cached,
            "message": self.message,
            "files": self.files,
        }


class Exports:
    """The jobs of this server, by id; each runs in a thread of its own, one after the
    other: they share the output folder and fetch's cache in it."""

    def __init__(self, settings, ring, out: Path):
        self.settings, self.ring, self.out = settings, ring, Path(out)
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.turn = threading.Lock()  # held by the export running now

    def start(self, device: str, start: datetime, end: datetime) -> str:
        job_id = uuid.uuid4().hex[:12]
        job = Job(device, start, end, self.out)
        with self.lock:
            self.jobs[job_id] = job
        threading.Thread(
            target=self._run, args=(job,), name=f"export-{job_id}", daemon=True
        ).start()
        return job_id

    def _run(self, job: Job) -> None:
        if not self.turn.acquire(blocking=False):
            job.message = "waiting for the export before it"
            self.turn.acquire()
        try:
            self._export(job)
        finally:
            self.turn.release()

    def _export(self, job: Job) -> None:
        job.message = "listing"
        args = command.build_args(
            ["--device", job.device, "--since", iso(job.start), "--until", iso(job.end)]
            + ["--out", str(job.out)]
        )
        before = {p.name: p.stat().st_mtime for p in job.out.glob("*.mp4")}
        fetch = command.Fetch(
            self.settings, args, out=job.log, err=job.log, ring=self.ring, progress=job.progress
        )
        job.message = "downloading"
        try:
            status = fetch.run()
        except Exception as exc:  # a job must end in words, whatever happened
            job.state, job.message = FAILED, f"export failed: {type(exc).__name__}: {exc}"
            return
        after = {p.name: p.stat().st_mtime for p in job.out.glob("*.mp4")}
        job.files = sorted(n for n, t in after.items() if before.get(n) != t) or sorted(
            self._mine(job, after)
        )
        lines = [line.strip() for line in job.log.getvalue().splitlines() if line.strip()]
        if status == command.EXIT_OK and job.files:
            job.state, job.message = DONE, f"{len(job.files)} file(s) in {job.out}"
        elif status == command.EXIT_OK:
            job.state, job.message = FAILED, lines[-1] if lines else "no footage in range"
        else:
            job.state = FAILED
            job.message = "; ".join(fetch.problems[:3]) or (lines[-1] if lines else "failed")

    @staticmethod
    def _mine(job: Job, files: dict) -> list[str]:
        """Files fetch kept unchanged (an export of the same range again)."""
        return [n for n in files if n.startswith(f"{job.device}_")]

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)
