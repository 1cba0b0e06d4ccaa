"""Camera backends behind one small interface.

A backend encodes H.264 (a keyframe every second, no B-frames) and calls
``output.outputframe(data, keyframe, timestamp_us)`` for every frame from its
own thread; ``capture_still()`` takes a JPEG from the same running camera,
since only one process may own a Pi camera.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Still:
    jpeg: bytes
    lux: float
    # Extra camera fields stored beside the image (exposure, gain, ...).
    metadata: dict[str, str] = field(default_factory=dict)


class FrameOutput(Protocol):
    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False): ...


class Camera(Protocol):
    def start(self, output: FrameOutput) -> None: ...

    def capture_still(self) -> Still: ...

    def stop(self) -> None: ...

    @property
    def failed(self) -> BaseException | None: ...


def open_camera(settings) -> Camera:
    if settings.camera == "synthetic":
        from .synthetic import SyntheticCamera

        return SyntheticCamera(
            settings.width,
            settings.height,
            settings.fps,
            settings.bitrate,
            realtime=settings.synthetic_pace == "realtime",
        )
    try:
        from .picam import PiCamera  # imports picamera2, present only on a Pi
    except ImportError as exc:
        from ...config import ConfigError

        raise ConfigError(
            [
                f"HATCAM_CAMERA: picamera2 cannot be imported ({exc.name or exc}); install "
                "python3-picamera2 from Pi OS's apt, or use HATCAM_CAMERA=synthetic"
            ]
        ) from None
    return PiCamera(
        settings.width,
        settings.height,
        settings.fps,
        settings.bitrate,
        autofocus=settings.camera_autofocus,
    )
