"""Sync measured from the files alone: the synthetic camera's marked frames and the synthetic
microphone's clicks, found by decoding (PyAV), never from what the code says it wrote.

- ``marked_frames``: PTS (seconds) of the frames whose bottom-left corner carries the mark
  (a block of saturated colour; nothing else in the pattern has any).
- ``clicks``: onset times (seconds) of the clicks in the decoded sound: the first sample
  loud above ``ONSET`` after at least ``QUIET`` seconds below it (the tone is far below).
- ``offsets``: click minus mark for each mark with a click near it.
- ``audio_runs``: per file, where its decoded samples start and end, and how many: a run
  of segments lost or doubled no sample when each starts where the previous ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

MARK_BLOCK = 16  # chroma pixels checked in the corner (the mark is 32 wide there)
MARK_LEVEL = 0xC0  # U above this: marked (grey is 0x80)
ONSET = 0.3  # of full scale: the click is 0.8, the tone 0.05
QUIET = 0.1  # seconds below ONSET before an onset counts (one click, one onset)
PAIR_WITHIN = 0.5  # seconds: a click this far from a mark belongs to it


def marked_frames(path: Path) -> list[float]:
    marks = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            u = frame.planes[1]
            rows = bytes(u)
            h, stride = u.height, u.line_size
            block = [
                rows[(h - 1 - r) * stride + c] for r in range(MARK_BLOCK) for c in range(MARK_BLOCK)
            ]
            if sum(block) / len(block) > MARK_LEVEL:
                marks.append(float(frame.pts * frame.time_base))
    return marks


def decode_audio(path: Path) -> list[tuple[float, np.ndarray, int]]:
    """(start seconds, samples of the first channel as floats, rate) per decoded frame."""
    out = []
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return out
        stream = container.streams.audio[0]
        for frame in container.decode(stream):
            samples = frame.to_ndarray()
            first = samples[0] if samples.ndim > 1 else samples
            if frame.format.name.startswith("s16"):
                first = first / 32768.0
            out.append((float(frame.pts * frame.time_base), first, frame.sample_rate))
    return out


def decode_packets(packets, rate: int, channels: int = 1) -> list[tuple[float, np.ndarray, int]]:
    """The same for raw AAC packets as the seam carries them: (data, timestamp us)."""
    codec = av.CodecContext.create("aac", "r")
    codec.sample_rate = rate
    codec.layout = "mono" if channels == 1 else "stereo"
    bits = (2 << 11) | ({48000: 3, 44100: 4, 32000: 5, 16000: 8}[rate] << 7) | (channels << 3)
    codec.extradata = bits.to_bytes(2, "big")
    out = []
    for data, ts_us in packets:
        packet = av.Packet(data)
        packet.pts = ts_us
        packet.time_base = Fraction(1, 1_000_000)
        for frame in codec.decode(packet):
            samples = frame.to_ndarray()
            out.append(
                (ts_us / 1e6, samples[0] if samples.ndim > 1 else samples, frame.sample_rate)
            )
    return out


def onsets(frames: list[tuple[float, np.ndarray, int]]) -> list[float]:
    found, quiet_since = [], None
    for start, samples, rate in frames:
        loud = np.flatnonzero(np.abs(samples) > ONSET)
        last_loud = None
        for i in loud:
            t = start + i / rate
            if (last_loud is None and (quiet_since is None or t - quiet_since >= QUIET)) or (
                last_loud is not None and t - last_loud >= QUIET
            ):
                found.append(t)
            last_loud = t
        if last_loud is not None:
            quiet_since = last_loud
    return found


def clicks(path: Path) -> list[float]:
    return onsets(decode_audio(path))


def offsets(marks: list[float], clicks_at: list[float]) -> list[float]:
    """click - mark (seconds) for each mark with a click within PAIR_WITHIN."""
    out = []
    for mark in marks:
        near = [c for c in clicks_at if abs(c - mark) <= PAIR_WITHIN]
        if near:
            out.append(min(near, key=lambda c: abs(c - mark)) - mark)
    return out


@dataclass
class AudioRun:
    start: float  # seconds: the first decoded frame's time
    next_start: float  # where the next file's sound should start: the last frame's end
    samples: int
    rate: int
    frame_samples: int  # samples in one decoded frame (1024 for AAC-LC)


def audio_run(path: Path) -> AudioRun | None:
    frames = decode_audio(path)
    if not frames:
        return None
    rate, last = frames[0][2], frames[-1]
    return AudioRun(
        frames[0][0],
        last[0] + len(last[1]) / rate,
        sum(len(f[1]) for f in frames),
        rate,
        len(frames[0][1]),
    )


def boundary_errors(runs: list[AudioRun]) -> list[int]:
    """Samples lost (>0) or doubled (<0) between each file and the next. Counted in whole
    AAC frames: capture spaces packets a little off nominal (it follows the microphone's
    true rate, up to 0.5 % off), so times differ from sample counts by that much, far less
    than the frame a loss or a double would show."""
    return [
        round((b.start - a.next_start) * a.rate / a.frame_samples) * a.frame_samples
        for a, b in zip(runs, runs[1:], strict=False)
    ]
