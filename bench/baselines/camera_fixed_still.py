"""The camera daemon with stills on, every still one JPEG read from a file.

    HATCAM_...=... python bench/baselines/camera_fixed_still.py STILL.jpg

The real daemon (recorder, segmenter, stills publisher, Redis link) with the synthetic
backend's JPEG encoder taken out: its figure beside the daemon's splits what stills cost
into hatcam's part and the test backend's (a Pi's stills come from picamera2 instead).
"""

import os
import sys
from pathlib import Path

from hatcam import cli
from hatcam.device.camera import Still
from hatcam.device.camera.synthetic import SyntheticCamera


def main() -> int:
    jpeg = Path(sys.argv[1]).read_bytes()
    metadata = {"exposure_time": "10000", "analogue_gain": "1.0"}
    SyntheticCamera.capture_still = lambda self: Still(jpeg, 400.0, dict(metadata))
    return cli.main(["--env-file", os.devnull, "camera"])


if __name__ == "__main__":
    sys.exit(main())
