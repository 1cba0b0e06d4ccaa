"""The capture thread: a source's periods, stamped on the video clock, encoded, handed on.

It runs beside the camera in the camera daemon and never holds the video up: a microphone
that is missing or unplugged is logged once (and its return once, with the gap), retried
every ``RETRY_SECONDS``, and the video goes on. Each packet goes to the seam as
``output.outputframe(aac, True, timestamp_us, None, audio=True)``. Memory is bounded: no
queue here, less than one AAC frame of samples waiting in the encoder.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from . import AudioFormat
from .clock import AudioClock
from .encode import AacEncoder

log = logging.getLogger("hatcam.audio")

RETRY_SECONDS = 1.0  # between attempts to open a microphone that is not there


class AudioCapture:
    """``video_clock()``: now on the video frames' clock in microseconds, or None while
    that clock is not known yet (picamera2's starts at the first frame)."""

    def __init__(
        self,
        source,
        fmt: AudioFormat,
        output,
        video_clock: Callable[[], float | None],
        retry_seconds: float = RETRY_SECONDS,
    ):
        self.source, self.fmt, self.output = source, fmt, output
        self.video_clock = video_clock
        self.retry_seconds = retry_seconds
        self.clock = AudioClock(fmt.rate)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_end: float = float("-inf")  # where the last packet sent ends (us)
        self._lost_at: float | None = None  # video clock when the microphone went
        self._announced_missing = False
        self.packets = 0
        self.gaps = 0
        self.status = "starting"
        self.failed: BaseException | None = None
        self._first = True  # the next packet is the first of a run

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="hatcam-audio", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stops after the current period (a read returns within one); the encoder's last
        packets are sent. False if the thread did not end in time."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def state(self) -> dict:
        return {
            "device": str(self.source),
            "state": self.status,
            "packets": self.packets,
            "gaps": self.gaps,
        }

    def run(self, until: Callable[[], bool] = lambda: False) -> None:
        """The thread's body (tests on a simulated clock call it directly, with ``until``)."""
        try:
            while not self._stop.is_set() and not until():
                if self._open():
                    self._record(until)
                else:
                    self._stop.wait(self.retry_seconds)
        except Exception as exc:  # never the video's problem: say so, and end audio only
            self.failed = exc
            self.status = f"failed: {exc}"
            log.error("audio capture stopped (video goes on): %s", exc)
        else:
            self.status = "stopped"

    def _open(self) -> bool:
        try:
            self.source.open()
        except OSError as exc:
            if not self._announced_missing:
                self._announced_missing = True
                self.status = "missing"
                log.warning(
                    "microphone %s not available (%s): recording video without sound, "
                    "trying again every %g s",
                    self.source,
                    exc,
                    self.retry_seconds,
                )
            return False
        if self._announced_missing and self._lost_at is None:  # missing from the start
            log.info("microphone %s found: recording sound", self.source)
        self._announced_missing = False
        return True

    def _record(self, until: Callable[[], bool]) -> None:
        """One run of samples, from open until the device goes (or stop)."""
        encoder = AacEncoder(self.fmt)
        self.clock.restart()
        self._first = True
        samples = 0
        waiting: list[tuple[bytes, int]] = []
        width = 2 * self.fmt.channels
        try:
            while not self._stop.is_set() and not until():
                pcm = self.source.read()
                now = self.video_clock()
                if now is None:  # no video frame yet: nothing to be in sync with
                    continue
                samples += len(pcm) // width
                resyncs = self.clock.resyncs
                self.clock.observe(samples, now)
                if self.clock.resyncs != resyncs:
                    log.warning(
                        "microphone %s: samples were lost (the capture fell behind by more "
                        "than the device buffers): sound has a gap there",
                        self.source,
                    )
                waiting += encoder.encode(pcm)
                if self.clock.ready:  # a run's first 0.25 s waits here: ~12 small packets
                    for data, index in waiting:
                        self._send(data, index)
                    waiting.clear()
        except OSError as exc:
            self._lost_at = self.video_clock() or self._last_end
            self._announced_missing = True  # one line for the loss, not one more per retry
            self.status = "lost"
            log.warning(
                "microphone %s lost (%s): video goes on without sound until it returns",
                self.source,
                exc,
            )
        finally:
            if self.clock.ready or samples:
                for data, index in waiting + encoder.flush():
                    self._send(data, index)
            self.source.close()

    def _send(self, data: bytes, index: int) -> None:
        timestamp = self.clock.stamp(index, not_before=self._last_end)
        if self._first:
            self._first = False
            self.status = "recording"
            if self._lost_at is not None:
                self.gaps += 1
                log.info(
                    "microphone %s back: sound resumes after a gap of %.1f s",
                    self.source,
                    (timestamp - self._last_end) / 1e6,
                )
                self._lost_at = None
        self.output.outputframe(data, True, timestamp, None, audio=True)
        self.packets += 1
        self._last_end = timestamp + self.fmt.packet_us()


# The synthetic microphone runs this far off its nominal rate, as a real one may: the
# daemon's sound then shows the drift fix at work, not a perfect crystal.
SYNTHETIC_RATE_ERROR = 0.001


def open_capture(settings, fmt: AudioFormat, camera, output) -> AudioCapture | None:
    """The daemon's capture for ``settings.audio_device`` beside ``camera``, not started;
    None (said in one line) when the camera has no real-time clock to follow."""
    if camera.clock_us() is None and settings.camera == "synthetic":
        log.warning(
            "HATCAM_AUDIO: the synthetic camera's fast pace runs ahead of real time, so "
            "there is no now for sound to follow; recording without sound "
            "(HATCAM_SYNTHETIC_PACE=realtime records it)"
        )
        return None
    if settings.audio_device == "synthetic":
        import signal

        from .synthetic import RealClock, SyntheticMicrophone

        source = SyntheticMicrophone(
            fmt.rate,
            fmt.channels,
            RealClock(),
            getattr(camera, "scene", None),
            rate_error=SYNTHETIC_RATE_ERROR,
        )
        if threading.current_thread() is threading.main_thread():
            # Tests unplug and plug the daemon's microphone from outside.
            signal.signal(signal.SIGUSR2, lambda *_: source.toggle())
    else:
        from .source import AlsaSource

        source = AlsaSource(settings.audio_device, fmt.rate, fmt.channels)
    return AudioCapture(source, fmt, output, camera.clock_us)
