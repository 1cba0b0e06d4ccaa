"""PCM periods in, raw AAC-LC access units out (PyAV's "aac" encoder, FFmpeg's own).

Periods come in whatever size the source reads; AAC takes exactly ``SAMPLES_PER_PACKET``
samples a frame, so samples wait here until a whole frame is there. No numpy: the bytes go
straight into an s16 AudioFrame and PyAV's resampler makes the float planes AAC wants.
"""

from __future__ import annotations

from fractions import Fraction

import av

from . import SAMPLES_PER_PACKET, AudioFormat

LAYOUTS = {1: "mono", 2: "stereo"}


class AacEncoder:
    def __init__(self, fmt: AudioFormat):
        self.fmt = fmt
        layout = LAYOUTS[fmt.channels]
        self._codec = av.CodecContext.create("aac", "w")
        self._codec.sample_rate = fmt.rate
        self._codec.layout = layout
        self._codec.format = "fltp"
        self._codec.bit_rate = fmt.bitrate
        self._codec.time_base = Fraction(1, fmt.rate)
        self._codec.thread_count = 1
        self._codec.open()
        self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=fmt.rate)
        self._layout = layout
        self._pending = bytearray()
        self._frame_bytes = SAMPLES_PER_PACKET * 2 * fmt.channels
        self._index = 0  # the next frame's first sample

    def encode(self, pcm: bytes) -> list[tuple[bytes, int]]:
        """(access unit, index of its first sample) for every packet this period completes.
        Indices count from this encoder's first sample; the first packet starts before it
        (AAC's priming frame): its index is negative."""
        self._pending += pcm
        out: list[tuple[bytes, int]] = []
        while len(self._pending) >= self._frame_bytes:
            chunk = bytes(self._pending[: self._frame_bytes])
            del self._pending[: self._frame_bytes]
            out += self._encode(chunk, SAMPLES_PER_PACKET)
        return out

    def flush(self) -> list[tuple[bytes, int]]:
        """The rest (the last frame padded with silence), then the encoder's delay."""
        out: list[tuple[bytes, int]] = []
        if self._pending:
            pad = self._frame_bytes - len(self._pending)
            out += self._encode(bytes(self._pending) + bytes(pad), SAMPLES_PER_PACKET)
            self._pending.clear()
        return out + self._packets(None)

    def _encode(self, chunk: bytes, samples: int) -> list[tuple[bytes, int]]:
        frame = av.AudioFrame(format="s16", layout=self._layout, samples=samples)
        frame.planes[0].update(chunk)
        frame.sample_rate = self.fmt.rate
        frame.pts = self._index
        frame.time_base = Fraction(1, self.fmt.rate)
        self._index += samples
        out: list[tuple[bytes, int]] = []
        for converted in self._resampler.resample(frame):
            out += self._packets(converted)
        return out

    def _packets(self, frame) -> list[tuple[bytes, int]]:
        return [(bytes(p), int(p.pts)) for p in self._codec.encode(frame) if p.size]
