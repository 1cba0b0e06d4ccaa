"""A moving test pattern encoded to real H.264 with PyAV/libx264.

Used by the tests, the demo, benchmarks and the virtual Pi: everything after
the backend is the same code as on a real hat cam. ``realtime`` paces frames
at the frame rate with capture timestamps from the monotonic clock; otherwise
frames come as fast as the encoder runs, with timestamps one interval apart.

It fails the way picamera2 does. The sensor fills one of ``buffers`` camera
buffers (picamera2's create_video_configuration: buffer_count=6) every frame
interval; an encoder thread encodes it and calls ``outputframe``, and the buffer
comes back only when that returns (on a Pi 0-4 the V4L2 encoder's one thread both
calls the outputs and releases the camera's requests; on a Pi 5 the camera's own
loop encodes and outputs). A sensor frame that finds no free buffer is lost, as
libcamera loses it: counted in ``frames_dropped``, its timestamp skipped, so the
video shows the hole. In fast mode the sensor waits for a buffer instead.
``stall()`` (or SIGUSR1 to the daemon) hangs the encoder thread without an
exception, as picamera2's lock-ups look (picamera2 #1090).

The test signal for sound: once a second (every ``fps``-th frame) the frame is marked, a
block of saturated colour in the bottom-left corner (nothing else in the pattern has any
colour), and its capture time is registered in ``scene`` a second before it is due (a
sensor thread late by a few frames must not tell the microphone too late), so the
synthetic microphone clicks at that instant: sync is measured from the files alone.
``clock_us()`` is now on the frames' clock: the monotonic clock in real time; in fast mode
there is no such "now" (frames run ahead of it), so it is None and sound stays off.
"""

from __future__ import annotations

import io
import logging
import math
import queue
import signal
import threading
import time
from fractions import Fraction

import av

from ..audio.scene import Scene
from ..segmenter import frames_may_wait
from . import Still

log = logging.getLogger("hatcam.camera")

BAR = 32  # width of the moving bar, pixels
BUFFERS = 6  # picamera2's create_video_configuration(buffer_count=6)
MARK = 64  # the marked frame's corner block, luma pixels square
MARK_CHROMA = 0xF0  # U and V both high: a magenta no other part of the pattern has


class SyntheticCamera:
    info = {"backend": "synthetic", "encoder": "libx264 (software)"}

    def __init__(self, width, height, fps, bitrate, realtime=True, frames=None, buffers=BUFFERS):
        self.width, self.height, self.fps = width, height, fps
        self.bitrate = bitrate
        self.realtime = realtime
        self.max_frames = frames
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None  # the encoder thread (outputframe)
        self._sensor: threading.Thread | None = None
        self._lock = threading.Lock()
        self._latest: int | None = None  # the newest frame's index, for stills
        # The camera buffers, as tokens: a frame's picture is drawn from its index when it
        # is encoded, so the pool behaves as picamera2's without costing its memory.
        self.buffers = buffers
        self._free = threading.Semaphore(buffers)
        self._captured: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._stalled = threading.Event()
        self._never = threading.Event()  # what a stalled thread waits for
        self.frames_sent = 0
        self.frames_dropped = 0  # sensor frames that found no free buffer
        self.failed: BaseException | None = None
        if threading.current_thread() is threading.main_thread():
            # The watchdog's tests stall the daemon's camera from outside.
            signal.signal(signal.SIGUSR1, lambda *_: self.stall())
        # Luma ramp, chroma flat: cheap to make, easy to see motion and seams in. Plain
        # bytes, not numpy: the pattern costs the daemon no extra library (and memory).
        self._ramp = bytes(16 + (235 - 16) * x // max(1, width - 1) for x in range(width))
        self.scene = Scene()
        self._chroma: tuple[int, bool] | None = None  # (frame, marked) its chroma shows

    def clock_us(self) -> float | None:
        """Now on the frames' clock (microseconds), None when there is no such now."""
        return time.monotonic_ns() / 1000 if self.realtime else None

    def marked(self, index: int) -> bool:
        return index % self.fps == 0

    def _encoder(self) -> av.CodecContext:
        enc = av.CodecContext.create("libx264", "w")
        enc.width, enc.height, enc.pix_fmt = self.width, self.height, "yuv420p"
        enc.time_base = Fraction(1, 1_000_000)
        enc.framerate = Fraction(self.fps, 1)
        enc.bit_rate = self.bitrate
        # Like picamera2's H264Encoder: keyframe every second, SPS/PPS on each, no
        # B-frames, constant bit rate (filler data pads the simple pattern up to the
        # rate, so segments have the size a real camera's would).
        kbps = self.bitrate // 1000
        enc.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "x264-params": f"keyint={self.fps}:min-keyint={self.fps}:scenecut=0:bframes=0:"
            f"repeat-headers=1:nal-hrd=cbr:vbv-maxrate={kbps}:vbv-bufsize={kbps}",
        }
        enc.open()
        return enc

    def _picture(self, index: int, luma: bytearray | None = None) -> bytearray:
        """The luma plane of frame ``index``: a bar moving across the ramp, and the frame
        counter as a column of bits, so seams are visible frame by frame. Drawn into
        ``luma`` if given: the camera thread reuses one buffer, so no frame costs the
        allocator a fresh megabyte."""
        size = self.width * self.height
        luma = bytearray(size) if luma is None else luma
        x = (index * 8) % (self.width - BAR)
        view = memoryview(luma)
        view[: self.width] = self._ramp[:x] + b"\xeb" * BAR + self._ramp[x + BAR :]
        filled = self.width
        while filled < size:  # the first row, doubled until the plane is full
            step = min(filled, size - filled)
            view[filled : filled + step] = view[:step]
            filled += step
        for bit in range(16):
            y0 = 8 + bit * 8
            if y0 + 8 <= self.height:
                mark = (b"\xeb" if index >> bit & 1 else b"\x10") * 6
                for y in range(y0, y0 + 6):
                    luma[y * self.width + 8 : y * self.width + 14] = mark
        return luma

    def _frame(self, luma: bytearray, format: str, frame=None, mark: bool = False) -> av.VideoFrame:
        """``luma`` in a frame with flat chroma (and the mark's block if ``mark``); into
        ``frame`` if given (libx264 copies its input while encoding, so the camera thread
        refills one frame)."""
        if mark:
            self._mark_luma(luma)
        fresh = frame is None
        frame = av.VideoFrame(self.width, self.height, format) if fresh else frame
        y, u, v = frame.planes
        if y.line_size == y.width:
            y.update(luma)
        else:  # rows padded in memory: copy them one by one
            padded = bytearray(y.buffer_size)
            for row in range(y.height):
                at, src = row * y.line_size, row * y.width
                padded[at : at + y.width] = luma[src : src + y.width]
            y.update(padded)
        if fresh or self._chroma != (id(frame), mark):  # only when the mark comes or goes
            chroma = bytearray(b"\x80" * u.buffer_size)
            if mark:
                for row in range(max(0, u.height - MARK // 2), u.height):
                    at = row * u.line_size
                    chroma[at : at + MARK // 2] = bytes([MARK_CHROMA]) * (MARK // 2)
            u.update(chroma)
            v.update(chroma)
            self._chroma = (id(frame), mark)
        return frame

    def _mark_luma(self, luma: bytearray) -> None:
        """The mark's block in full white, in the bottom-left corner."""
        for y in range(max(0, self.height - MARK), self.height):
            luma[y * self.width : y * self.width + MARK] = b"\xeb" * MARK

    def start(self, output) -> None:
        self._thread = threading.Thread(
            target=self._encode_loop, args=(output,), name="synthetic", daemon=True
        )
        self._sensor = threading.Thread(
            target=self._sensor_loop, name="synthetic-sensor", daemon=True
        )
        self._thread.start()  # it starts the sensor once its encoder is open, as picamera2

    def stall(self) -> None:
        """The encoder thread hangs at its next frame, holding its buffer, and never
        raises: frames stop, the sensor's frames are lost for want of buffers."""
        log.warning("synthetic camera: stalling (as picamera2 #1090), frames stop")
        self._stalled.set()

    def _sensor_loop(self) -> None:
        """A frame every interval into a free buffer; none free: the frame is lost."""
        try:
            start = time.monotonic_ns() // 1000
            interval = 1_000_000 / self.fps
            index = 0
            self.scene.clap(start)  # the first frame is marked too
            while not self._stop.is_set():
                if self.max_frames is not None and index >= self.max_frames:
                    break
                due = start + round(index * interval)
                if self.marked(index + self.fps):  # the microphone is told a second ahead
                    self.scene.clap(start + round((index + self.fps) * interval))
                if self.realtime:
                    delay = (due - time.monotonic_ns() // 1000) / 1e6
                    if delay > 0 and self._stop.wait(delay):
                        break
                    taken = self._free.acquire(blocking=False)
                else:
                    while not (taken := self._free.acquire(timeout=0.1)):
                        if self._stop.is_set():
                            break
                if taken:
                    with self._lock:
                        self._latest = index
                    self._captured.put((index, due))
                elif not self._stop.is_set():
                    self.frames_dropped += 1
                index += 1
        except BaseException as exc:  # surfaced to the daemon, which exits for systemd
            self.failed = exc
            raise
        finally:
            self._captured.put(None)

    def _encode_loop(self, output) -> None:
        if not self.realtime:
            frames_may_wait()  # no sensor paces this thread: waiting loses nothing
        try:
            enc = self._encoder()
            self._sensor.start()
            luma = bytearray(self.width * self.height)
            frame = None
            while (captured := self._captured.get()) is not None:
                if self._stalled.is_set():
                    self._never.wait()
                index, due = captured
                frame = self._frame(
                    self._picture(index, luma), "yuv420p", frame, self.marked(index)
                )
                frame.pts = due
                for packet in enc.encode(frame):
                    output.outputframe(bytes(packet), packet.is_keyframe, packet.pts)
                    self.frames_sent += 1
                self._free.release()  # only now: outputframe has returned
            for packet in enc.encode(None):
                output.outputframe(bytes(packet), packet.is_keyframe, packet.pts)
                self.frames_sent += 1
        except BaseException as exc:  # surfaced to the daemon, which exits for systemd
            self.failed = exc
            raise

    def wait(self, timeout=None) -> bool:
        if self._thread:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def capture_still(self) -> Still:
        if self._stalled.is_set():  # a hung camera serves no still either
            self._never.wait()
        with self._lock:
            index = self._latest or 0
        picture = self._picture(index)  # the newest frame, drawn again
        # The same planes, labelled full range as JPEG wants (no pixel format conversion).
        frame = self._frame(picture, "yuvj420p")
        enc = av.CodecContext.create("mjpeg", "w")
        enc.width, enc.height = self.width, self.height
        enc.pix_fmt = "yuvj420p"
        enc.time_base = Fraction(1, self.fps)
        # One thread: FFmpeg's default (a slice thread per core, plus one) made each 20 kB
        # still cost 12-17 MB of peak memory, and a larger, sliced JPEG.
        enc.thread_count = 1
        buf = io.BytesIO()
        for packet in enc.encode(frame):
            buf.write(bytes(packet))
        for packet in enc.encode(None):
            buf.write(bytes(packet))
        lux = 400 + 300 * math.sin(time.time() / 60)  # fake daylight that drifts slowly
        return Still(
            buf.getvalue(), round(lux, 1), {"exposure_time": "10000", "analogue_gain": "1.0"}
        )

    def stop(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + 5  # a stalled encoder thread never ends: 5 s at most
        if self._sensor and self._sensor.is_alive():
            self._sensor.join(5)
        self.wait(max(0.0, deadline - time.monotonic()))
