"""The spool on the SD card: segments stay here until the cloud has them.

    recording/   the segment being written (at most one per camera daemon)
    ready/       closed segments, each ``<name>.ts`` with its ``<name>.json``
    state/       sequence counter and the daemons' status files
    kept/        segments whose cloud copy someone else appended to: kept whole, for good

A segment moves from recording/ to ready/ by an atomic rename after fsync, so
ready/ only ever holds complete files. Its metadata is written first, so a
``.ts`` in ready/ always has its ``.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
from pathlib import Path

from ..files import fsync_dir, write_atomic
from ..segment import SegmentName, SegmentRecord

log = logging.getLogger("hatcam.spool")


class Spool:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.recording = self.root / "recording"
        self.ready = self.root / "ready"
        self.state = self.root / "state"
        self._seq_lock = threading.Lock()

    def ensure(self) -> Spool:
        """Make the spool's directories. Each new one is synced into its parent: a name is
        on the card only once its directory is, and a power cut on a fresh card must not
        take the directories, with every segment synced into them, away."""
        for path in (self.root, self.recording, self.ready, self.state):
            if not path.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                fsync_dir(path.parent)
        return self

    def next_seq(self) -> int:
        """A sequence number never handed out before on this spool (survives reboots)."""
        counter = self.state / "seq"
        with self._seq_lock:
            try:
                seq = int(counter.read_text()) + 1
            except (OSError, ValueError):
                seq = 1
            write_atomic(counter, str(seq).encode())
            return seq

    def ready_segments(self) -> list[Path]:
        """Closed segments, oldest first (by sequence number, which ignores clock jumps)."""
        found = []
        for path in self.ready.glob("*.ts"):
            name = SegmentName.parse(path.name)
            if name is not None:
                found.append((name.seq, path.name, path))
        return [path for _, _, path in sorted(found)]

    @staticmethod
    def metadata_path(segment: Path) -> Path:
        return segment.with_suffix(".json")

    def read_metadata(self, segment: Path) -> dict:
        """The sidecar as stored (JSON)."""
        return json.loads(self.metadata_path(segment).read_text())

    def read_record(self, segment: Path) -> SegmentRecord:
        return SegmentRecord.from_sidecar(self.read_metadata(segment))

    def commit(self, recording_path: Path, record: SegmentRecord) -> Path:
        """Move a closed, fsync'd segment into ready/ with its record."""
        target = self.ready / recording_path.name
        write_atomic(self.metadata_path(target), json.dumps(record.to_sidecar()).encode())
        os.replace(recording_path, target)
        fsync_dir(self.ready)
        fsync_dir(self.recording)
        return target

    def keep(self, segment: Path) -> Path:
        """Move a segment out of the queue into kept/ for good (its cloud copy was
        interfered with): it is never sent again, and never dropped to make room."""
        kept = self.root / "kept"
        if not kept.is_dir():
            kept.mkdir()
            fsync_dir(self.root)
        os.replace(self.metadata_path(segment), self.metadata_path(kept / segment.name))
        os.replace(segment, kept / segment.name)
        fsync_dir(kept)
        fsync_dir(segment.parent)
        return kept / segment.name

    def remove(self, segment: Path) -> None:
        """Forget a segment (after upload or when dropped); the .ts goes first. Synced:
        after a power cut, an uploaded segment that came back would be sent again and
        found already there, and a live one would look appended to by someone else."""
        segment.unlink(missing_ok=True)
        self.metadata_path(segment).unlink(missing_ok=True)
        fsync_dir(segment.parent)

    def remove_orphans(self) -> None:
        """Metadata whose segment is gone (a crash between the two unlinks)."""
        for meta in self.ready.glob("*.json"):
            if not meta.with_suffix(".ts").exists():
                meta.unlink(missing_ok=True)

    def free_mb(self) -> float:
        return shutil.disk_usage(self.root).free / 1_000_000

    @staticmethod
    @contextlib.contextmanager
    def claim(segment: Path):
        """The segment's open file, locked against the other daemon; None if that one
        holds it (the uploader sending it, or the camera dropping it) or it is gone."""
        try:
            fh = open(segment, "rb")  # noqa: SIM115 - closed below, after the lock
        except FileNotFoundError:
            yield None
            return
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            # Dropped (or uploaded) between open() and the lock: the name is gone.
            yield fh if segment.exists() else None

    def drop_oldest(self) -> Path | None:
        """Delete the oldest unsent segment to make room; log it, since footage is lost.
        A segment the uploader is sending right now is left to it."""
        for segment in self.ready_segments():
            with self.claim(segment) as fh:
                if fh is None:
                    continue
                size = os.fstat(fh.fileno()).st_size
                self.remove(segment)
            log.warning(
                "disk full: dropped oldest unsent segment %s (%.1f MB) to keep recording",
                segment.name,
                size / 1e6,
            )
            return segment
        return None

    def queue_summary(self) -> tuple[int, int, str | None]:
        """(segments queued, bytes queued, start time of the oldest) for status reports."""
        segments = self.ready_segments()
        total = 0
        for path in segments:
            with contextlib.suppress(FileNotFoundError):  # uploaded meanwhile
                total += path.stat().st_size
        oldest = None
        if segments:
            try:
                oldest = self.read_metadata(segments[0])["start"]
            except (OSError, ValueError, KeyError):
                oldest = None
        return len(segments), total, oldest


class DiskGuard:
    """The free-space floor. ``pause``: stop recording until uploads free space.
    ``drop-oldest``: delete the oldest unsent segments (dashcam style).

    Resuming needs ``margin_mb`` above the floor, so recording does not flap
    on and off around it.
    """

    def __init__(self, spool: Spool, min_free_mb: float, policy: str, margin_mb: float):
        self.spool = spool
        self.min_free_mb = min_free_mb
        self.policy = policy
        self.margin_mb = margin_mb
        self.blocked = False

    def room(self) -> bool:
        floor = self.min_free_mb + (self.margin_mb if self.blocked else 0)
        free = self.spool.free_mb()
        if self.policy == "drop-oldest":
            while free < floor and self.spool.drop_oldest() is not None:
                free = self.spool.free_mb()
        self.blocked = free < floor
        return not self.blocked
