"""The camera's side of the proof (hatcam.proof): it signs what it records, in one chain.

Each segment gets a signed record when it closes (or when a crash's leftover is
recovered), and the open segment carries a signed checkpoint each time it is synced to
the card. The records chain by ``prev`` across segments, restarts and boots: the chain's
end lives in ``state/chain.json`` on the card, written durably *before* the segment is
committed to ready/. A crash in between leaves the segment in recording/ with the chain
already naming it; its recovered record then takes that record's ``prev`` (the record
that was never published is replaced, not followed), so the chain never forks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .. import proof
from ..files import write_atomic
from ..segment import (
    TIME_BASE,
    WRAP,
    Contents,
    SegmentName,
    SegmentRecord,
    adts_whole,
    iso,
    to_ticks,
    unwrap,
)

log = logging.getLogger("hatcam.signing")

TS_PACKET = 188
CHECKPOINT_OPTIONS = {"flush_packets": "1", "max_interleave_delta": "1"}


class Signer:
    """The device key and the end of this device's chain (``state/chain.json``)."""

    def __init__(self, key: proof.DeviceKey, device: str, state_dir: Path):
        self.key = key
        self.device = device
        self.path = Path(state_dir) / "chain.json"
        self.last = {"hash": "", "name": "", "prev": ""}
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("%s is unreadable (%s): the record chain starts again", self.path, exc)
            return
        if data.get("device") != device:
            log.warning(
                "the record chain on this card is %s's: %s starts its own",
                data.get("device"),
                device,
            )
            return
        self.last = {k: str(data.get(k) or "") for k in ("hash", "name", "prev")}

    def prev_for(self, name: str) -> str:
        """The ``prev`` a record of segment ``name`` carries: the chain's last record, or
        when that record is this segment's own (signed, then a crash before the commit),
        the one before it."""
        return self.last["prev"] if name == self.last["name"] else self.last["hash"]

    def segment(self, fields: dict) -> dict:
        """Sign a segment record and make it the chain's end, durably, before the
        caller commits the segment (see the module's docstring)."""
        record = self.key.sign({"kind": "segment", "device": self.device, **fields})
        last = {"hash": proof.record_hash(record), "name": fields["name"], "prev": fields["prev"]}
        write_atomic(self.path, json.dumps({"device": self.device, **last}).encode())
        self.last = last
        return record

    def checkpoint(self, fields: dict) -> dict:
        return self.key.sign({"kind": "checkpoint", "device": self.device, **fields})


def record_fields(
    name: SegmentName,
    contents: Contents,
    fps: float,
    *,
    size: int,
    sha256: str,
    frames_sha256: str,
    prev: str,
    recovered: bool = False,
    audio_sha256: str | None = None,
) -> dict:
    """What a record (segment or checkpoint) says of the footage it covers; start and end
    as the sidecar has them (``SegmentRecord.made``). With audio (``audio_sha256``), also
    its packet count and digest (``proof.AudioDigest``)."""
    made = SegmentRecord.made("", name, contents, fps, False)
    audio = {}
    if audio_sha256 is not None:
        audio = {"audio_packets": contents.audio_packets, "audio_sha256": audio_sha256}
    return {
        **audio,
        "boot": name.boot,
        "seq": name.seq,
        "name": name.filename,
        "start": iso(made.start),
        "end": iso(made.end),
        "frames": contents.frames,
        "first_pts": contents.first_pts,
        "last_pts": contents.last_pts,
        "size": size,
        "sha256": sha256,
        "frames_sha256": frames_sha256,
        "prev": prev,
        "recovered": recovered,
    }


@dataclass(frozen=True)
class Salvaged:
    """What a segment a crash cut short holds, in whole TS packets and complete frames."""

    contents: Contents
    size: int
    sha256: str
    frames_sha256: str
    audio_sha256: str | None = None  # when the segment has an audio stream


class _Prefix:
    """A file read only up to ``size`` bytes (what the record covers)."""

    def __init__(self, fh, size: int):
        self.fh, self.size = fh, size

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.fh.tell()
        if left <= 0:
            return b""
        return self.fh.read(left if n is None or n < 0 else min(n, left))

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            return self.fh.seek(self.size + offset)
        return self.fh.seek(offset, whence)

    def tell(self) -> int:
        return self.fh.tell()


def salvage_scan(path: Path, near: int | None = None) -> Salvaged | None:
    """The whole TS packets of a cut segment and its complete frames; None if it holds
    none. A video frame is complete when something was written after it (the muxer writes
    a frame's packets in one go): the last one of a cut file is complete only if a
    checkpoint follows it, since the file's end cannot tell a finished frame from a torn
    one. ``near``: a PTS of the device's own count (past the 33-bit wrap)."""
    import av

    size = path.stat().st_size // TS_PACKET * TS_PACKET
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        left = size
        while left:
            chunk = fh.read(min(left, 1 << 20))
            if not chunk:
                return None
            sha.update(chunk)
            left -= len(chunk)
    frames: list[tuple[int, int, bytes]] = []  # (offset, pts, data)
    audio: list[tuple[int, int, bytes]] | None = None  # the same, for AAC packets
    # Where the last data packet (a checkpoint) starts: at the file's end the demuxer
    # hands out what it holds in no particular order, so offsets tell what came after.
    last_data = -1
    torn = False
    with open(path, "rb") as fh:
        try:
            with av.open(_Prefix(fh, size), "r", format="mpegts") as container:
                if not container.streams.video:
                    return None
                streams = [container.streams.video[0], *container.streams.data[:1]]
                if container.streams.audio:
                    streams.append(container.streams.audio[0])
                    audio = []
                ticks = to_ticks(streams[0].time_base or TIME_BASE)
                try:
                    for packet in container.demux(streams):
                        if not packet.size:
                            continue
                        if packet.stream.type == "video" and packet.pts is not None:
                            frames.append((packet.pos, ticks(packet.pts), bytes(packet)))
                        elif packet.stream.type == "data" and packet.pos is not None:
                            last_data = max(last_data, packet.pos)
                        elif packet.stream.type == "audio" and None not in (packet.pts, packet.pos):
                            audio.append((packet.pos, ticks(packet.pts), bytes(packet)))
                except av.error.FFmpegError:
                    torn = True  # the last frame read is suspect
        except av.error.FFmpegError:
            return None
    frames.sort(key=lambda frame: frame[0])
    # A packet is whole when another starts after it (the muxer writes each in one go).
    last_start = max([last_data, *(a[0] for a in audio or ())])
    if frames and (torn or last_start < frames[-1][0]):
        frames.pop()
    if not frames:
        return None
    if audio is not None:  # an audio PES gives its length: a torn one is told apart
        audio = [unit for unit in sorted(audio, key=lambda u: u[0]) if adts_whole(unit[2])]
    digest = proof.FrameDigest()
    first = last = None
    for _, pts, data in frames:
        digest.add_annexb(data)
        if last is None:
            last = pts % WRAP if near is None else unwrap(pts, near)
            first = last
        else:
            last = unwrap(pts, last)
    audio_sha256, counts = None, ()
    if audio is not None:
        sound = proof.AudioDigest()
        for _, _, data in audio:
            sound.add_adts(data)
        pts = [unwrap(unit[1], first) for unit in audio]
        counts = (len(audio), min(pts, default=None), max(pts, default=None))
        audio_sha256 = sound.hexdigest() if audio else None
    contents = Contents(len(frames), first, last, None, None, False, *counts)
    return Salvaged(contents, size, sha.hexdigest(), digest.hexdigest(), audio_sha256)
