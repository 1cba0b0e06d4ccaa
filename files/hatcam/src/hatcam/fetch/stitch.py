"""Remux segments into one MP4 per continuous run, with PyAV, never re-encoding.

Within one recording run the segments' PTS are the capture clock and
continue from segment to segment, so they are kept as they are, across the
33-bit wrap too (after about 26.5 hours): a segment whose PTS read just after
the previous one's on the 33-bit clock continues it. A new run
(the daemon restarted: PTS start again near 0) is placed by the wall-clock
start time of its first segment. A gap longer than ``max_gap`` (default: two
segment lengths) ends the file and starts a new one; shorter gaps stay in the
file as they happened (the picture holds) and are reported.

Legacy raw ``.h264`` has no timestamps: its frames get ``1/fps`` each, and
each file is placed by the time in its name (one-second precision).

Sound (segments with an AAC stream) is copied beside the picture, its packets shifted
exactly as their segment's frames are, so it stays in sync across segments and runs.
Where the sound stops while the picture goes on (a microphone unplugged, segments
recorded without one) the file has no audio there: each such stretch is an audio gap,
reported as video gaps are.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import av

from ..segment import (
    CLOCK,
    TIME_BASE,
    WRAP,
    Contents,
    adts_whole,
    duration,
    frame_ticks,
    iso,
    probe,
    to_ticks,
    unwrap,
)

LEGACY_SLOP = 1.0  # seconds: legacy names have whole seconds, so smaller gaps are noise
# The longest gap read as the capture clock wrapping between two segments of one run
# rather than as a restart (whose PTS start again near 0): a wrap is read only when the
# segment starts at most this long after the previous one's last frame on the 33-bit
# clock. A longer gap across the wrap is placed by the wall clock, as a restart is.
WRAP_WINDOW = 600 * CLOCK
# Sound missing for longer than this is an audio gap: half an AAC packet (1024 samples)
# is rounding, a whole one missing is not.
AUDIO_GAP_TICKS = CLOCK // 50
# At a file's start and end, sound may begin a capture latency after the picture.
AUDIO_EDGE_TICKS = CLOCK // 2


@dataclass
class Segment:
    """A verified local segment, ready to be placed on a run's timeline."""

    name: str  # the blob's name, for reports
    path: Path
    device: str
    start: datetime  # wall clock (UTC) from the name
    frames: int
    first_pts: int
    last_pts: int
    ticks: int  # one frame, in 90 kHz ticks
    width: int
    height: int
    boot: str | None = None
    seq: int | None = None
    legacy: bool = False
    # An unfinished segment: only its first ``frames`` frames are whole (the rest, a torn
    # last frame, is left out).
    cut: bool = False
    audio_packets: int | None = None  # AAC packets; None: no audio stream (or not known)
    # Only the first ``audio_packets`` are taken (a prefix a checkpoint verifies: the
    # file may hold a packet or two more than it covers).
    audio_prefix: bool = False

    @classmethod
    def from_contents(
        cls,
        name,
        path,
        device,
        start,
        contents: Contents,
        *,
        boot=None,
        seq=None,
        legacy_fps=None,
        cut=False,
    ):
        if legacy_fps is not None:  # no timestamps in the file: 1/fps per frame
            ticks = round(frame_ticks(legacy_fps))
            first, last = 0, (contents.frames - 1) * ticks
        else:
            first, last, ticks = contents.first_pts, contents.last_pts, contents.frame_ticks
        audio = None if cut else contents.audio_packets  # a torn end: counted while copying
        return cls(
            name,
            Path(path),
            device,
            start,
            contents.frames,
            first,
            last,
            ticks,
            contents.width,
            contents.height,
            boot,
            seq,
            legacy_fps is not None,
            cut,
            audio,
        )

    @property
    def duration(self) -> float:
        return duration(self.first_pts, self.last_pts, self.ticks)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.duration)


@dataclass
class Placed:
    segment: Segment
    # Added to the segment's PTS/DTS on the output timeline (whole turns of the 33-bit
    # clock included, when the run went past its wrap).
    shift: int


@dataclass
class Gap:
    at: datetime  # wall clock where the picture stops
    seconds: float
    missing: int = 0  # sequence numbers that are not there (same boot)
    new_file: bool = False


@dataclass
class AudioGap:
    at: datetime  # wall clock where the sound stops
    seconds: float

    def to_dict(self, start: datetime) -> dict:
        """JSON form (the proof report's), also placed by its offset in the file (seconds
        from ``start``)."""
        offset = round((self.at - start).total_seconds(), 3)
        return {"from": iso(self.at), "offset": offset, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict, start: datetime) -> AudioGap:
        return cls(start + timedelta(seconds=data["offset"]), data["seconds"])


@dataclass
class Run:
    device: str
    items: list[Placed] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)  # bridged inside this file
    # Where the file has picture but no sound (found by ``write``): empty without audio.
    audio_gaps: list[AudioGap] = field(default_factory=list)
    audio_packets: int = 0  # AAC packets written (by ``write``)

    @property
    def start(self) -> datetime:
        return self.items[0].segment.start

    @property
    def frames(self) -> int:
        return sum(p.segment.frames for p in self.items)

    @property
    def duration_ticks(self) -> int:
        first, last = self.items[0], self.items[-1]
        return (
            last.segment.last_pts
            + last.shift
            + last.segment.ticks
            - (first.segment.first_pts + first.shift)
        )

    @property
    def duration(self) -> float:
        return self.duration_ticks / CLOCK

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.duration)

    @property
    def filename(self) -> str:
        return f"{self.device}_{self.start:%Y%m%dT%H%M%SZ}.mp4"

    @property
    def names(self) -> list[str]:
        return [p.segment.name for p in self.items]


def default_max_gap(segments: list[Segment]) -> float:
    """About two segment lengths, as the segments themselves show it."""
    if not segments:
        return 0.0
    return 2 * statistics.median(s.duration for s in segments) + 0.5


def _continued(prev: Segment, seg: Segment) -> int | None:
    """Where ``seg`` starts after ``prev`` on the capture clock, in ticks after prev's
    last PTS, when it continues prev's run; None when it starts a new run.

    The device's records count past the 33-bit wrap, what is read from a file starts
    again below 2**33: so PTS that went back may be the clock's wrap (read so when
    ``seg`` starts within WRAP_WINDOW after it, modulo 2**33), and a record a whole turn
    ahead of a file read is read the same way.
    """
    if (
        seg.legacy
        or seg.boot is None
        or seg.boot != prev.boot
        or (seg.seq is not None and prev.seq is not None and seg.seq <= prev.seq)
    ):
        return None
    ahead = seg.first_pts - prev.last_pts
    wrapped = ahead % WRAP
    if 0 < wrapped <= WRAP_WINDOW:
        return wrapped
    return ahead if ahead > 0 else None


def _missing(prev: Segment, seg: Segment) -> int:
    if seg.boot is None or seg.boot != prev.boot or seg.seq is None or prev.seq is None:
        return 0
    return max(0, seg.seq - prev.seq - 1)


def plan(segments: list[Segment], max_gap: float) -> tuple[list[Run], list[Gap]]:
    """Segments (one device, in time order) -> runs, plus the gaps that split files."""
    runs: list[Run] = []
    splits: list[Gap] = []
    for seg in segments:
        run = runs[-1] if runs else None
        if run is None:
            runs.append(Run(seg.device, [Placed(seg, -seg.first_pts)]))
            continue
        prev = run.items[-1]
        prev_end = prev.segment.last_pts + prev.shift + prev.segment.ticks
        ahead = _continued(prev.segment, seg)
        if ahead is not None:  # the capture clock says where it goes
            shift = prev.segment.last_pts + prev.shift + ahead - seg.first_pts
            gap_ticks = ahead - prev.segment.ticks
        else:
            wall = (seg.start - prev.segment.end).total_seconds()
            if seg.legacy and wall < LEGACY_SLOP:
                wall = 0.0
            gap_ticks = max(0, round(wall * CLOCK))
            shift = prev_end + gap_ticks - seg.first_pts
        gap = Gap(prev.segment.end, gap_ticks / CLOCK, _missing(prev.segment, seg))
        resized = (seg.width, seg.height) != (prev.segment.width, prev.segment.height)
        if gap.seconds > max_gap or resized:
            gap.new_file = True
            splits.append(gap)
            runs.append(Run(seg.device, [Placed(seg, -seg.first_pts)]))
            continue
        if gap_ticks > seg.ticks // 2 or gap.missing:
            run.gaps.append(gap)
        run.items.append(Placed(seg, shift))
    return runs, splits


def write(run: Run, path: Path, *, reread: bool = False, ready=None) -> None:
    """Remux ``run`` into ``path`` (+faststart), check it, then move it into place.

    The check counts each segment's frames, and the file's span, against the plan; ``reread``
    also reads the written file back (slower; used before blobs are deleted).
    ``ready(segment)``, when given, is called before a segment's file is opened
    (fetch waits there for its download) and may raise to abandon the file.
    """
    tmp = path.with_name(f".{path.name}.part")
    options = {"movflags": "+faststart"}
    if any(placed.segment.audio_packets for placed in run.items):
        # Where the sound starts is an edit list entry, in the movie's timescale: its
        # default (ms) would move the sound by up to a millisecond against the picture.
        options["movie_timescale"] = str(CLOCK)
    out = av.open(str(tmp), "w", format="mp4", options=options)
    frames, first, end = 0, None, 0
    sound = _Sound(run)
    readied = set()

    def opened(seg: Segment):
        if ready is not None and seg.name not in readied:
            ready(seg)
            readied.add(seg.name)
        return av.open(str(seg.path), format="h264" if seg.legacy else "mpegts")

    try:
        out.metadata["creation_time"] = run.start.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        target = None
        for placed in run.items:
            seg = placed.segment
            with opened(seg) as src:
                stream = src.streams.video[0]
                if target is None:
                    target = out.add_stream_from_template(stream)
                    target.time_base = TIME_BASE
                    sound.target = _audio_target(run, out, opened, src)
                audio = src.streams.audio[0] if src.streams.audio else None
                if sound.target is None:
                    audio = None
                count, low, high = _copy(src, stream, target, placed, out, audio, sound)
            if count != seg.frames:
                raise ValueError(f"{seg.name}: holds {count} frames, not {seg.frames}")
            frames += count
            first = low if first is None else min(first, low)
            end = max(end, high)
    except BaseException:
        out.close()
        tmp.unlink(missing_ok=True)
        raise
    out.close()
    ticks = end - (first or 0)
    run.audio_gaps = sound.gaps(first or 0, end)
    run.audio_packets = sound.packets
    if reread:
        frames, ticks = measure(tmp)
    if frames != run.frames or abs(ticks - run.duration_ticks) > run.items[-1].segment.ticks:
        tmp.unlink(missing_ok=True)
        raise ValueError(
            f"{path.name}: wrote {frames} frames / {ticks / CLOCK:.3f} s, "
            f"expected {run.frames} / {run.duration:.3f} s"
        )
    os.replace(tmp, path)


class _Sound:
    """The audio of one file being written: its stream, and where it has sound."""

    def __init__(self, run: Run):
        self.run = run
        self.target = None
        self.packets = 0
        self.spans: list[tuple[int, int]] = []  # (pts, end) of each packet, output timeline

    def add(self, pts: int, length: int) -> None:
        self.packets += 1
        self.spans.append((pts, pts + length))

    def gaps(self, first: int, end: int) -> list[AudioGap]:
        """Stretches of the file with picture and no sound."""
        if self.target is None:
            return []
        found, at = [], first
        spans = sorted(self.spans)
        for index, (pts, stop) in enumerate([*spans, (end, end)]):
            edge = index == 0 or index == len(spans)
            if pts - at > (AUDIO_EDGE_TICKS if edge else AUDIO_GAP_TICKS):
                moment = self.run.start + timedelta(seconds=(at - first) / CLOCK)
                found.append(AudioGap(moment, round((pts - at) / CLOCK, 3)))
            at = max(at, stop)
        return found


def _audio_target(run: Run, out, opened, src):
    """The MP4's audio stream, from the first segment of the run that has sound (None
    when none has): every stream must exist before the first packet is written."""
    for placed in run.items:
        seg = placed.segment
        if seg.legacy or seg.audio_packets == 0:
            continue
        if placed is run.items[0]:
            streams = src.streams.audio
            if streams:
                return out.add_stream_from_template(streams[0])
            continue
        if seg.audio_packets is None:
            continue
        with opened(seg) as other:
            if other.streams.audio:
                return out.add_stream_from_template(other.streams.audio[0])
    return None


def _copy(
    src, stream, target, placed: Placed, out, audio=None, sound: _Sound | None = None
) -> tuple[int, int, int]:
    """Mux one segment's packets; (frames, first pts, end) on the output timeline. Its
    audio packets (``audio``: the segment's audio stream) go to ``sound``'s stream."""
    seg = placed.segment
    index, first, end = 0, None, 0
    ticks = to_ticks(stream.time_base)
    near = seg.first_pts  # the file's PTS are 33-bit: unwrapped on the segment's count
    heard, audio_near = 0, seg.first_pts
    for packet in src.demux(*([stream, audio] if audio is not None else [stream])):
        if packet.size == 0 or (packet.pts is None and not seg.legacy):
            continue
        if packet.stream is audio:
            if seg.audio_prefix and heard >= (seg.audio_packets or 0):
                continue
            if not adts_whole(bytes(packet)):
                continue  # cut short by a crash: probe does not count it either
            audio_near = unwrap(to_ticks(audio.time_base)(packet.pts), audio_near)
            length = packet.duration and to_ticks(audio.time_base)(packet.duration)
            length = length or round(1024 * CLOCK / (audio.sample_rate or 48000))
            packet.stream = sound.target
            packet.time_base = TIME_BASE
            packet.pts = packet.dts = audio_near + placed.shift
            packet.duration = length
            out.mux(packet)
            sound.add(audio_near + placed.shift, length)
            heard += 1
            continue
        if seg.legacy:
            pts = dts = index * seg.ticks
        else:
            pts = near = unwrap(ticks(packet.pts), near)
            dts = unwrap(ticks(packet.dts), pts) if packet.dts is not None else pts
        index += 1
        packet.stream = target
        packet.time_base = TIME_BASE
        pts, dts = pts + placed.shift, dts + placed.shift
        packet.pts, packet.dts = pts, dts
        packet.duration = seg.ticks
        out.mux(packet)
        first = pts if first is None else min(first, pts)
        end = max(end, pts + seg.ticks)
        if seg.cut and index == seg.frames:
            break  # before the demuxer reads on into what follows (torn, or unknown)
    expected = seg.audio_packets
    if expected is not None and sound is not None and sound.target and heard != expected:
        raise ValueError(f"{seg.name}: holds {heard} audio packets, not {expected}")
    if expected is None and heard:
        seg.audio_packets = heard  # a torn segment's: what the MP4 holds of it
    return index, first if first is not None else 0, end


def whole_frames(path: Path) -> Contents:
    """What an unfinished segment holds (see ``probe`` with ``torn_ok``), in whole frames.

    The file is whole TS packets, maybe followed by the header of a packet cut off after
    them: when that packet continued the last frame's PES, the frame is torn and left out.
    """
    contents = probe(path, torn_ok=True)
    pts, pid = [], None
    with av.open(str(path), format="mpegts") as container:
        stream = container.streams.video[0]
        pid, ticks = stream.id, to_ticks(stream.time_base)
        try:
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None:
                    # As probe: on the 33-bit clock, unwrapped from the first frame's.
                    read = ticks(packet.pts)
                    pts.append(unwrap(read, pts[-1]) if pts else read % WRAP)
        except av.error.FFmpegError:
            pass  # as probe: keep what was read before the damage
    pts = pts[: contents.frames]
    if _continues_pes(path, pid):
        pts.pop()
    if not pts:
        raise ValueError(f"{path.name}: holds no complete frame")
    return Contents(len(pts), pts[0], pts[-1], contents.width, contents.height)


def _continues_pes(path: Path, pid: int) -> bool:
    """Whether the file ends with the header of a cut-off packet continuing ``pid``'s PES."""
    size = path.stat().st_size
    if size % 188 < 4:
        return False
    with open(path, "rb") as fh:
        fh.seek(size - size % 188)
        head = fh.read(4)
    sync, unit_start = head[0] == 0x47, head[1] & 0x40
    return sync and not unit_start and ((head[1] & 0x1F) << 8 | head[2]) == pid


def measure(path: Path) -> tuple[int, int]:
    """(frames, duration in 90 kHz ticks) of a written MP4, read back from the file."""
    frames, first, end = 0, None, 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ticks = to_ticks(stream.time_base)
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            frames += 1
            pts = ticks(packet.pts)
            first = pts if first is None else min(first, pts)
            end = max(end, ticks(packet.pts + (packet.duration or 0)))
    return frames, end - (first or 0)
