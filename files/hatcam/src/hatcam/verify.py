"""``hatcam verify``: check an MP4 that fetch wrote against the device's signed records.

A third party needs only the MP4, its report (``<mp4>.proof.json``, written by fetch
beside it) and the device's public key: none of our infrastructure. Nothing in the report
is trusted unless the device signed it: the report's own verdicts, its key lines and its
``mp4`` sample ranges are claims, each checked here.

- Each embedded record must carry a valid signature by one of the given keys, of the
  device it names (``proof.KeyRing``). Others are ignored (and named).
- The MP4's video samples must be exactly the frames of those records, in order: the
  samples each record claims (``first_sample``, ``samples``) hash to its ``frames_sha256``
  (``proof.FrameDigest`` over the length-prefixed NAL units) and number its ``frames``,
  span its PTS, and together they cover every sample, each once, with no other stream
  but one AAC audio stream. Its samples likewise: those each record claims
  (``first_audio_sample``, ``audio_samples``) number its ``audio_packets`` and hash to
  its ``audio_sha256`` (``proof.AudioDigest``), and together cover every audio sample; a
  record without them (no sound) claims none.
- Consecutive records are linked by the chain (``prev`` = ``record_hash`` of the one
  before): a break is a missing time range, reported, not a refusal; the footage that is
  there is still what the camera recorded.

Exit status: 0 when every frame of the MP4 is accounted for by a valid record, 1 when it
is refused (the first bad segment is named), 2 when the files cannot be read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import proof
from .segment import to_ticks

EXIT_OK, EXIT_REFUSED, EXIT_UNREADABLE = 0, 1, 2
REPORT_SUFFIX = ".proof.json"
_FIELDS = {
    "kind": str,
    "device": str,
    "boot": str,
    "seq": int,
    "start": str,
    "end": str,
    "frames": int,
    "first_pts": int,
    "last_pts": int,
    "frames_sha256": str,
    "prev": str,
}
PTS_SLOP = 1  # ticks: an MP4 timescale other than 90 kHz may round by one


class Unreadable(Exception):
    """The MP4, the report or a key cannot be read (exit 2, nothing judged)."""


@dataclass
class Item:
    """One report entry: its signed record and the MP4 samples it claims."""

    index: int  # position in the report
    record: dict
    first: int | None = None
    count: int | None = None
    problem: str | None = None  # why the record is not trusted
    name: str = ""  # the report's name for it: not signed, only to say which entry

    @property
    def label(self) -> str:
        r = self.record
        kind = "checkpoint of " if r.get("kind") == "checkpoint" else ""
        if not r:
            return f"segment {self.name.rsplit('/', 1)[-1] or '?'} (no record)"
        return f"{kind}segment {r.get('name') or '?'} (seq {r.get('seq')}, boot {r.get('boot')})"

    @property
    def mapped(self) -> bool:
        return self.first is not None

    @property
    def samples(self) -> str:
        return f"MP4 samples {self.first}-{self.first + self.count - 1}"

    audio_first: int | None = None
    audio_count: int = 0


@dataclass
class Mp4:
    samples: list[bytes]
    pts: list[int]  # 90 kHz ticks
    nal_size: int
    other_streams: list[str]
    audio: list[bytes] = field(default_factory=list)  # the AAC stream's samples (raw units)


@dataclass
class Outcome:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    frames: int = 0
    audio: int = 0  # AAC samples (packets) in the MP4

    @property
    def ok(self) -> bool:
        return not self.problems


def read_mp4(path: Path) -> Mp4:
    import av

    try:
        with av.open(str(path)) as container:
            videos = container.streams.video
            sound = [s for s in container.streams.audio if s.codec_context.name == "aac"][:1]
            others = [
                f"{s.type} stream {s.index}"
                for s in container.streams
                if s.type != "video" and s not in sound
            ]
            others += [f"video stream {s.index}" for s in videos[1:]]
            if not videos:
                raise Unreadable(f"{path}: no video stream")
            stream = videos[0]
            if stream.codec_context.name != "h264":
                raise Unreadable(f"{path}: video is {stream.codec_context.name}, not H.264")
            extradata = bytes(stream.codec_context.extradata or b"")
            if len(extradata) < 5 or extradata[0] != 1:
                raise Unreadable(f"{path}: H.264 without an avcC record (not an MP4 from fetch)")
            ticks = to_ticks(stream.time_base)
            samples, pts = [], []
            audio = []
            for packet in container.demux(stream, *sound):
                if packet.size == 0:
                    continue
                if packet.stream.type == "audio":
                    audio.append(bytes(packet))
                    continue
                samples.append(bytes(packet))
                pts.append(ticks(packet.pts) if packet.pts is not None else None)
    except av.error.FFmpegError as exc:
        raise Unreadable(f"{path}: not readable as MP4 ({exc})") from None
    return Mp4(samples, pts, (extradata[4] & 3) + 1, others, audio)


def read_report(path: Path) -> list[Item]:
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise Unreadable(f"{path}: not readable as JSON ({exc})") from None
    entries = report.get("segments") if isinstance(report, dict) else None
    if not isinstance(entries, list):
        raise Unreadable(f"{path}: not a hatcam proof report (no list of segments)")
    items = []
    for index, entry in enumerate(entries):
        record = entry.get("record") if isinstance(entry, dict) else None
        item = Item(index, record if isinstance(record, dict) else {})
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            item.name = entry["name"]
        mp4 = entry.get("mp4") if isinstance(entry, dict) else None
        if isinstance(mp4, dict):
            first, count = mp4.get("first_sample"), mp4.get("samples")
            if _is_int(first) and _is_int(count) and first >= 0 and count > 0:
                item.first, item.count = first, count
            first, count = mp4.get("first_audio_sample"), mp4.get("audio_samples")
            if _is_int(first) and _is_int(count) and first >= 0 and count > 0:
                item.audio_first, item.audio_count = first, count
        items.append(item)
    return items


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _problem(ring: proof.KeyRing, record: dict) -> str | None:
    if not record:
        return "no signed record"
    wrong = [
        name
        for name, kind in _FIELDS.items()
        if not isinstance(record.get(name), kind)
        or (kind is int and isinstance(record[name], bool))
    ]
    problem = ring.problem(record)
    if problem is None and wrong:
        problem = f"signed, but not a record hatcam verifies (fields {', '.join(wrong)})"
    audio = [record.get(k) for k in ("audio_packets", "audio_sha256")]
    well_formed = _is_int(audio[0]) and audio[0] > 0 and isinstance(audio[1], str)
    if problem is None and audio != [None, None] and not well_formed:
        problem = "signed, but not a record hatcam verifies (fields audio_packets, audio_sha256)"
    if problem is None and record["kind"] not in ("segment", "checkpoint"):
        problem = f"signed, but a record of kind {record['kind']!r}"
    return problem


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _span(first: dict, last: dict) -> str:
    start, end = _time(first["start"]), _time(last["end"])
    day = "" if start.date() == end.date() else f"{end:%Y-%m-%d}T"
    return f"{start:%Y-%m-%dT%H:%M:%S.%f}"[:-3] + f"Z .. {day}{end:%H:%M:%S.%f}"[:-3] + "Z"


def _missing(after: dict, before: dict, why: str) -> str:
    start, end = _time(after["end"]), _time(before["start"])
    if end < start:  # the device's clock was set back (a Pi has no real-time clock)
        return f"missing   after {after['end']} and before {before['start']}: {why}"
    seconds = (end - start).total_seconds()
    span = _span({"start": after["end"]}, {"end": before["start"]})
    return f"missing   {span} ({seconds:.1f} s): {why}"


def check_frames(item: Item, mp4: Mp4) -> str | None:
    """None when the item's samples are exactly its record's frames; else what differs."""
    record = item.record
    if item.count != record["frames"]:
        return f"claims {item.count} MP4 samples, but its record has {record['frames']} frames"
    digest = proof.FrameDigest()
    for sample in mp4.samples[item.first : item.first + item.count]:
        digest.add_length_prefixed(sample, mp4.nal_size)
    if digest.hexdigest() != record["frames_sha256"]:
        return "its frames in the MP4 differ from what the camera signed (frames_sha256)"
    pts = [p for p in mp4.pts[item.first : item.first + item.count] if p is not None]
    if len(pts) != item.count:
        return "frames in the MP4 without a timestamp"
    span = max(pts) - min(pts)
    if abs(span - (record["last_pts"] - record["first_pts"])) > PTS_SLOP:
        return (
            f"its frames span {span} ticks in the MP4, "
            f"{record['last_pts'] - record['first_pts']} when recorded (retimed)"
        )
    return None


def check_audio(item: Item, mp4: Mp4) -> str | None:
    """None when the item's audio samples are exactly its record's; else what differs."""
    want = item.record.get("audio_packets") or 0
    if item.audio_count != want:
        return f"claims {item.audio_count} MP4 audio samples, its record has {want}"
    if not want:
        return None
    units = mp4.audio[item.audio_first : item.audio_first + item.audio_count]
    if len(units) != want:
        return f"claims {want} audio samples from {item.audio_first}, the MP4 has {len(mp4.audio)}"
    digest = proof.AudioDigest()
    for unit in units:
        digest.add(unit)
    if digest.hexdigest() != item.record["audio_sha256"]:
        return "its audio in the MP4 differs from what the camera signed (audio_sha256)"
    return None


def _audio_coverage(valid: list[Item], mp4: Mp4, out: Outcome) -> None:
    """Every audio sample of the MP4 claimed by exactly one valid record, and its own."""
    at = 0
    heard = sorted((i for i in valid if i.audio_count), key=lambda i: i.audio_first)
    for item in [*heard, None]:
        first = len(mp4.audio) if item is None else item.audio_first
        if first > at:
            out.problems.append(
                f"MP4 audio samples {at}-{min(first, len(mp4.audio)) - 1} are covered by no "
                "validly signed record"
            )
        if item is None:
            break
        if item.audio_first < at:
            out.problems.append(f"{item.label}: claims audio samples already claimed")
        at = max(at, item.audio_first + item.audio_count)
    for item in valid:
        wrong = check_audio(item, mp4) if item.mapped else None
        if wrong:
            out.problems.append(f"{item.label}, {item.samples}: {wrong}")


def verify(mp4_path: Path, report_path: Path, keys: list[Path]) -> Outcome:
    try:
        ring = proof.KeyRing.load(*keys)
    except (OSError, ValueError) as exc:
        raise Unreadable(f"--key: {exc}") from None
    if not ring.keys:
        raise Unreadable(f"--key: no public key in {', '.join(map(str, keys))}")
    mp4 = read_mp4(Path(mp4_path))
    items = read_report(Path(report_path))
    out = Outcome(frames=len(mp4.samples), audio=len(mp4.audio))
    for item in items:
        item.problem = _problem(ring, item.record)
        if item.problem:
            out.lines.append(f"ignored   report entry {item.index} ({item.label}): {item.problem}")
    valid = [i for i in items if not i.problem]
    for stream in mp4.other_streams:
        out.problems.append(f"the MP4 holds a {stream}: the camera records one video stream")
    seen: dict[str, Item] = {}
    for item in valid:
        digest = proof.record_hash(item.record)
        if digest in seen:
            out.problems.append(f"report entry {item.index} ({item.label}): the same record twice")
        seen[digest] = item

    # The samples: each once, in the records' order, each record's own.
    mapped = sorted((i for i in valid if i.mapped), key=lambda i: i.first)
    devices = sorted({i.record["device"] for i in mapped})
    if len(devices) > 1:
        out.problems.append(f"frames of several devices in one MP4: {', '.join(devices)}")
    claims = sorted((i for i in items if i.problem and i.mapped), key=lambda i: i.first)
    at = 0
    for item in [*mapped, None]:
        first = len(mp4.samples) if item is None else item.first
        if first > at:
            who = [c for c in claims if c.first <= at < c.first + c.count]
            said = f" (the report gives them to {who[0].label}: {who[0].problem})" if who else ""
            out.problems.append(
                f"MP4 samples {at}-{min(first, len(mp4.samples)) - 1} are covered by no "
                f"validly signed record{said}"
            )
        if item is None:
            break
        if item.first < at:
            out.problems.append(f"{item.label}: claims {item.samples}, already claimed")
        elif item.first + item.count > len(mp4.samples):
            out.problems.append(
                f"{item.label}: claims {item.samples}, the MP4 has {len(mp4.samples)}"
            )
        else:
            wrong = check_frames(item, mp4)
            if wrong:
                out.problems.append(f"{item.label}, {item.samples}: {wrong}")
        at = max(at, item.first + item.count)
    _audio_coverage([i for i in valid if i.mapped], mp4, out)

    # The chain, in the MP4's order: verified ranges and what is missing between them.
    by_hash = {proof.record_hash(i.record): i for i in valid}
    after = {i.record["prev"]: i for i in valid}  # the record that follows each
    run: list[Item] = []

    def close_run():
        if run:
            frames, last = sum(i.count for i in run), run[-1].first + run[-1].count - 1
            a, b = run[0].record["seq"], run[-1].record["seq"]
            seqs = f"seq {a}" if a == b else f"seq {a}-{b}"
            out.lines.append(
                f"verified  {_span(run[0].record, run[-1].record)}  {len(run)} segment(s), "
                f"{frames} frames (MP4 samples {run[0].first}-{last}), "
                f"{seqs}"
            )
            run.clear()

    for prev, item in zip([None, *mapped], mapped, strict=False):
        linked = prev is not None and item.record["prev"] == proof.record_hash(prev.record)
        if linked and item.first != prev.first + prev.count:
            close_run()  # samples between them that no record covers (refused above)
        if prev is not None and not linked:
            close_run()
            left_out, cursor = [], after.get(proof.record_hash(prev.record))
            while cursor is not None and not cursor.mapped and len(left_out) < len(valid):
                left_out.append(cursor)
                cursor = after.get(proof.record_hash(cursor.record))
            if cursor is item and prev.record["kind"] == "segment":
                for gone in left_out:
                    out.lines.append(
                        f"missing   {_span(gone.record, gone.record)}: {gone.label}, signed "
                        "by the device but not in this MP4"
                    )
            else:
                earlier = by_hash.get(item.record["prev"])
                if earlier is not None and earlier.mapped and earlier.first > item.first:
                    out.problems.append(f"{item.label}: placed before the record it follows")
                why = (
                    "the segment was cut short (verified up to its last checkpoint)"
                    if prev.record["kind"] == "checkpoint"
                    else "a break in the device's chain of records"
                )
                out.lines.append(_missing(prev.record, item.record, why))
        same_boot = prev is not None and all(
            prev.record[k] == item.record[k] for k in ("device", "boot")
        )
        if same_boot and item.record["seq"] <= prev.record["seq"]:
            out.problems.append(f"{item.label}: placed after seq {prev.record['seq']}")
        run.append(item)
    close_run()
    if not mapped and mp4.samples:
        out.problems.append("no validly signed record accounts for any frame of the MP4")
    return out


def run(mp4: str, report: str | None, keys: list[str], echo=print) -> int:
    """The command: prints one line per verified and per missing range, then the verdict."""
    mp4_path = Path(mp4)
    report_path = Path(report) if report else mp4_path.with_name(mp4_path.name + REPORT_SUFFIX)
    try:
        outcome = verify(mp4_path, report_path, [Path(k) for k in keys])
    except (Unreadable, OSError) as exc:
        echo(f"hatcam verify: {exc}")
        return EXIT_UNREADABLE
    for line in outcome.lines:
        echo(line)
    for problem in outcome.problems:
        echo(f"bad       {problem}")
    if outcome.ok:
        sound = f" and its {outcome.audio} audio samples" if outcome.audio else ""
        echo(
            f"OK: all {outcome.frames} frames{sound} of {mp4_path.name} are what the device "
            "recorded, in order, under valid signatures"
        )
        return EXIT_OK
    echo(f"REFUSED: {outcome.problems[0]}")
    return EXIT_REFUSED
