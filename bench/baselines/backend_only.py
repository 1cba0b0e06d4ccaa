"""Memory beside the camera daemon: the synthetic backend alone, frames thrown away.

    python bench/baselines/backend_only.py SECONDS

What the test camera itself costs (its libx264 encoder), which a real Pi's hardware
encoder does not: the part of the daemon's figure that is not hatcam's.
"""

import sys
import time

from hatcam.device.camera.synthetic import SyntheticCamera


class Discard:
    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        pass


def main() -> None:
    SyntheticCamera(1280, 720, 30, 4_000_000, realtime=True).start(Discard())
    time.sleep(float(sys.argv[1]))


if __name__ == "__main__":
    main()
