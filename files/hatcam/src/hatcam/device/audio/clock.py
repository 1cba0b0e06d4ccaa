"""Audio timestamps on the video clock that do not drift when the microphone's rate does.

A USB microphone's sample clock is its own crystal, off from nominal by up to ~0.1 %: stamping
packets as ``start + samples / nominal_rate`` drifts 3.6 s an hour at that. What is known for
sure is when each read returned on the video clock (``observe``): never before its last sample
was captured, often later (scheduling, a busy CPU). So the lower envelope of (samples
delivered, arrival time) is the microphone's true timeline. Once a second the read closest to
that envelope is kept; a least-squares line through the last few minutes of them gives the true
rate and phase. Packet timestamps (``stamp``) follow that line through a slow loop: each packet
is one period after the previous, the period nudged so the error is worked off over
``SLEW_SECONDS``. Timestamps stay monotonic and evenly spaced, without the arrival jitter.

After a gap (the microphone unplugged) ``restart`` re-anchors: new samples, new timeline; the
rate learnt so far is kept (it is the same crystal, likely), and a new packet never starts
before the previous one ended. The first packets of a run wait for the first envelope point
(``ready``, a quarter second) before they are stamped.
"""

from __future__ import annotations

from collections import deque

WINDOW_SECONDS = 1.0  # one envelope point per second of samples
# The first point comes sooner: the first packets of a run wait for it, and the segmenter
# waits at a split for late audio only so long (segmenter.AUDIO_HOLD_US, 0.5 s).
FIRST_WINDOW_SECONDS = 0.25
POINTS = 240  # envelope points in the fit: four minutes
FIT_AFTER_SECONDS = 8.0  # the span of points before the fitted rate replaces the nominal one
SLEW_SECONDS = 4.0  # a phase error is worked off over this long
MAX_SLEW = 0.005  # the packet period is never nudged by more than 0.5 %
MAX_RATE_ERROR = 0.01  # a fit further than 1 % from nominal is a glitch, not a crystal
# Two whole windows of reads this late mean samples were lost (an ALSA overrun: a reader
# late by more than the device's buffer, which FFmpeg's alsa_dec recovers from without a
# word): a stall delays some reads, or one window, and the ones after it are on time again.
LOST_US = 100_000
LOST_WINDOWS = 2


class AudioClock:
    def __init__(self, rate: int):
        self.nominal_us = 1_000_000 / rate  # microseconds per sample, nominal
        self.rate = rate
        self.sample_us = self.nominal_us  # the estimate
        self.resyncs = 0  # times samples were found lost and the timeline started again
        self.restart()

    def restart(self) -> None:
        """A new run of samples (the device opened again): new phase, rate kept."""
        self._points: deque[tuple[int, float]] = deque(maxlen=POINTS)
        self._late_windows = 0
        self._window_end = self.rate * FIRST_WINDOW_SECONDS
        self._best: tuple[int, float] | None = None  # (samples, arrival) nearest the envelope
        self._a: float | None = None  # envelope: arrival(samples) = a + samples * sample_us
        self._last_index: int | None = None  # the last stamped packet's first sample
        self._last_us = 0.0
        self._period_us = self.sample_us

    @property
    def ready(self) -> bool:
        """A quarter second of reads seen since ``restart``: enough to put the first packet on the
        envelope (one late first read would otherwise set it, and the loop's slow slew
        would take long to work that off)."""
        return bool(self._points)

    def observe(self, samples: int, arrival_us: float) -> None:
        """``samples`` delivered in all since ``restart``, the last read returning at
        ``arrival_us`` on the video clock."""
        if self._best is None or (
            arrival_us - samples * self.sample_us < self._best[1] - self._best[0] * self.sample_us
        ):
            self._best = (samples, arrival_us)
        if not self._points:  # until the first point: a provisional envelope
            low = arrival_us - samples * self.sample_us
            self._a = low if self._a is None else min(self._a, low)
        if samples >= self._window_end:
            self._window_end = samples + self.rate * WINDOW_SECONDS
            x, y = self._best
            late = self._points and y - (self._a + x * self.sample_us) > LOST_US
            self._late_windows = self._late_windows + 1 if late else 0
            if self._late_windows >= LOST_WINDOWS:
                # Samples were lost: the timeline starts again here, the rate is kept.
                self.resyncs += 1
                self._late_windows = 0
                self._points.clear()
                self._last_index = None  # the next packet goes on the new envelope
            elif late:
                self._best = None  # kept out of the fit until it is known which it was
                return
            self._points.append(self._best)
            self._best = None
            self._fit()

    def _fit(self) -> None:
        xs, ys = zip(*self._points, strict=True)
        n = len(xs)
        if n >= 3 and (xs[-1] - xs[0]) * self.nominal_us >= FIT_AFTER_SECONDS * 1e6:
            mx, my = sum(xs) / n, sum(ys) / n
            sxx = sum((x - mx) ** 2 for x in xs)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
            if abs(slope / self.nominal_us - 1) <= MAX_RATE_ERROR:
                self.sample_us = slope
        # The envelope through the points with the rate as estimated: each point lies on or
        # above it (a read is never early), so the lowest one fixes its height.
        self._a = min(y - x * self.sample_us for x, y in self._points)
        self._steer()

    def _steer(self) -> None:
        """The packet period: the estimated rate, nudged towards the envelope."""
        if self._last_index is None or self._a is None:
            return
        error = self._a + self._last_index * self.sample_us - self._last_us
        nudge = error / (SLEW_SECONDS * 1e6)
        nudge = max(-MAX_SLEW, min(MAX_SLEW, nudge))
        self._period_us = self.sample_us * (1 + nudge)

    def stamp(self, index: int, not_before: float = float("-inf")) -> int:
        """The video-clock time (us) of sample ``index`` (a packet's first, packets in order):
        the first of a run (or after samples were lost) is put on the envelope, each next
        one a steady period on."""
        if self._last_index is None:
            us = max(self._a + index * self.sample_us, not_before)
        else:
            us = self._last_us + (index - self._last_index) * self._period_us
        self._last_index, self._last_us = index, us
        self._steer()
        return round(us)
