"""HLS playlists of segments already in the cloud: they are MPEG-TS with a capture clock
that runs on across one camera daemon's segments, which is what an HLS player plays.

A recorded moment is a VOD playlist of its continuous run, started at the moment
(``EXT-X-START``). Following live is a sliding playlist whose edge is the still-growing
append blob: its bytes are exposed as ``EXT-X-BYTERANGE`` parts, cut where the blob
ended at each reload (the uploader appends what the camera synced: whole TS packets,
frame boundaries), so a frame is on screen a few seconds after capture instead of a
segment length later. A part, once listed, keeps its number and bytes (an HLS client
numbers them; the one exception: bytes a blob gains after the next blob was listed join
its last part, as they cannot be numbered after it); ``LiveParts`` remembers the cuts of
the blobs in the window for the server's lifetime.
"""

from __future__ import annotations

import math
import threading
from datetime import datetime, timedelta
from urllib.parse import quote

from ..segment import iso
from .timeline import Run, Seg

TS_PACKET = 188
LIVE_WINDOW_SECONDS = 30.0  # what a live playlist spans behind its edge


def media_uri(blob: str) -> str:
    return "/media/" + quote(blob, safe="/")


def _head(target: float, kind: str) -> list[str]:
    return [
        "#EXTM3U",
        "#EXT-X-VERSION:6",
        f"#EXT-X-TARGETDURATION:{max(1, math.ceil(target))}",
        *([f"#EXT-X-PLAYLIST-TYPE:{kind}"] if kind else []),
    ]


def _pdt(moment: datetime) -> str:
    return f"#EXT-X-PROGRAM-DATE-TIME:{iso(moment)}"


def vod(run: Run, at: datetime) -> str:
    """The run as a VOD playlist, starting at ``at``."""
    offset = 0.0
    for seg in run.segments:
        if seg.start <= at < seg.end:
            offset += (at - seg.start).total_seconds()
            break
        offset += seg.seconds
    lines = _head(max(s.seconds for s in run.segments), "VOD")
    lines += ["#EXT-X-MEDIA-SEQUENCE:0", f"#EXT-X-START:TIME-OFFSET={offset:.3f},PRECISE=YES"]
    for seg in run.segments:
        lines += [
            _pdt(seg.start),
            f"#EXTINF:{seg.seconds:.3f},",
            f"#EXT-X-BYTERANGE:{_whole(seg.size) if seg.live else seg.size}@0",
            media_uri(seg.blob),
        ]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def _whole(size: int) -> int:
    return size - size % TS_PACKET


class _Blob:
    """One blob's parts: ``cuts`` are their edges (parts are [cuts[i], cuts[i+1])).

    Cuts are only where the blob ended at a reload: the uploader's appends end where the
    camera synced, after a whole frame, so no frame is split between two parts (a
    player's TS demuxer drops a frame cut in two). A blob first seen finished is one
    whole part: where its frames begin is not known without reading it."""

    def __init__(self):
        self.cuts = [0]
        self.frozen = False  # a later blob is numbered after it: no more parts
        self.first_sn: int | None = None

    @property
    def parts(self) -> int:
        return len(self.cuts) - 1

    def grow(self, seg: Seg) -> None:
        end = _whole(seg.size) if seg.live else seg.size
        if end <= self.cuts[-1]:
            return
        if self.frozen and self.parts:
            self.cuts[-1] = end  # the tail of a finished blob joins its last part
        else:
            self.cuts.append(end)


class LiveParts:
    """Every device's live parts and their sequence numbers, for the server's lifetime."""

    def __init__(self, window: float = LIVE_WINDOW_SECONDS):
        self.window = window
        self.blobs: dict[str, _Blob] = {}
        self.next_sn: dict[str, int] = {}  # per device: the first number not yet given
        self.last_boot: dict[str, str | None] = {}
        self.discontinuity: dict[str, int] = {}
        self.lock = threading.Lock()

    def playlist(self, device: str, run: Run) -> str:
        with self.lock:
            return self._playlist(device, run)

    def _playlist(self, device: str, run: Run) -> str:
        edge = run.segments[-1].end
        shown = [s for s in run.segments if s.end >= edge - timedelta(seconds=self.window)]
        boot = run.segments[-1].boot
        if device in self.last_boot and self.last_boot[device] != boot:
            self.discontinuity[device] = self.discontinuity.get(device, 0) + 1
        self.last_boot[device] = boot
        prev: _Blob | None = None
        entries = []
        for seg in shown:
            blob = self.blobs.get(seg.blob)
            if blob is None:
                blob = self.blobs[seg.blob] = _Blob()
            blob.grow(seg)
            if blob.first_sn is None:
                if prev is not None and prev.first_sn is not None:
                    prev.frozen = True
                    blob.first_sn = prev.first_sn + prev.parts
                else:
                    blob.first_sn = self.next_sn.get(device, 0)
            self.next_sn[device] = max(self.next_sn.get(device, 0), blob.first_sn + blob.parts)
            entries.append((seg, blob))
            prev = blob
        listed = {seg.blob for seg, _ in entries}
        for name in [n for n in self.blobs if n.startswith(f"{device}/") and n not in listed]:
            del self.blobs[name]  # slid out of the window: never listed again
        lines, target, first = [], 1.0, None
        for seg, blob in entries:
            per_byte = seg.seconds / max(1, seg.size)
            for i in range(blob.parts):
                if first is None:
                    first = blob.first_sn + i
                lo, hi = blob.cuts[i], blob.cuts[i + 1]
                seconds = max(0.001, (hi - lo) * per_byte)
                target = max(target, seconds)
                lines += [
                    _pdt(seg.start + timedelta(seconds=lo * per_byte)),
                    f"#EXTINF:{seconds:.3f},",
                    f"#EXT-X-BYTERANGE:{hi - lo}@{lo}",
                    media_uri(seg.blob),
                ]
        head = _head(target, "")
        head += [
            f"#EXT-X-MEDIA-SEQUENCE:{first or 0}",
            f"#EXT-X-DISCONTINUITY-SEQUENCE:{self.discontinuity.get(device, 0)}",
        ]
        closed = not run.segments[-1].live and not entries
        return "\n".join(head + lines + (["#EXT-X-ENDLIST"] if closed else [])) + "\n"
