"""A faithful stand-in for a USB microphone, for tests, the demo and benchmarks.

It delivers periods of signed 16-bit samples at its own sample clock, which runs at the
nominal rate x (1 + ``rate_error``) as a real microphone's crystal does (off by up to ~0.1 %),
each period handed over when its last sample is captured plus a scheduling delay (now and
then a long one: a busy CPU), paced on a clock object: ``RealClock`` or ``SimClock`` (an hour
in seconds). ``unplug()`` makes reads fail as PyAV's ALSA input does when a USB device
vanishes (an av OSError with EIO) and opening fail until ``plug()``. It renders a quiet
440 Hz tone and a short loud click exactly at each clap of the shared ``Scene``, in its own
(drifting) sample clock.
"""

from __future__ import annotations

import array
import errno
import math
import random
import struct
import threading
import time

import av

from .scene import Scene

PERIOD = 1024  # samples per read (an ALSA period)
TONE_HZ = 440
TONE_LEVEL = 0.05  # about -26 dBFS: a quiet room
CLICK_LEVEL = 0.8
CLICK_HZ = 2000  # within AAC-LC's band at 64 kbit/s, so the click survives encoding
CLICK_SECONDS = 0.005


class RealClock:
    """The video clock of the synthetic camera in real time: monotonic microseconds."""

    def now_us(self) -> float:
        return time.monotonic_ns() / 1000

    def sleep_until(self, us: float) -> None:
        delay = (us - self.now_us()) / 1e6
        if delay > 0:
            time.sleep(delay)


class SimClock:
    """Simulated time: sleeping only moves the hands, so an hour of capture takes seconds."""

    def __init__(self, start_us: float = 1_000_000.0):
        self.now = start_us

    def now_us(self) -> float:
        return self.now

    def sleep_until(self, us: float) -> None:
        self.now = max(self.now, us)


class SyntheticMicrophone:
    def __init__(
        self,
        rate: int,
        channels: int,
        clock,
        scene: Scene | None = None,
        rate_error: float = 0.0,
        period: int = PERIOD,
        jitter_us: float = 2000.0,
        stall_every: int = 200,
        stall_us: float = 150_000.0,
        seed: int = 1,
    ):
        self.rate, self.channels = rate, channels
        self.clock = clock
        self.scene = scene or Scene()
        self.true_rate = rate * (1 + rate_error)
        self.period = period
        self.jitter_us, self.stall_every, self.stall_us = jitter_us, stall_every, stall_us
        self._random = random.Random(seed)
        self._plugged = threading.Event()
        self._plugged.set()
        self._open = False
        self._lost = 0
        self._start_us = 0.0
        self._delivered = 0
        # The tone's shortest whole number of cycles (1200 samples at 48 kHz: 11 cycles),
        # repeated to cover one read from any point of it: a read is one slice. Built without
        # a list of Python ints (that cost the daemon 2 MB of peak memory for one second).
        self._cycle = rate // math.gcd(rate, TONE_HZ)
        one = array.array(
            "h",
            (
                round(TONE_LEVEL * 32767 * math.sin(2 * math.pi * TONE_HZ * (i // channels) / rate))
                for i in range(self._cycle * channels)
            ),
        ).tobytes()
        self._tone = one * (1 + -(-period // self._cycle))
        self._click = array.array(
            "h",
            (
                round(CLICK_LEVEL * 32767 * math.cos(2 * math.pi * CLICK_HZ * i / rate))
                for i in range(round(CLICK_SECONDS * rate))
            ),
        )

    # The microphone's cable.
    def unplug(self) -> None:
        self._plugged.clear()

    def plug(self) -> None:
        self._plugged.set()

    def overrun(self, seconds: float) -> None:
        """The reader fell behind by more than the device buffers: ALSA drops ``seconds``
        of samples and carries on, and FFmpeg's alsa_dec says nothing of it."""
        self._delivered += round(seconds * self.true_rate)
        self._lost += round(seconds * self.true_rate)

    def toggle(self) -> None:
        (self.plug if not self._plugged.is_set() else self.unplug)()

    def captured_at(self, index: int) -> float:
        """When sample ``index`` (since open) was captured, on the video clock."""
        return self._start_us + index * 1e6 / self.true_rate

    def open(self) -> None:
        if not self._plugged.is_set():
            raise av.error.OSError(errno.EIO, "Input/output error", "synthetic")
        self._open = True
        self._start_us = self.clock.now_us()
        self._delivered = 0
        self._lost = 0

    def read(self) -> bytes:
        if not self._open:
            raise av.error.OSError(errno.EIO, "Input/output error", "synthetic")
        first, end = self._delivered, self._delivered + self.period
        due = self.captured_at(end)  # (samples lost to an overrun were captured, not read)
        delay = self._random.uniform(0, self.jitter_us)
        if self.stall_every and self._random.randrange(self.stall_every) == 0:
            delay += self.stall_us
        self.clock.sleep_until(due + delay)
        if not self._plugged.is_set():
            self._open = False
            raise av.error.OSError(errno.EIO, "Input/output error", "synthetic")
        self._delivered = end
        return self._render(first, end)

    def delivered_index(self, index: int) -> int:
        """Which sample since open the ``index``-th sample handed over is."""
        return index + self._lost

    def _render(self, first: int, end: int) -> bytes:
        width = 2 * self.channels
        at = first % self._cycle
        data = bytearray(self._tone[at * width : (at + end - first) * width])
        for clap in self.scene.claps_between(
            self.captured_at(first - len(self._click)), self.captured_at(end)
        ):
            index = math.ceil((clap - self._start_us) * self.true_rate / 1e6)
            for k, value in enumerate(self._click):
                if first <= index + k < end:
                    for c in range(self.channels):
                        at = ((index + k - first) * self.channels + c) * 2
                        struct.pack_into("<h", data, at, value)
        return bytes(data)

    def close(self) -> None:
        self._open = False

    def __str__(self) -> str:
        return "synthetic"
