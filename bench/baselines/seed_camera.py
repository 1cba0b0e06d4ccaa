"""Memory baseline: the seed's recorder, each segment held in memory until uploaded.

    python bench/baselines/seed_camera.py SECONDS

Run with its uploads stalled (no network), so every 10 s segment stays queued: what the
seed's design costs while the camera is offline, against hatcam's spool on the card.
"""

import sys
import time

from hatcam.device.camera.synthetic import SyntheticCamera

SEGMENT_US = 10_000_000


class InMemory:
    def __init__(self):
        self.queue: list[bytes] = []
        self.current = bytearray()
        self.start = 0

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        if keyframe and self.current and timestamp - self.start >= SEGMENT_US:
            self.queue.append(bytes(self.current))
            self.current = bytearray()
        if not self.current:
            self.start = timestamp
        self.current += frame


def main() -> None:
    SyntheticCamera(1280, 720, 30, 4_000_000, realtime=True).start(InMemory())
    time.sleep(float(sys.argv[1]))


if __name__ == "__main__":
    main()
