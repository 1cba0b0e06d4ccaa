"""The segment contract between the device and the laptop, in one place.

A segment's name: UTC, sortable, unique even when the clock jumps back. A Pi
has no real-time clock, so the wall clock can start wrong and be corrected
later. The name therefore carries, besides the start time, the kernel's boot id
and a sequence number persisted in the spool: two segments never share a name.

    local file:  20261121T235109.123Z-1a2b3c4d-000042.ts
    blob:        <device>/2026-11-21/20261121T235109.123Z-1a2b3c4d-000042.ts

A segment's record (``SegmentRecord``): what it holds, written by the camera as
the sidecar JSON and carried by the uploader as blob metadata, so fetch can plan
a stitch without opening the file. Its PTS are on the MPEG-TS 90 kHz clock.

That clock is 33 bits wide in the file: it wraps after 2**33 ticks, about 26.5
hours of continuous recording. The device's record keeps counting past the wrap
(its PTS only grow within a run); a file's own timestamps are read back modulo
2**33 and unwrapped against a neighbour (``unwrap``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from pathlib import Path

log = logging.getLogger("hatcam.segment")

CLOCK = 90_000  # MPEG-TS timestamps: ticks per second
TIME_BASE = Fraction(1, CLOCK)
DEFAULT_FRAME_TICKS = CLOCK // 30  # a lone frame's length when nothing says otherwise
WRAP = 1 << 33  # MPEG-TS timestamps are 33 bits: they wrap after about 26.5 hours

SEGMENT_RE = re.compile(
    r"^(?P<stamp>\d{8}T\d{6}\.\d{3}Z)-(?P<boot>[0-9a-f]{8})-(?P<seq>\d{6,})\.ts$"
)
STAMP_FORMAT = "%Y%m%dT%H%M%S"


def boot_id() -> str:
    """Eight hex digits that differ on every boot (the kernel's random boot id)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8]
    except OSError:  # not Linux: a random id per process is unique enough
        import secrets

        return secrets.token_hex(4)


def format_stamp(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return f"{moment:{STAMP_FORMAT}}.{moment.microsecond // 1000:03d}Z"


def parse_stamp(stamp: str) -> datetime:
    # fromisoformat reads the basic form (Python 3.11+), 50x faster than strptime: a day
    # index or listing parses 8,640 of these.
    return datetime.fromisoformat(stamp.removesuffix("Z")).replace(tzinfo=UTC)


def iso(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds, the form used in metadata and state files."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class SegmentName:
    start: datetime
    boot: str
    seq: int

    @property
    def filename(self) -> str:
        return f"{format_stamp(self.start)}-{self.boot}-{self.seq:06d}.ts"

    def blob_name(self, device: str) -> str:
        return f"{device}/{self.start:%Y-%m-%d}/{self.filename}"

    @classmethod
    def parse(cls, filename: str) -> SegmentName | None:
        match = SEGMENT_RE.match(Path(filename).name)
        if not match:
            return None
        return cls(parse_stamp(match["stamp"]), match["boot"], int(match["seq"]))


# --- time on the 90 kHz clock ---------------------------------------------------------


def frame_ticks(fps: float) -> float:
    """One frame at ``fps``, in 90 kHz ticks."""
    return CLOCK / fps


def duration(first_pts: int, last_pts: int, frame: float) -> float:
    """Seconds from the first frame's start to the last frame's end (``frame`` in ticks)."""
    return (last_pts - first_pts + frame) / CLOCK


def unwrap(pts: int, near: int) -> int:
    """The timestamp nearest ``near`` that reads as ``pts`` on the 33-bit clock.

    FFmpeg's demuxer hands a file's timestamps back with its own guess at the wrap
    (values near the wrap may come back negative, or past 2**33): only ``pts`` modulo
    2**33 is the file's, and the neighbour ``near`` says which turn of the clock it is.
    """
    return near + (pts - near + WRAP // 2) % WRAP - WRAP // 2


def to_ticks(time_base: Fraction):
    """A fast int function turning timestamps in ``time_base`` into 90 kHz ticks."""
    if time_base == TIME_BASE:
        return int
    num, den = time_base.numerator * CLOCK, time_base.denominator
    return lambda value: value * num // den


# --- what a file holds ----------------------------------------------------------------


def adts_whole(data: bytes) -> bool:
    """Whether an AAC packet read from an MPEG-TS is whole: its ADTS header gives its
    length, so a packet a crash cut short (the file's last) is told from a whole one."""
    if len(data) < 7 or data[0] != 0xFF or data[1] & 0xF0 != 0xF0:
        return len(data) > 0  # no header: nothing says, take it as it is
    return ((data[3] & 0x03) << 11 | data[4] << 3 | data[5] >> 5) == len(data)


@dataclass(frozen=True)
class Contents:
    """What a segment file holds: frames, first and last PTS (90 kHz), picture size, and
    its audio when it has an audio stream: AAC packets (``SAMPLES_PER_PACKET`` samples
    each) and the first and last packet's PTS, on the video's clock. ``audio_packets``
    None: no audio stream (a segment recorded without a microphone, or before audio)."""

    frames: int
    first_pts: int | None
    last_pts: int | None
    width: int | None = None
    height: int | None = None
    # True when taken from the device's metadata rather than read from the file: such
    # contents are checked against the file while stitching.
    from_metadata: bool = field(default=False, compare=False)
    audio_packets: int | None = None
    audio_first_pts: int | None = None
    audio_last_pts: int | None = None

    @property
    def frame_ticks(self) -> int:
        """One frame: the mean interval; a single frame is taken as 1/30 s."""
        if self.frames > 1:
            ticks = round((self.last_pts - self.first_pts) / (self.frames - 1))
            if ticks:
                return ticks
        return DEFAULT_FRAME_TICKS

    def to_dict(self, *, origin: bool = False) -> dict:
        """JSON form: in the sidecar and the blob metadata (with the record's other fields),
        and in fetch's cache per verified file, there with its ``origin`` (None: unknown)."""
        out = {
            "frames": self.frames,
            "first_pts": self.first_pts,
            "last_pts": self.last_pts,
            "width": self.width,
            "height": self.height,
        }
        if self.audio_packets is not None:
            out.update(
                audio_packets=self.audio_packets,
                audio_first_pts=self.audio_first_pts,
                audio_last_pts=self.audio_last_pts,
            )
        if origin and self.from_metadata:
            out["from_metadata"] = True
        return out

    @classmethod
    def from_dict(cls, data: dict, number=int) -> Contents:
        """The inverse of ``to_dict``; ``number`` reads a count (blob metadata holds text).
        Raises KeyError, ValueError or TypeError when a count is missing or not one."""

        def maybe(key: str):
            return None if data.get(key) is None else number(data[key])

        return cls(
            number(data["frames"]),
            number(data["first_pts"]),
            number(data["last_pts"]),
            maybe("width"),
            maybe("height"),
            data.get("from_metadata") is True,
            maybe("audio_packets"),
            maybe("audio_first_pts"),
            maybe("audio_last_pts"),
        )


def probe(
    path: Path, *, legacy: bool = False, torn_ok: bool = False, near: int | None = None
) -> Contents:
    """Count the frames of a segment file and read its first and last PTS (90 kHz).

    The PTS are unwrapped frame by frame, so ``last_pts - first_pts`` is the span even
    across the 33-bit wrap. The first PTS is the one nearest ``near`` when given (a PTS
    of the device's own count), else the file's own, from 0 to 2**33.
    Legacy raw ``.h264`` has no timestamps (PTS stay None). ``torn_ok``: a file cut
    short (a power loss, a crash) keeps the frames read before the damage instead of
    failing. Raises ValueError when the file holds no readable frame.
    """
    import av  # here, not at the top: the uploader never demuxes and runs on 512 MB

    frames, first, last, width, height = 0, None, None, None, None
    audio = None  # [packets, first, last] when the file has an audio stream
    try:
        with av.open(str(path), format="h264" if legacy else "mpegts") as container:
            if not container.streams.video:
                raise ValueError(f"{path.name}: no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            ticks = to_ticks(stream.time_base)
            streams = [stream, *container.streams.audio[:1]]
            if len(streams) > 1:
                audio = [0, None, None]
            for packet in container.demux(streams):
                if packet.size == 0 or (packet.pts is None and not legacy):
                    continue
                if packet.stream.type == "audio":
                    if adts_whole(bytes(packet)):
                        _count_audio(audio, to_ticks(packet.time_base)(packet.pts), near, first)
                    continue
                frames += 1
                if not legacy:
                    pts = ticks(packet.pts)
                    if last is not None:
                        last = unwrap(pts, last)
                    else:
                        last = pts % WRAP if near is None else unwrap(pts, near)
                    first = last if first is None else first
    except av.error.FFmpegError as exc:
        if not torn_ok:
            raise ValueError(f"{path.name}: not readable as video ({exc})") from None
        log.warning("%s: read stopped early (%s); keeping %d frames", path.name, exc, frames)
    if frames == 0:
        raise ValueError(f"{path.name}: holds no video frame")
    keys = ("audio_packets", "audio_first_pts", "audio_last_pts")
    audio = dict(zip(keys, audio or (), strict=False))
    return Contents(frames, first, last, width, height, **audio)


def _count_audio(audio: list, pts: int, near: int | None, first: int | None) -> None:
    """One audio packet into ``[packets, first, last]``, unwrapped as probe's video is."""
    last = audio[2]
    if last is not None:
        pts = unwrap(pts, last)
    elif near is not None or first is not None:
        pts = unwrap(pts, near if near is not None else first)
    else:
        pts %= WRAP
    audio[0] += 1
    audio[1] = pts if audio[1] is None else min(audio[1], pts)
    audio[2] = pts if last is None else max(last, pts)


# --- the record: sidecar JSON and blob metadata ---------------------------------------

# Blob metadata values are strings: booleans go as "true"/"false" (as Azure shows them).
_TRUE, _FALSE = "true", "false"


def _text(value) -> str:
    if isinstance(value, bool):
        return _TRUE if value else _FALSE
    if isinstance(value, dict):  # the signed record: compact JSON (ASCII, as metadata must be)
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


@dataclass(frozen=True)
class SegmentRecord:
    """What the camera recorded about one segment."""

    device: str
    start: datetime  # UTC, the segment's name
    end: datetime
    contents: Contents
    clock_synced: bool  # the wall clock was NTP-synchronised when the segment opened
    md5: str | None = None  # of the bytes as recorded; unknown for a recovered segment
    recovered: bool = False  # queued after a crash or a failed write, not closed properly
    damaged: bool = False  # changed on the card since it was recorded (found at upload)
    # The device's signed record of this segment (hatcam.proof, kind "segment"); None for
    # footage from before the device had a key, and for legacy blobs.
    proof: dict | None = None

    @classmethod
    def made(
        cls,
        device: str,
        name: SegmentName,
        contents: Contents,
        fps: float,
        clock_synced: bool,
        md5: str | None = None,
        recovered: bool = False,
        proof: dict | None = None,
    ) -> SegmentRecord:
        span = duration(contents.first_pts, contents.last_pts, frame_ticks(fps))
        return cls(
            device,
            name.start,
            name.start + timedelta(seconds=span),
            contents,
            clock_synced,
            md5,
            recovered,
            proof=proof,
        )

    @property
    def duration(self) -> float:
        return (self.end - self.start).total_seconds()

    def _fields(self) -> dict:
        """Every field in the record's one flat order; None means unknown (left out)."""
        return {
            "device": self.device,
            "start": iso(self.start),
            "end": iso(self.end),
            **self.contents.to_dict(),
            "clock_synced": self.clock_synced,
            "md5": self.md5,
            "recovered": self.recovered or None,
            "damaged": self.damaged or None,
            "proof": self.proof,
        }

    def to_sidecar(self) -> dict:
        """The ``<name>.json`` beside the segment in the spool."""
        return {k: v for k, v in self._fields().items() if v is not None}

    @classmethod
    def from_sidecar(cls, data: dict) -> SegmentRecord:
        return cls._from(data)

    def to_blob_metadata(self) -> dict[str, str]:
        """What fetch plans a stitch from without opening the file. The MD5 travels as the
        blob's Content-MD5, and whether it was recovered does not matter there."""
        fields = self._fields()
        del fields["md5"], fields["recovered"]
        return {k: _text(v) for k, v in fields.items() if v is not None}

    @classmethod
    def from_blob_metadata(cls, meta: dict[str, str]) -> SegmentRecord | None:
        """The record a blob carries; None when it is incomplete or not sane (then the
        file itself must be inspected)."""
        try:
            record = cls._from(meta, int)
        except (KeyError, ValueError, TypeError):
            return None
        c = record.contents
        if c.frames < 1 or c.last_pts < c.first_pts or c.width is None or c.height is None:
            return None
        return replace(record, contents=replace(c, from_metadata=True))

    @classmethod
    def _from(cls, data: dict, number=int) -> SegmentRecord:
        def flag(key: str) -> bool:
            value = data.get(key, False)
            return value if isinstance(value, bool) else value == _TRUE

        return cls(
            data["device"],
            parse_iso(data["start"]),
            parse_iso(data["end"]),
            Contents.from_dict(data, number),
            flag("clock_synced"),
            data.get("md5"),
            flag("recovered"),
            flag("damaged"),
            proof_of(data),
        )

    def marked_damaged(self) -> SegmentRecord:
        return replace(self, damaged=True)


def proof_of(fields: dict | None) -> dict | None:
    """The signed record a sidecar (a dict), a blob's metadata or a closing record (JSON
    text) carries; None when absent or unreadable (fetch then reports the segment as
    unverified)."""
    value = (fields or {}).get("proof")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def parse_iso(text: str) -> datetime:
    """The inverse of ``iso`` (any ISO 8601 time with an offset), as UTC."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def blob_end(meta: dict[str, str]) -> datetime | None:
    """The end time a blob's metadata gives, even when the rest of it is incomplete."""
    try:
        return parse_iso(meta["end"])
    except (KeyError, ValueError):
        return None


# --- live upload: the open blob and its closing record --------------------------------

CLOSING_SUFFIX = ".end"  # the closing record of a live (append) blob: "<blob>.end"
LIVE_KEY = "live"  # metadata of a live append blob, set when it is created


def closing_record_name(blob: str) -> str:
    """The closing record's blob name for a segment blob."""
    return blob + CLOSING_SUFFIX


def segment_blob_of(closing: str) -> str | None:
    """The segment blob a closing record belongs to; None if ``closing`` is not one."""
    return closing[: -len(CLOSING_SUFFIX)] if closing.endswith(CLOSING_SUFFIX) else None


def open_blob_metadata(
    device: str, start: datetime, clock_synced: bool, width: int | None, height: int | None
) -> dict[str, str]:
    """What a live append blob carries from its creation: what is known at open."""
    meta = {"device": device, "start": iso(start), "clock_synced": _text(clock_synced)}
    if width is not None and height is not None:
        meta.update(width=str(width), height=str(height))
    meta[LIVE_KEY] = _TRUE
    return meta


@dataclass(frozen=True)
class ClosingRecord:
    """A finished live segment: its record, and the length and MD5 of the device's bytes.

    Stored as the metadata of the create-only block blob ``<blob>.end`` (the record's
    blob-metadata form plus ``length`` and ``md5``), its body the same as JSON. Bytes
    past ``length`` were appended by someone else after the device finished.
    """

    record: SegmentRecord
    length: int
    md5: str  # hex MD5 of bytes [0, length)

    def to_metadata(self) -> dict[str, str]:
        return {**self.record.to_blob_metadata(), "length": str(self.length), "md5": self.md5}

    def to_json(self) -> bytes:
        return json.dumps(self.to_metadata(), sort_keys=True).encode()

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> ClosingRecord | None:
        """The inverse of ``to_metadata`` (also reads ``to_json``'s dict); None when it
        is incomplete or not sane."""
        record = SegmentRecord.from_blob_metadata(meta)
        try:
            length, md5 = int(meta["length"]), str(meta["md5"]).lower()
        except (KeyError, ValueError, TypeError):
            return None
        if record is None or length < 0 or not re.fullmatch(r"[0-9a-f]{32}", md5):
            return None
        return cls(record, length, md5)


# --- the day index: a day's finished segments in one blob ------------------------------

# Listing a day of 10 s segments means 17,280 blobs (each with its closing record):
# seconds on any service. So the uploader also appends each finished segment's closing
# record, as one JSON line, to its day's append blob ``<device>/<YYYY-MM-DD>/index.jsonl``
# (the append right it already has for live segments), and a reader gets the day in one
# download. It is a shortcut, not the truth: the blobs are. A line may be missing (a crash
# between the closing record and the line), doubled (a lost reply resent), or, since a
# stolen credential can append too, false or garbage: readers check it against a listing.
DAY_INDEX = "index.jsonl"


def day_index_name(device: str, day: date) -> str:
    return f"{device}/{day:%Y-%m-%d}/{DAY_INDEX}"


def day_index_of(blob: str) -> str:
    """The day index a segment blob's line goes to: the one in its own day folder."""
    return f"{blob.rpartition('/')[0]}/{DAY_INDEX}"


def is_day_index(blob: str) -> bool:
    """Whether a blob name is a day index (it holds no footage)."""
    return blob.endswith("/" + DAY_INDEX)


def index_line(blob: str, closing: ClosingRecord) -> bytes:
    """A finished segment's line in its day index: the closing record and the blob's name."""
    fields = {"blob": blob, **closing.to_metadata()}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def read_day_index(body: bytes, folder: str) -> tuple[dict[str, ClosingRecord], int]:
    """A day index's closing records by segment blob name, and how many lines were not
    readable as one of ``folder``'s segments (``<device>/<YYYY-MM-DD>/``). A blob named
    twice keeps its first line: the device's own, since a thief can only append after it."""
    found: dict[str, ClosingRecord] = {}
    bad = 0
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
            blob = fields.pop("blob")
            closing = ClosingRecord.from_metadata({k: _text(v) for k, v in fields.items()})
        except (ValueError, TypeError, KeyError, AttributeError):
            closing = None
        name = SegmentName.parse(blob) if closing is not None and isinstance(blob, str) else None
        if name is None or not blob.startswith(folder) or "/" in blob[len(folder) :]:
            bad += 1
            continue
        found.setdefault(blob, closing)
    return found, bad
