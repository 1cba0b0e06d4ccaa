"""Accounting for the fault-injection suite: what the camera recorded against what landed.

Every case runs inside a ``Window``: it starts with the camera stopped and the queue
empty (so every sequence number up to ``seq0`` is settled), starts the camera, injects
its fault, then stops the camera (which closes the open segment properly) and waits for
the queue to drain. The segments recorded in the window are the sequence numbers the
spool handed out meanwhile (``seq0 + 1 .. seq1``, persisted on the card, so a restart,
a power cut or a clock jump cannot fool the count); the camera's own journal lines
("segment ready", "recovered") must name the same ones. What was uploaded, lost and
duplicated comes from the blob store, and every blob is downloaded, checked against
its stored MD5 and decoded with PyAV.

A daemon that exits is started again by systemd within seconds, and the spool and queue
hide it: nothing is lost on the card. What shows it is the daemons' MainPID and systemd's
NRestarts (taken when the window opens and when its fault is over, before the window's
own stop) and the video itself: each start of the camera begins a new run of PTS, and
the frames missing are counted from the decoded blobs across the whole window, not from
the counter of whichever process happens to be running at the end.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shlex
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import av

from hatcam.segment import CLOSING_SUFFIX, LIVE_KEY, is_day_index

SPOOL = "/var/lib/hatcam/spool"
ENV_FILE = "/etc/hatcam/hatcam.env"
UNITS = ("hatcam-camera", "hatcam-upload")
NAME_RE = re.compile(r"(\d{8}T\d{6}\.\d{3}Z)-([0-9a-f]{8})-(\d{6,})\.ts")


def stamp_time(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)


def iso_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Segment:
    """One blob in the store, with what its download and decode showed."""

    name: str
    seq: int
    boot: str
    stamp: datetime
    start: datetime
    end: datetime
    frames: int
    clock_synced: str
    size: int
    md5_stored: bytes | None
    # When the cloud had all of it: a whole blob's creation; for a live blob, its closing
    # record's (the append blob itself is created when the segment opens).
    created: datetime
    modified: datetime
    decoded: int = -1
    first_pts: int | None = None
    last_pts: int | None = None
    md5_ok: bool = False
    # A live (append) blob: the device's bytes, from its closing record ("<blob>.end").
    length: int | None = None
    # Nothing written over it: a whole blob never modified after its creation; a live one
    # holding exactly the bytes its closing record names, that record never rewritten
    # (an append blob is modified by every append, by design).
    written_once: bool = True

    @property
    def filename(self) -> str:
        return self.name.rsplit("/", 1)[-1]


@dataclass
class Figures:
    case: str
    recorded: int
    uploaded: int
    lost: int
    duplicated: int
    frames: int
    footage_s: float
    lost_seqs: list[int] = field(default_factory=list)
    camera_named: int = 0
    bad_md5: list[str] = field(default_factory=list)
    decode_mismatch: list[str] = field(default_factory=list)
    gaps: list[tuple[int, int, float]] = field(default_factory=list)  # (seq a, seq b, frames)
    # Runs of continuous PTS (one per start of the camera) and, between two runs, the
    # time from the end of one to the start of the next (seq a, seq b, seconds).
    runs: int = 0
    breaks: list[tuple[int, int, float]] = field(default_factory=list)
    # Frames missing from the window's video: within a run, the frames the PTS span from
    # its first to its last frame less those decoded; between runs, the break's frames.
    frames_missing: int = 0
    notes: dict = field(default_factory=dict)


class Lab:
    def __init__(self, pi, fps: int, segment_seconds: float, report: Path):
        self.pi = pi
        self.fps = fps
        self.ticks = 90_000 // fps
        self.segment_seconds = segment_seconds
        self.report = report
        self.figures: dict[str, dict] = {}

    # --- the guest -------------------------------------------------------------------
    def guest_init(self) -> int:
        """PID (on the host) of the guest's PID 1; changes when it boots again."""
        return self.pi.guest_init()

    def sh(self, script: str, check=True, timeout=120) -> str:
        """Run a shell script as root in the guest; its stdout. Through nsenter into the
        guest's namespaces, not ssh, so it works while the guest's link is cut."""
        result = subprocess.run(
            [
                "nsenter",
                f"--target={self.guest_init()}",
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--pid",
                "--",
                "env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
                "bash",
                "-c",
                script,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"guest command failed ({result.returncode}): {script}\n{result.stderr[-2000:]}"
            )
        return result.stdout

    def seq(self) -> int:
        return int(self.sh(f"cat {SPOOL}/state/seq").strip() or 0)

    def queued(self) -> int:
        return int(self.sh(f"find {SPOOL}/ready -name '*.ts' | wc -l").strip())

    def ready_names(self) -> list[str]:
        return sorted(self.sh(f"ls {SPOOL}/ready | grep '\\.ts$' || true").split())

    def state(self, daemon: str) -> dict:
        text = self.sh(f"cat {SPOOL}/state/{daemon}.json 2>/dev/null || echo null")
        return json.loads(text) or {}

    def hatcam_status(self) -> tuple[dict, str]:
        """`hatcam status --json` and `hatcam status` on the device (what its user reads)."""
        hatcam = f"/opt/hatcam/venv/bin/hatcam --env-file {ENV_FILE} status"
        return json.loads(self.sh(f"{hatcam} --json")), self.sh(hatcam)

    def journal(self, since: float, units=UNITS) -> list[tuple[float, str]]:
        """(time, message) of the units' journal lines since ``since`` (unix time)."""
        args = " ".join(f"-u {u}" for u in units)
        out = self.sh(
            f"journalctl {args} --since=@{int(since)} -o short-unix --no-pager -q", check=False
        )
        lines = []
        for line in out.splitlines():
            stamp, _, rest = line.partition(" ")
            try:
                moment = float(stamp)
            except ValueError:
                continue
            if moment < since:
                continue
            # "<host> hatcam[PID]: message"
            message = rest.split(": ", 1)[1] if ": " in rest else rest
            lines.append((moment, message))
        return lines

    def show(self, unit: str, prop: str) -> str:
        return self.sh(f"systemctl show -p {prop} --value {unit}").strip()

    def nrestarts(self) -> dict[str, int]:
        return {u: int(self.show(u, "NRestarts") or 0) for u in UNITS}

    def main_pids(self) -> dict[str, int]:
        return {u: int(self.show(u, "MainPID") or 0) for u in UNITS}

    def processes(self) -> dict[str, tuple[int, int]]:
        """(MainPID, NRestarts) of each daemon: a restart by systemd changes both, a
        restart by hand (or by hatcam-recover@) at least the first."""
        found = {}
        for unit in UNITS:
            out = self.sh(f"systemctl show -p MainPID -p NRestarts {unit}")
            props = dict(line.split("=", 1) for line in out.split())
            found[unit] = (int(props["MainPID"]), int(props["NRestarts"]))
        return found

    def active(self, unit: str) -> bool:
        return self.show(unit, "ActiveState") == "active"

    def systemctl(self, *args: str) -> None:
        self.sh("systemctl " + " ".join(shlex.quote(a) for a in args))

    def wait(self, predicate, timeout: float, what: str, poll: float = 1.0):
        return self.pi.wait_for(predicate, timeout, what, poll=poll)

    def wait_drained(self, timeout: float = 240) -> None:
        self.wait(lambda: self.queued() == 0, timeout, "the upload queue to drain")

    def wait_new_blob(self, known: set[str], timeout: float = 60) -> set[str]:
        return self.wait(
            lambda: set(self.blob_names()) - known, timeout, "a new segment in the blob store"
        )

    # --- the blob store ----------------------------------------------------------------
    def blob_names(self) -> list[str]:
        """Segments and closing records (not the day indexes: no footage in them)."""
        client = self.pi.container()
        return [
            b.name
            for b in client.list_blobs(name_starts_with=f"{self.pi.device}/")
            if not is_day_index(b.name)
        ]

    def blobs(self) -> dict[str, Segment]:
        """Every finished segment in the store: a whole-segment blob with its metadata, or
        a live append blob with its closing record (metadata, length, MD5). A live blob
        still open (no closing record yet) is left out: the camera has not finished it."""
        found = {}
        client = self.pi.container()
        listed = list(
            client.list_blobs(name_starts_with=f"{self.pi.device}/", include=["metadata"])
        )
        closing = {
            b.name[: -len(CLOSING_SUFFIX)]: b for b in listed if b.name.endswith(CLOSING_SUFFIX)
        }
        for blob in listed:
            if blob.name.endswith(CLOSING_SUFFIX) or is_day_index(blob.name):
                continue
            match = NAME_RE.fullmatch(blob.name.rsplit("/", 1)[-1])
            assert match, f"unexpected blob name {blob.name}"
            meta = blob.metadata or {}
            md5, length = blob.content_settings.content_md5, None
            written_once = blob.creation_time == blob.last_modified
            created, modified = blob.creation_time, blob.last_modified
            if meta.get(LIVE_KEY) == "true":
                end = closing.get(blob.name)
                if end is None:
                    continue
                meta = end.metadata
                md5, length = bytes.fromhex(meta["md5"]), int(meta["length"])
                written_once = blob.size == length and end.creation_time == end.last_modified
                created, modified = end.creation_time, end.last_modified
            found[blob.name] = Segment(
                name=blob.name,
                seq=int(match[3]),
                boot=match[2],
                stamp=stamp_time(match[1]),
                start=iso_time(meta["start"]),
                end=iso_time(meta["end"]),
                frames=int(meta["frames"]),
                clock_synced=meta.get("clock_synced", ""),
                size=blob.size,
                md5_stored=md5,
                created=created,
                modified=modified,
                length=length,
                written_once=written_once,
            )
        return found

    def recovery_point(self, at: float | None = None) -> float | None:
        """Seconds from the newest frame the cloud holds (open live blobs included) to
        ``at`` (default now): what a destroyed device would lose. The frame's capture time
        is its segment's start (the name's stamp) plus its PTS from the segment's first
        frame; None when the store holds no frame of this device."""
        at = time.time() if at is None else at
        client = self.pi.container()
        names = [
            b.name
            for b in client.list_blobs(name_starts_with=f"{self.pi.device}/")
            if NAME_RE.fullmatch(b.name.rsplit("/", 1)[-1])
        ]
        for name in sorted(names, key=lambda n: int(NAME_RE.fullmatch(n.rsplit("/", 1)[-1])[3]))[
            ::-1
        ]:
            data = client.download_blob(name).readall()
            data = data[: len(data) // 188 * 188]  # an open one may end mid-packet
            times = []
            try:
                with av.open(io.BytesIO(data), format="mpegts") as media:
                    times = [f.time for f in media.decode(video=0) if f.time is not None]
            except av.error.FFmpegError:
                pass
            if times:
                stamp = stamp_time(NAME_RE.fullmatch(name.rsplit("/", 1)[-1])[1]).timestamp()
                return round(at - (stamp + max(times) - min(times)), 2)
        return None

    def inspect(self, segment: Segment) -> Segment:
        """Download the blob, compare it with its stored MD5, decode every frame."""
        data = (
            self.pi.container().download_blob(segment.name, 0, segment.length).readall()
            if segment.length is not None
            else self.pi.container().download_blob(segment.name).readall()
        )
        segment.md5_ok = segment.md5_stored is not None and (
            hashlib.md5(data).digest() == bytes(segment.md5_stored)
        )
        frames, first, last = 0, None, None
        try:
            with av.open(io.BytesIO(data), format="mpegts") as media:
                stream = media.streams.video[0]
                for packet in media.demux(stream):
                    for frame in packet.decode():
                        frames += 1
                        if frame.pts is not None:
                            first = frame.pts if first is None else min(first, frame.pts)
                            last = frame.pts if last is None else max(last, frame.pts)
        except av.error.FFmpegError:
            pass  # counted: decoded stays below the recorded frames
        segment.decoded, segment.first_pts, segment.last_pts = frames, first, last
        return segment

    def window(self, case: str) -> Window:
        return Window(self, case)

    # --- figures -------------------------------------------------------------------
    def record(self, figures: Figures) -> None:
        self.figures[figures.case] = figures.__dict__
        self.write_report()

    def note(self, case: str, **notes) -> None:
        self.figures.setdefault(case, {"case": case, "notes": {}})["notes"].update(notes)
        self.write_report()

    def write_report(self) -> None:
        self.report.parent.mkdir(parents=True, exist_ok=True)
        self.report.with_suffix(".json").write_text(json.dumps(self.figures, indent=1))
        rows = [
            "| fault | recorded | uploaded | lost | duplicated | footage (s) | notes |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for fig in self.figures.values():
            notes = "; ".join(f"{k}: {v}" for k, v in fig.get("notes", {}).items())
            if "recorded" in fig:
                rows.append(
                    f"| {fig['case']} | {fig['recorded']} | {fig['uploaded']} | {fig['lost']} "
                    f"| {fig['duplicated']} | {fig['footage_s']} | {notes} |"
                )
            else:
                rows.append(f"| {fig['case']} | | | | | | {notes} |")
        self.report.with_suffix(".md").write_text("\n".join(rows) + "\n")


class Window:
    """The camera's recording between open() and close(), accounted from the blob store."""

    def __init__(self, lab: Lab, case: str):
        self.lab = lab
        self.case = case
        self.seq0 = self.seq1 = 0
        self.t0 = self.t1 = 0.0
        self.known: set[str] = set()
        self.segments: list[Segment] = []
        # Each daemon's (MainPID, NRestarts) once the camera has started, and once the
        # fault is over (just before close() stops the camera).
        self.started: dict[str, tuple[int, int]] = {}
        self.ended: dict[str, tuple[int, int]] = {}

    def open(self) -> Window:
        lab = self.lab
        lab.systemctl("stop", "hatcam-camera")
        lab.wait_drained()
        self.seq0 = lab.seq()
        self.known = set(lab.blob_names())
        self.t0 = time.time()
        lab.systemctl("start", "hatcam-camera")
        self.started = lab.processes()
        return self

    def close(self, drain_timeout: float = 240) -> None:
        lab = self.lab
        self.ended = lab.processes()
        lab.systemctl("stop", "hatcam-camera")  # closes the open segment properly
        lab.wait_drained(drain_timeout)
        self.seq1 = lab.seq()
        self.t1 = time.time()

    def restarts(self, units=UNITS) -> list[str]:
        """The daemons that are not the processes the window started with (as of close(),
        or of now before it), each with what systemd's journal says happened to it."""
        now = self.ended or self.lab.processes()
        found = []
        for unit in units:
            (pid0, n0), (pid1, n1) = self.started[unit], now[unit]
            if (pid0, n0) != (pid1, n1):
                said = [
                    m
                    for _, m in self.lab.journal(self.t0, units=(unit,))
                    if "Main process exited" in m or "Scheduled restart" in m
                ]
                found.append(
                    f"{unit}: MainPID {pid0} -> {pid1}, NRestarts {n0} -> {n1} "
                    f"({'; '.join(said[:4]) or 'no exit in its journal'})"
                )
        return found

    def assert_same_processes(self, units=UNITS) -> None:
        restarted = self.restarts(units)
        assert not restarted, f"a daemon was restarted during the fault: {restarted}"

    def assert_one_run(self, figures: Figures) -> None:
        """What an outage case claims beyond "nothing lost": the daemons rode it out. The
        same processes from the window's start to the end of the fault, one run of PTS in
        the video (the camera never started again) and no frame missing from it."""
        self.assert_same_processes()
        assert figures.runs == 1, (
            f"the video is {figures.runs} runs (its PTS start again: the camera started "
            f"again); breaks between runs (seq a, seq b, seconds): {figures.breaks}"
        )
        assert figures.frames_missing == 0 and not figures.gaps, (
            f"{figures.frames_missing} frames missing from the video; "
            f"holes (seq a, seq b, frames): {figures.gaps}"
        )

    def new_segments(self) -> list[Segment]:
        blobs = self.lab.blobs()
        return sorted((s for n, s in blobs.items() if n not in self.known), key=lambda s: s.seq)

    def camera_named(self) -> set[int]:
        """Sequence numbers the camera's journal says it closed or recovered."""
        seqs = set()
        for _, message in self.lab.journal(self.t0 - 1, units=("hatcam-camera",)):
            if "segment ready:" in message or "after an unclean stop" in message:
                match = NAME_RE.search(message)
                if match:
                    seqs.add(int(match[3]))
        return seqs

    def account(self, **notes) -> Figures:
        lab = self.lab
        segments = [lab.inspect(s) for s in self.new_segments()]
        self.segments = segments
        window = range(self.seq0 + 1, self.seq1 + 1)
        by_seq: dict[int, list[Segment]] = defaultdict(list)
        for segment in segments:
            by_seq[segment.seq].append(segment)
        outside = [s for s in segments if s.seq not in window]
        lost = [q for q in window if q not in by_seq]
        duplicated = sum(len(v) - 1 for v in by_seq.values()) + len(outside)
        # Frames missing, from the decoded video alone: within a run the PTS say how
        # many frames there should be; between runs (PTS start again) the wall clock.
        gaps, breaks, missing = [], [], 0
        runs = 1 if segments else 0
        for a, b in zip(segments, segments[1:], strict=False):
            if a.last_pts is None or b.first_pts is None or b.first_pts <= a.last_pts:
                runs += 1  # the daemon started again: its timestamps start again
                seconds = (b.start - a.end).total_seconds()
                breaks.append((a.seq, b.seq, round(seconds, 2)))
                missing += max(0, round(seconds * lab.fps))
                continue
            gap = (b.first_pts - a.last_pts) / lab.ticks - 1
            if gap:
                gaps.append((a.seq, b.seq, round(gap, 2)))
        for segment in segments:
            if segment.first_pts is not None:
                span = (segment.last_pts - segment.first_pts) / lab.ticks + 1
                missing += round(span) - segment.decoded
        missing += round(sum(frames for _, _, frames in gaps))
        frames = sum(s.frames for s in segments)
        figures = Figures(
            case=self.case,
            recorded=len(window),
            uploaded=len([q for q in window if q in by_seq]),
            lost=len(lost),
            duplicated=duplicated,
            frames=frames,
            footage_s=round(frames / lab.fps, 1),
            lost_seqs=lost,
            camera_named=len(self.camera_named() & set(window)),
            bad_md5=[s.filename for s in segments if not s.md5_ok],
            decode_mismatch=[
                f"{s.filename}: {s.decoded}/{s.frames}" for s in segments if s.decoded != s.frames
            ],
            gaps=gaps,
            runs=runs,
            breaks=breaks,
            frames_missing=missing,
            notes=notes,
        )
        lab.record(figures)
        return figures

    def assert_complete(self, figures: Figures, torn: frozenset[str] = frozenset()) -> None:
        """Nothing lost, nothing twice, every blob intact and fully decodable (a segment
        cut by a power loss, named in ``torn``, may lose its last, partly written frame
        to the decoder)."""
        assert figures.recorded > 0, "no segment recorded in the window"
        assert figures.lost == 0, f"segments lost: {figures.lost_seqs}"
        assert figures.duplicated == 0, "a segment landed twice"
        assert figures.camera_named == figures.recorded, (
            f"the camera's journal names {figures.camera_named} of {figures.recorded} segments"
        )
        assert not figures.bad_md5, f"blobs differ from their recorded MD5: {figures.bad_md5}"
        mismatch = [
            f"{s.filename}: {s.decoded}/{s.frames}"
            for s in self.segments
            if not (s.decoded == s.frames or (s.filename in torn and s.frames - 1 <= s.decoded))
        ]
        assert not mismatch, f"frames decoded/recorded: {mismatch}"
