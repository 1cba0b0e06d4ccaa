"""Real AAC for tests: a tone with clicks, encoded by FFmpeg's AAC encoder (PyAV), and
real H.264 frames from the synthetic camera, fed to a segmenter as a camera and a
microphone would (the audio later than the picture, by the capture latency)."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from array import array

import av

from hatcam.device.audio import SAMPLES_PER_PACKET, AudioFormat
from hatcam.device.camera.synthetic import SyntheticCamera
from hatcam.device.segmenter import frames_may_wait

from tests.support.footage import SMALL

FORMAT = AudioFormat(rate=48000, channels=1, bitrate=64000)
PACKET_US = SAMPLES_PER_PACKET * 1_000_000 / FORMAT.rate


def aac_packets(count: int, fmt: AudioFormat = FORMAT) -> list[bytes]:
    """``count`` raw AAC-LC access units (no ADTS): a 440 Hz tone, a click each second."""
    encoder = av.CodecContext.create("aac", "w")
    encoder.sample_rate, encoder.layout, encoder.format = fmt.rate, "mono", "fltp"
    encoder.bit_rate = fmt.bitrate
    encoder.open()
    out: list[bytes] = []
    index = 0
    while len(out) < count:
        samples = array("f", bytes(4 * SAMPLES_PER_PACKET))
        for i in range(SAMPLES_PER_PACKET):
            n = index * SAMPLES_PER_PACKET + i
            click = n % fmt.rate < fmt.rate // 200
            samples[i] = 0.9 if click else 0.3 * math.sin(2 * math.pi * 440 * n / fmt.rate)
        frame = av.AudioFrame(format="fltp", layout="mono", samples=SAMPLES_PER_PACKET)
        frame.planes[0].update(samples.tobytes())
        frame.sample_rate, frame.pts = fmt.rate, index * SAMPLES_PER_PACKET
        out += [bytes(p) for p in encoder.encode(frame)]
        index += 1
    return out[:count]


class _Collect:
    def __init__(self):
        self.frames: list[tuple[bytes, bool, int]] = []

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        self.frames.append((bytes(frame), bool(keyframe), int(timestamp)))


def camera_frames(count: int) -> list[tuple[bytes, bool, int]]:
    """(H.264 access unit, keyframe, timestamp us) of ``count`` synthetic camera frames."""
    collect = _Collect()
    camera = SyntheticCamera(
        SMALL["width"], SMALL["height"], SMALL["fps"], 300_000, realtime=False, frames=count
    )
    camera.start(collect)
    assert camera.wait(120), "synthetic camera did not finish"
    return collect.frames


def feed(
    segmenter,
    frames,
    audio,
    *,
    lag_us=100_000,
    start_us=None,
    silent=(),
    kill_after=None,
    pace=0,
    times=None,
):
    """Video frames and audio packets in the order they reach the segmenter: each audio
    packet ``lag_us`` after its capture time. Audio capture starts at ``start_us`` (the
    first frame's time by default); packets whose capture time falls in a ``silent``
    (from_us, to_us) range are never delivered (a microphone unplugged). ``kill_after``:
    this process is SIGKILLed after that many frames and packets (a crash). ``pace``:
    seconds to sleep between deliveries (the writer's syncs need time to pass). ``times``:
    each packet's capture time instead (a clock that jumps). Returns the
    (timestamp, data) of the audio packets delivered."""
    start = frames[0][2] if start_us is None else start_us
    events = [(ts, 0, ("video", data, key, ts)) for data, key, ts in frames]
    given = []
    for i, data in enumerate(audio):
        ts = round(start + i * PACKET_US) if times is None else times[i]
        if any(a <= ts < b for a, b in silent):
            continue
        given.append((ts, data))
        events.append((ts + lag_us, 1, ("audio", data, True, ts)))
    events.sort(key=lambda e: (e[0], e[1]))

    def run():
        frames_may_wait()
        for index, (_, _, (kind, data, key, ts)) in enumerate(events):
            if index == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            segmenter.outputframe(data, key, ts, None, audio=kind == "audio")
            if pace:
                time.sleep(pace)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return given
