"""Encoded H.264 frames in, closed MPEG-TS segments out.

``Segmenter.outputframe`` has the shape of picamera2's ``Output.outputframe``,
so the real encoder and the synthetic backend feed it the same way. It splits
only at a keyframe once the segment length is reached, so every frame lands in
exactly one segment. PTS are the capture timestamps, relative to the first
frame of this run, so they continue across segment boundaries, and past the
33-bit wrap (26.5 hours): the records keep counting, the muxer writes them
modulo 2**33 as MPEG-TS must. MPEG-TS needs no index at the end: a segment cut
short by a power loss still plays.

With a microphone (``audio``), each segment carries a second stream: the AAC packets
capture hands to the same seam (``audio=True``), never re-encoded, their PTS on the
same clock and origin as the video's. A segment holds the audio whose PTS lie in its
video range, from its first keyframe to the next segment's; since audio reaches us
later than the picture (capture latency), the split waits, the old file kept open and
the new segment's frames held in memory, until audio at or past the split has come
(at most ``AUDIO_HOLD_US`` of video, and not at all when no audio is flowing).

``outputframe`` runs on the camera's encoder thread, which must never wait for the
card: picamera2 holds a few camera buffers (6 by default) and each one stays taken
until ``outputframe`` returns, so a card that stalls a write for 200 ms would make the
camera lose frames. It only queues the frame; a writer thread does the rest.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import av

from .. import proof
from ..files import fsync_dir, write_atomic
from ..segment import (
    CLOCK,
    TIME_BASE,
    Contents,
    SegmentName,
    SegmentRecord,
    boot_id,
    duration,
    frame_ticks,
    probe,
)
from .audio import SAMPLES_PER_PACKET, AudioFormat
from .signing import CHECKPOINT_OPTIONS, Signer, record_fields, salvage_scan
from .spool import Spool

log = logging.getLogger("hatcam.segmenter")

FLUSH_EVERY = 1.0  # seconds: the most a power cut may take from the open segment
# Seconds of frames the write queue holds before frames are dropped. Cards stall writes
# for 100-200 ms routinely and for about a second at worst during wear levelling, and
# closing a segment and opening the next syncs the card several times: 2 s rides that
# out. It costs what 2 s of video weighs: at 720p30, 4 Mbit/s, 0.95 MB measured (make
# bench), a few MB at most on a Zero's 512 MB.
QUEUE_SECONDS = 2.0
DRAIN_SECONDS = 10.0  # the most close() waits for the writer before leaving it to recover()
# How long a split waits for late audio, in video time: capture latency is 20-150 ms, so
# audio at or past the split has come by then unless the microphone stopped. It costs
# that much video held in memory (0.5 s at 4 Mbit/s: 250 kB).
AUDIO_HOLD_US = 500_000
# Audio whose latest packet is older than this (video time) is not flowing (microphone
# unplugged): a split then does not wait for it.
AUDIO_STALE_US = 1_000_000

_paced = threading.local()


def frames_may_wait() -> None:
    """Called on a producer thread that no sensor paces (a replay, the synthetic
    camera's fast mode): there a full queue makes ``outputframe`` wait for room
    instead of dropping, since waiting loses nothing."""
    _paced.waits = True


AUDIO_HELD = 2  # audio packets a checkpoint leaves out: what the muxer may still hold
_TIME_ERROR = 5  # adjtimex() state when the kernel clock is not NTP-synchronised


def _packet_flags_writable() -> bool:
    """PyAV 10 (Pi OS Bookworm's python3-av) cannot set a packet's keyframe flag. It only
    marks random access points for the muxer; players find keyframes by parsing anyway."""
    try:
        av.Packet(b"").is_keyframe = True
    except AttributeError:
        return False
    return True


_PACKET_FLAGS_WRITABLE = _packet_flags_writable()
# PyAV before 14 (Pi OS Bookworm's python3-av is 10) cannot add a data stream: segments
# are still signed when they close, but carry no checkpoints (install av>=14 for those).
DATA_STREAMS = hasattr(av.container.OutputContainer, "add_data_stream")


def clock_synchronized() -> bool:
    """True when the clock is NTP-synchronised (what timedatectl shows).

    Asks the kernel (adjtimex, read only); where a sandbox refuses that call
    (systemd's ProtectClock=), falls back to the flag file systemd-timesyncd keeps.
    """
    try:
        timex = ctypes.create_string_buffer(512)  # struct timex, modes=0: read only
        state = ctypes.CDLL(None, use_errno=True).adjtimex(timex)
    except (OSError, AttributeError):
        state = -1
    if state != -1:
        return state != _TIME_ERROR
    return Path("/run/systemd/timesync/synchronized").exists()


class _HashingWriter:
    """Hashes the bytes on their way to the card: the MD5 the cloud checks is the one
    of what was recorded, so a segment damaged on the card is caught at upload. With a
    device key also their SHA-256, which the signed records name."""

    def __init__(self, fh, sha256: bool = False):
        self.fh = fh
        self.md5 = hashlib.md5()
        self.sha256 = hashlib.sha256() if sha256 else None
        self.size = 0

    def write(self, data) -> int:
        self.md5.update(data)
        if self.sha256 is not None:
            self.sha256.update(data)
        self.size += len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


class SegmentFile:
    """One MPEG-TS file being written; flushed to the card at least once a second.

    With a ``signer`` (a device key), each sync first muxes a signed checkpoint into the
    file, as a timed-ID3 data packet, at exactly the offset it covers: with packets
    flushed as muxed and an interleave delta of 1 us, the muxer holds back only the frame
    just muxed (it waits for the next to interleave), and a tag timed just before that
    frame goes out at once, ahead of it. So the bytes before the tag hold every frame but
    the last one muxed, whole: what the checkpoint covers (with audio newer than that
    frame, the audio is held instead and the frame is covered too). Of the audio, the
    MPEG-TS muxer may also hold the last packet it took (it may gather small audio
    packets into one PES until the next comes): a checkpoint covers all audio packets but
    the last ``AUDIO_HELD`` muxed.
    """

    def __init__(
        self,
        path: Path,
        name: SegmentName,
        width: int,
        height: int,
        fps: int,
        signer: Signer | None = None,
        audio: AudioFormat | None = None,
    ):
        self.path = path
        self.name = name
        self.signer = signer
        self.prev = signer.prev_for(name.filename) if signer else ""
        self.fh = open(path, "wb")  # noqa: SIM115 - closed in close(), outlives this call
        # The new name goes to the card too: without it, a power cut loses the whole open
        # segment however often its bytes were synced.
        fsync_dir(path.parent)
        self.writer = _HashingWriter(self.fh, sha256=signer is not None)
        # Two streams: the muxer's interleaving must not hold video back waiting for
        # audio (by default up to 10 s), so it holds only the packet just muxed.
        options = CHECKPOINT_OPTIONS if signer or audio else {"flush_packets": "1"}
        self.container = av.open(self.writer, "w", format="mpegts", container_options=options)
        self.stream = self.container.add_stream("h264", rate=fps)
        self.stream.width, self.stream.height = width, height
        self.stream.time_base = TIME_BASE
        self.audio = None
        if audio is not None:
            # Each access unit goes in framed in ADTS (``AudioFormat.adts``), as MPEG-TS
            # wants it: the muxer passes ADTS through as it is.
            self.audio = self.container.add_stream("aac", rate=audio.rate)
            self.audio.codec_context.layout = "mono" if audio.channels == 1 else "stereo"
            self.audio.time_base = TIME_BASE
            self.audio_format = audio
        # The audio digest runs AUDIO_HELD packets behind (``recent``): what checkpoints cover.
        self.audio_digest = proof.AudioDigest() if signer and audio else None
        self.audio_recent: deque[bytes] = deque()
        self.audio_packets = 0
        self.audio_first_pts: int | None = None
        self.audio_last_pts: int | None = None
        self.data = None
        if signer is not None and DATA_STREAMS:
            self.data = self.container.add_data_stream("timed_id3")
            self.data.time_base = TIME_BASE
        # The frames' digest covers all but the last frame muxed (held back by the muxer,
        # see above); ``held`` is that one, added when the next arrives or at close.
        self.digest = proof.FrameDigest() if signer else None
        self.held: tuple[bytes, int] | None = None
        self.covered_last_pts: int | None = None
        self.checkpoints = 0
        self.fps = fps
        self.frames = 0
        self.first_pts: int | None = None
        self.last_pts: int | None = None
        self.last_sync = time.monotonic()

    def write(self, data: bytes, keyframe: bool, pts: int) -> None:
        packet = av.Packet(data)
        packet.stream = self.stream
        packet.time_base = TIME_BASE
        packet.pts = packet.dts = pts
        if _PACKET_FLAGS_WRITABLE:
            packet.is_keyframe = keyframe
        self.container.mux(packet)
        self.frames += 1
        if self.first_pts is None:
            self.first_pts = pts
        self.last_pts = pts
        if self.digest is not None:
            self._release_held()
            self.held = (data, pts)
        if time.monotonic() - self.last_sync >= FLUSH_EVERY:
            self.sync()

    def write_audio(self, data: bytes, pts: int) -> None:
        packet = av.Packet(self.audio_format.adts(data))
        packet.stream = self.audio
        packet.time_base = TIME_BASE
        packet.pts = packet.dts = pts
        self.container.mux(packet)
        self.audio_packets += 1
        if self.audio_first_pts is None:
            self.audio_first_pts = pts
        self.audio_last_pts = pts
        if self.audio_digest is not None:
            self.audio_recent.append(data)
            if len(self.audio_recent) > AUDIO_HELD:
                self.audio_digest.add(self.audio_recent.popleft())
        if time.monotonic() - self.last_sync >= FLUSH_EVERY:
            self.sync()

    def _release_held(self) -> None:
        if self.held is not None:
            self.digest.add_annexb(self.held[0])
            self.covered_last_pts = self.held[1]
            self.held = None

    def _checkpoint(self) -> None:
        """A signed checkpoint of the bytes written so far (see the class docstring)."""
        if self.audio_last_pts is not None and self.audio_last_pts > self.last_pts:
            self._release_held()  # audio newer than it is held instead: the frame is out
        covered = self.frames - (self.held is not None)
        if self.data is None or covered < 1:
            return
        audio, audio_sha256 = None, None
        if self.audio_digest is not None:
            audio = self.audio_packets - len(self.audio_recent)
            audio_sha256 = self.audio_digest.hexdigest() if audio else None
        contents = Contents(
            covered, self.first_pts, self.covered_last_pts, audio_packets=audio or None
        )
        fields = record_fields(
            self.name,
            contents,
            self.fps,
            size=self.writer.size,
            sha256=self.writer.sha256.copy().hexdigest(),
            frames_sha256=self.digest.hexdigest(),
            audio_sha256=audio_sha256,
            prev=self.prev,
        )
        tag = av.Packet(proof.id3_priv(self.signer.checkpoint(fields)))
        tag.stream = self.data
        tag.time_base = TIME_BASE
        tag.pts = tag.dts = self.last_pts - 1  # before the held frame: it goes out first
        self.container.mux(tag)
        self.checkpoints += 1

    def sync(self) -> None:
        if self.signer is not None:
            self._checkpoint()
        self.fh.flush()
        os.fdatasync(self.fh.fileno())
        self.last_sync = time.monotonic()
        self.publish_synced()

    def publish_synced(self) -> None:
        """Tell the uploader how many bytes are on the card: it never sends past them, so
        the cloud never holds what a power cut took. No fsync: after a power cut this file
        can only be older, never ahead of the bytes it counts."""
        write_atomic(synced_path(self.path), str(self.fh.tell()).encode(), durable=False)

    def close(self) -> None:
        self.container.close()
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        if self.digest is not None:
            self._release_held()
        while self.audio_recent:
            self.audio_digest.add(self.audio_recent.popleft())

    def segment_fields(self, contents: Contents) -> dict:
        """The closed segment's record: the whole file, every frame and audio packet."""
        return record_fields(
            self.name,
            contents,
            self.fps,
            size=self.writer.size,
            sha256=self.writer.sha256.hexdigest(),
            frames_sha256=self.digest.hexdigest(),
            audio_sha256=self.audio_digest.hexdigest() if self.audio_packets else None,
            prev=self.prev,
        )

    def contents(self, width: int | None = None, height: int | None = None) -> Contents:
        return Contents(
            self.frames,
            self.first_pts,
            self.last_pts,
            width,
            height,
            audio_packets=self.audio_packets if self.audio is not None else None,
            audio_first_pts=self.audio_first_pts,
            audio_last_pts=self.audio_last_pts,
        )

    def abort(self) -> None:
        """Close after a failed write: what reached the card stays for salvage()."""
        with contextlib.suppress(OSError, av.error.FFmpegError):
            self.container.close()
        with contextlib.suppress(OSError):
            self.fh.close()

    def duration(self) -> float:
        if self.first_pts is None:
            return 0.0
        return duration(self.first_pts, self.last_pts, frame_ticks(self.fps))


class Segmenter:
    """Receives encoded frames and writes gap-free segments into the spool.

    ``room`` is asked before each segment (and once a second while writing)
    whether recording may go on; when it says no, the open segment is closed
    and frames are dropped until it says yes again, resuming at a keyframe.

    Frames go through a queue that holds ``queue_seconds`` of video to a writer
    thread (started with the first frame). When it is full the frame is dropped, and
    so is every frame up to the next keyframe (a frame without its references does
    not decode); the writer logs the count once it has caught up. The video shows a
    hole of exactly that many frames. ``queue_seconds=0`` writes on the caller's
    thread, as hatcam did before the queue: only the bench's baseline uses it.

    ``on_frame`` is called on the caller's thread for every video frame (keep it
    cheap, and it must not raise); ``last_frame_at`` is the monotonic time of the
    latest one; ``failed`` is what ended the writer thread, if anything did.

    ``signer`` (the device key, hatcam.device.signing): each segment gets a signed,
    chained record in its sidecar, and checkpoints inside it at every sync. None: the
    footage is unsigned, as before the device had a key.

    ``audio`` (the microphone's format): packets given with ``audio=True`` go into the
    open segment as a second stream (see the module's docstring). They share the queue,
    which holds ``queue_seconds`` of audio beside the video; when the audio's share is
    full the packet is dropped (counted in ``audio_dropped``, a hole in the sound only:
    video's overflow rules are unchanged). ``audio_gaps`` counts jumps in the audio's
    timestamps (a microphone unplugged and back), ``audio_gap_us`` their length.
    """

    def __init__(
        self,
        spool: Spool,
        device: str,
        width: int,
        height: int,
        fps: int,
        segment_seconds: float,
        room: Callable[[], bool] = lambda: True,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_frame: Callable[[], None] = lambda: None,
        queue_seconds: float = QUEUE_SECONDS,
        signer: Signer | None = None,
        audio: AudioFormat | None = None,
    ):
        self.spool = spool
        self.signer = signer
        self.audio = audio
        self.device = device
        self.width, self.height, self.fps = width, height, fps
        self.segment_us = int(segment_seconds * 1_000_000)
        self.room = room
        self.wall_clock = wall_clock  # names segments; tests pass their own
        self.boot = boot_id()
        self.lock = threading.Lock()
        self.current: SegmentFile | None = None
        self.segment_start_us = 0
        self.run_start_us: int | None = None
        self.synced = False
        self.paused = False
        self.card_failing = False  # a write or a new segment was refused by the card
        self.last_room_check = 0.0
        self.dropped_writing = 0  # paused, or the card refused: counted by the writer
        self.dropped_queue_full = 0  # counted by the caller
        self.camera_skipped = 0  # lost by the camera: gaps in its timestamps
        self._last_timestamp: int | None = None
        self.segments_closed = 0
        self.on_frame = on_frame
        self.last_frame_at: float | None = None
        self.last_written_at: float | None = None  # when the writer last took a frame
        self.failed: BaseException | None = None
        self.queue_seconds = queue_seconds
        self.queue_frames = math.ceil(queue_seconds * fps)  # 0: write inline
        self._queue: deque[tuple[bytes | None, bool, int, int, bool]] = deque()
        self._queued_video = 0
        self._queued_audio = 0
        per_second = audio.rate / SAMPLES_PER_PACKET if audio else 0
        self.queue_audio = math.ceil(queue_seconds * per_second)
        self.audio_dropped = 0  # audio packets no segment holds (queue full, paused, late)
        self.audio_gaps = 0
        self.audio_gap_us = 0
        self._last_audio_timestamp: int | None = None  # as given (caller's thread)
        self._audio_seen: int | None = None  # the latest audio timestamp the writer took
        # A split held back for late audio: the new segment's frames, and its first PTS.
        self._pending: list[tuple[bytes, bool, int]] | None = None
        self._split_pts = 0
        self._queued = threading.Condition()
        self._dropping = 0  # frames dropped in the current episode (queue full)
        self._writer: threading.Thread | None = None

    @property
    def frames_dropped(self) -> int:
        """Frames the camera delivered that no segment holds."""
        return self.dropped_writing + self.dropped_queue_full

    # picamera2's Output.outputframe signature (timestamp in microseconds).
    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        if audio:
            if self.audio is None or timestamp is None:
                return  # no audio configured: dropped, as before audio existed
            self._count_audio_gap(int(timestamp))
            if not self.queue_frames:
                with self.lock:
                    self._audio_packet(bytes(frame), int(timestamp))
                return
            self._enqueue(bytes(frame), True, int(timestamp), audio=True)
            return
        self.last_frame_at = time.monotonic()
        self.on_frame()
        if timestamp is None:
            timestamp = time.monotonic_ns() // 1000
        self._count_skipped(int(timestamp))
        if not self.queue_frames:  # the bench's baseline: the card's time is the camera's
            with self.lock:
                self._frame(bytes(frame), bool(keyframe), int(timestamp))
            return
        self._enqueue(bytes(frame), bool(keyframe), int(timestamp))

    def _count_skipped(self, timestamp: int) -> None:
        """Sensor frames the camera lost before us (libcamera drops a frame when no buffer
        is free, and says so only by the gap in the timestamps)."""
        if self._last_timestamp is not None:
            interval = 1_000_000 / self.fps
            gap = timestamp - self._last_timestamp
            if gap > 1.5 * interval:
                self.camera_skipped += round(gap / interval) - 1
        self._last_timestamp = timestamp

    def _count_audio_gap(self, timestamp: int) -> None:
        """The microphone stopped (unplugged) and came back: a jump in its timestamps."""
        last, self._last_audio_timestamp = self._last_audio_timestamp, timestamp
        if last is None:
            return
        gap = timestamp - last - self.audio.packet_us()
        if gap > self.audio.packet_us():
            self.audio_gaps += 1
            self.audio_gap_us += round(gap)
            log.warning("audio gap: %.3f s without sound (microphone unplugged?)", gap / 1e6)

    def _enqueue(self, data: bytes, keyframe: bool, timestamp: int, audio: bool = False) -> None:
        with self._queued:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="segment-writer")
                self._writer.daemon = True  # close() joins it; a hung card must not hang exit
                self._writer.start()
            if audio:
                if getattr(_paced, "waits", False):
                    while self._queued_audio >= self.queue_audio and self.failed is None:
                        self._queued.wait()
                if self._queued_audio >= self.queue_audio:
                    self.audio_dropped += 1
                    return
                self._queue.append((data, True, timestamp, 0, True))
                self._queued_audio += 1
                self._queued.notify_all()
                return
            if getattr(_paced, "waits", False):
                while self._queued_video >= self.queue_frames and self.failed is None:
                    self._queued.wait()
            full = self._queued_video >= self.queue_frames
            if full or (self._dropping and not keyframe):
                self._dropping += 1
                self.dropped_queue_full += 1
                return
            self._queue.append((data, keyframe, timestamp, self._dropping, False))
            self._queued_video += 1
            self._dropping = 0
            self._queued.notify_all()

    def _write_loop(self) -> None:
        """The writer thread: everything that touches the card. It never dies silently."""
        try:
            while True:
                with self._queued:
                    while not self._queue:
                        self._queued.wait()
                    data, keyframe, timestamp, dropped_before, audio = self._queue.popleft()
                    if audio:
                        self._queued_audio -= 1
                    elif data is not None:
                        self._queued_video -= 1
                    self._queued.notify_all()  # room for a producer that waits
                if dropped_before:
                    log.warning(
                        "the card was slower than the camera: %d frames dropped "
                        "(write queue full, it holds %g s)",
                        dropped_before,
                        self.queue_seconds,
                    )
                self.last_written_at = time.monotonic()
                with self.lock:
                    if data is None:  # close(): the last segment is closed properly
                        self._close_all()
                        return
                    if audio:
                        self._audio_packet(data, timestamp)
                    else:
                        self._frame(data, keyframe, timestamp)
        except BaseException as exc:
            log.exception("the segment writer failed: %s", exc)
            with self._queued:
                self.failed = exc
                self._queued.notify_all()

    def _frame(self, data: bytes, keyframe: bool, timestamp: int) -> None:
        if self.run_start_us is None:
            self.run_start_us = timestamp
        now = time.monotonic()
        # At every keyframe (where a segment may start) and at least once a second.
        if keyframe or now - self.last_room_check >= FLUSH_EVERY:
            self.last_room_check = now
            self._check_room()
        if self.paused:
            self.dropped_writing += 1
            return
        if self._pending is not None:  # a split waiting for late audio
            self._pending.append((data, keyframe, timestamp))
            if timestamp - self._pending[0][2] >= AUDIO_HOLD_US:
                log.info("no audio past the split within %g s: split anyway", AUDIO_HOLD_US / 1e6)
                self._split()
            return
        if (
            self.current is not None
            and keyframe
            and timestamp - self.segment_start_us >= self.segment_us
        ):
            if self._audio_behind(timestamp):
                self._pending = [(data, keyframe, timestamp)]
                self._split_pts = self._pts(timestamp)
                return
            self._close()
        self._place(data, keyframe, timestamp)

    def _pts(self, timestamp: int) -> int:
        return round((timestamp - self.run_start_us) * CLOCK / 1_000_000)

    def _audio_behind(self, timestamp: int) -> bool:
        """Whether a split at ``timestamp`` should wait for audio: it is flowing, and
        has not yet reached the split."""
        if self.audio is None or self._audio_seen is None:
            return False
        return timestamp - AUDIO_STALE_US <= self._audio_seen < timestamp

    def _split(self) -> None:
        """Close the segment held open for late audio, and start the next with the frames
        held meanwhile."""
        pending, self._pending = self._pending, None
        self._close()
        for data, keyframe, timestamp in pending or ():
            self._place(data, keyframe, timestamp)

    def _close_all(self) -> None:
        """Close what is open, frames held for a split included (each in its segment)."""
        if self._pending is not None:
            self._split()
        self._close()

    def _audio_packet(self, data: bytes, timestamp: int) -> None:
        """One AAC packet into the segment whose video range holds its PTS; dropped (and
        counted) when no open segment does: before the first frame, while paused, or
        later than a split could wait for."""
        self._audio_seen = timestamp
        if self.run_start_us is None:
            self.audio_dropped += 1
            return
        pts = self._pts(timestamp)
        if self._pending is not None and pts >= self._split_pts:
            self._split()
        segment = self.current
        if (
            segment is None
            or segment.first_pts is None
            or pts < segment.first_pts
            or (segment.audio_last_pts is not None and pts <= segment.audio_last_pts)
        ):
            self.audio_dropped += 1
            return
        try:
            segment.write_audio(data, pts)
        except (OSError, av.error.FFmpegError) as exc:
            self._write_failed(exc)

    def _place(self, data: bytes, keyframe: bool, timestamp: int) -> None:
        """A video frame into the open segment, opening one at a keyframe if none is."""
        if self.current is None:
            if not keyframe:  # a segment must start with a keyframe to play on its own
                self.dropped_writing += 1
                return
            try:
                if self.card_failing:  # first queue what the failed writes left behind
                    recover(self.spool, self.device, self.fps, self.signer)
                self._open(timestamp)
            except OSError as exc:  # the card is full or failing: try the next keyframe
                self.dropped_writing += 1
                if not self.card_failing:
                    log.error("cannot start a segment (%s); trying at every keyframe", exc)
                self.card_failing = True
                return
            if self.card_failing:
                log.warning(
                    "recording again (%d frames lost while the card refused writes)",
                    self.frames_dropped,
                )
                self.card_failing = False
        try:
            self.current.write(data, keyframe, self._pts(timestamp))
        except (OSError, av.error.FFmpegError) as exc:
            self._write_failed(exc)

    def _write_failed(self, exc: Exception) -> None:
        """The card refused a write (full, or failing). Keep what the segment holds and
        let the floor policy decide what next, rather than crash the camera."""
        segment, self.current = self.current, None
        self.dropped_writing += 1
        self.card_failing = True
        self._give_up_on(segment, f"writing it failed: {exc}")
        self._check_room()

    def _give_up_on(self, segment: SegmentFile, why: str) -> None:
        log.error("%s: %s; closing it early", segment.path.name, why)
        segment.abort()
        try:
            salvage(
                self.spool,
                self.device,
                self.fps,
                segment.path,
                "closed early",
                segment.first_pts,
                self.signer,
            )
        except OSError as exc:  # recover() at the next start picks it up
            log.error("%s stays in recording/ until the next start (%s)", segment.path.name, exc)

    def _check_room(self) -> None:
        ok = self.room()
        if not ok and not self.paused:
            log.warning("disk floor reached: recording paused until space is freed")
            self._close_all()
            self.paused = True
        elif ok and self.paused:
            log.warning(
                "disk space available again: recording resumes (%d frames not recorded)",
                self.frames_dropped,
            )
            self.paused = False

    def _open(self, timestamp: int) -> None:
        name = SegmentName(self.wall_clock(), self.boot, self.spool.next_seq())
        self.segment_start_us = timestamp
        self.synced = clock_synchronized()
        self.current = SegmentFile(
            self.spool.recording / name.filename,
            name,
            self.width,
            self.height,
            self.fps,
            self.signer,
            self.audio,
        )

    def _close(self) -> None:
        segment, self.current = self.current, None
        if segment is None:
            return
        try:
            segment.close()
            # The sidecar: what the segment holds, so nothing downstream has to demux it.
            contents = segment.contents(self.width, self.height)
            # Signed (and made the chain's end) before the commit: see signing.py.
            signed = self.signer.segment(segment.segment_fields(contents)) if self.signer else None
            record = SegmentRecord.made(
                self.device,
                segment.name,
                contents,
                self.fps,
                self.synced,
                segment.writer.md5.hexdigest(),
                proof=signed,
            )
            # Gone before the commit syncs recording/: the rest goes up from ready/.
            synced_path(segment.path).unlink(missing_ok=True)
            path = self.spool.commit(segment.path, record)
        except (OSError, av.error.FFmpegError) as exc:
            self._give_up_on(segment, f"closing it failed: {exc}")
            return
        self.segments_closed += 1
        log.info(
            "segment ready: %s (%d frames, %.2f s)", path.name, segment.frames, segment.duration()
        )

    def close(self) -> None:
        """Write what is queued and close the open segment properly (on SIGTERM or when
        the camera stops). A writer stuck on the card for longer than DRAIN_SECONDS is
        left behind: the open segment stays in recording/ for recover() at the next start."""
        with self._queued:
            writer, self._writer = self._writer, None
            if writer is not None:
                self._queue.append((None, False, 0, self._dropping, False))
                self._dropping = 0
                self._queued.notify_all()
        if writer is None:
            with self.lock:
                self._close_all()
            return
        writer.join(DRAIN_SECONDS)
        if writer.is_alive():
            log.error(
                "the card did not take the last frames in %g s: %d frames not written; "
                "the open segment is recovered at the next start",
                DRAIN_SECONDS,
                len(self._queue) - 1,
            )
        elif self.failed is not None:
            with self.lock, contextlib.suppress(Exception):
                self._close_all()  # best effort: recover() at the next start otherwise

    @property
    def current_name(self) -> str | None:
        segment = self.current
        return segment.path.name if segment else None


def synced_path(segment: Path) -> Path:
    """``recording/<name>.synced``: the open segment's byte count synced to the card."""
    return segment.with_suffix(".synced")


def salvage(
    spool: Spool,
    device: str,
    fps: int,
    path: Path,
    why: str,
    first_pts: int | None = None,
    signer: Signer | None = None,
) -> Path | None:
    """Queue a segment that was not closed properly with what it holds (or drop it if it
    holds no complete frame). ``first_pts``, the device's count at its first frame when
    known, keeps its record on that count past the 33-bit wrap (else: the file's own).
    With a ``signer``, its signed record covers its whole TS packets and complete frames
    (``signing.salvage_scan``), chained after the last record."""
    name = SegmentName.parse(path.name)
    signed = None
    try:
        if name is None:
            contents = None
        elif signer is None:
            contents = probe(path, torn_ok=True, near=first_pts)
        else:
            held = salvage_scan(path, near=first_pts)
            contents = held.contents if held else None
            if held is not None:
                fields = record_fields(
                    name,
                    held.contents,
                    fps,
                    size=held.size,
                    sha256=held.sha256,
                    frames_sha256=held.frames_sha256,
                    audio_sha256=held.audio_sha256,
                    prev=signer.prev_for(name.filename),
                    recovered=True,
                )
    except ValueError:
        contents = None
    if contents is None:
        log.warning("discarding %s (%s): it holds no complete frame", path.name, why)
        path.unlink(missing_ok=True)
        synced_path(path).unlink(missing_ok=True)
        return None
    # The picture size is left for fetch to read from the file; whether the clock was
    # synchronised back then is unknown: say no.
    contents = replace(contents, width=None, height=None)
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    if signer is not None:
        signed = signer.segment(fields)  # the chain's end before the commit: see signing.py
    record = SegmentRecord.made(device, name, contents, fps, False, recovered=True, proof=signed)
    synced_path(path).unlink(missing_ok=True)
    committed = spool.commit(path, record)
    log.warning("recovered %s (%s): %d frames", path.name, why, contents.frames)
    return committed


def recover(spool: Spool, device: str, fps: int, signer: Signer | None = None) -> list[Path]:
    """Move segments left in recording/ by a crash or power cut into ready/, oldest first
    (by sequence number: their records chain in that order)."""
    for stray in spool.recording.glob("*.synced"):  # its segment was committed or dropped
        if not stray.with_suffix(".ts").exists():
            stray.unlink(missing_ok=True)
    left = [(SegmentName.parse(p.name), p) for p in spool.recording.glob("*.ts")]
    found = (
        salvage(spool, device, fps, path, "after an unclean stop", signer=signer)
        for _, path in sorted(left, key=lambda item: (item[0] is None, item[0] and item[0].seq))
    )
    return [path for path in found if path is not None]
