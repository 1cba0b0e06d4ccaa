"""The clapperboard both synthetic sensors observe, so that sync is measured from the files.

Once a second the synthetic camera shows a marked frame and registers that frame's capture
time here (on the video clock, microseconds); the synthetic microphone renders a click at
exactly that instant of its own sample clock. Decoding the files then gives, for each clap,
the marked frame's PTS and the click's time: their difference is the audio/video offset.
"""

from __future__ import annotations

import threading
from collections import deque

KEEP = 64  # claps remembered: a microphone renders a period at most a few seconds late


class Scene:
    def __init__(self):
        self._lock = threading.Lock()
        self._claps: deque[int] = deque(maxlen=KEEP)

    def clap(self, at_us: int) -> None:
        """A clap at ``at_us`` on the video clock (registered before that instant passes)."""
        with self._lock:
            self._claps.append(int(at_us))

    def claps_between(self, start_us: float, end_us: float) -> list[int]:
        """The claps in [start_us, end_us)."""
        with self._lock:
            return [at for at in self._claps if start_us <= at < end_us]
