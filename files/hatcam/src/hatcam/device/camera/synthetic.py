"""A moving test pattern encoded to real H.264 with PyAV/libx264.

Used by the tests, the demo, benchmarks and the virtual Pi: everything after
the backend is the same code as on a real hat cam. ``realtime`` paces frames
at the frame rate with capture timestamps from the monotonic clock; otherwise
frames come as fast as the encoder runs, with timestamps one interval apart.
"""

from __future__ import annotations

import io
import math
import threading
import time
from fractions import Fraction

import av

from . import Still

BAR = 32  # width of the moving bar, pixels


class SyntheticCamera:
    def __init__(self, width, height, fps, bitrate, realtime=True, frames=None):
        self.width, self.height, self.fps = width, height, fps
        self.bitrate = bitrate
        self.realtime = realtime
        self.max_frames = frames
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._latest: int | None = None  # the newest frame's index, for stills
        self.frames_sent = 0
        self.failed: BaseException | None = None
        # Luma ramp, chroma flat: cheap to make, easy to see motion and seams in. Plain
        # bytes, not numpy: the pattern costs the daemon no extra library (and memory).
        self._ramp = bytes(16 + (235 - 16) * x // max(1, width - 1) for x in range(width))

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

    def _frame(self, luma: bytearray, format: str, frame=None) -> av.VideoFrame:
        """``luma`` in a frame with flat chroma; into ``frame`` if given (libx264 copies
        its input while encoding, so the camera thread refills one frame)."""
        reuse = frame is not None
        frame = frame if reuse else av.VideoFrame(self.width, self.height, format)
        y, u, v = frame.planes
        if y.line_size == y.width:
            y.update(luma)
        else:  # rows padded in memory: copy them one by one
            padded = bytearray(y.buffer_size)
            for row in range(y.height):
                at, src = row * y.line_size, row * y.width
                padded[at : at + y.width] = luma[src : src + y.width]
            y.update(padded)
        if not reuse:
            grey = b"\x80" * u.buffer_size
            u.update(grey)
            v.update(grey)
        return frame

    def start(self, output) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(output,), name="synthetic", daemon=True
        )
        self._thread.start()

    def _run(self, output) -> None:
        try:
            enc = self._encoder()
            start = time.monotonic_ns() // 1000
            interval = 1_000_000 / self.fps
            index = 0
            luma = bytearray(self.width * self.height)
            frame = None
            while not self._stop.is_set():
                if self.max_frames is not None and index >= self.max_frames:
                    break
                due = start + round(index * interval)
                if self.realtime:
                    delay = (due - time.monotonic_ns() // 1000) / 1e6
                    if delay > 0 and self._stop.wait(delay):
                        break
                with self._lock:
                    self._latest = index
                frame = self._frame(self._picture(index, luma), "yuv420p", frame)
                frame.pts = due
                for packet in enc.encode(frame):
                    output.outputframe(bytes(packet), packet.is_keyframe, packet.pts)
                    self.frames_sent += 1
                index += 1
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
        self.wait(5)
