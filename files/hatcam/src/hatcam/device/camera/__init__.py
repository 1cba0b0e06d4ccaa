"""Camera backends behind one small interface.

A backend encodes H.264 (a keyframe every second, no B-frames) and calls
``output.outputframe(data, keyframe, timestamp_us)`` for every frame from its
own thread; ``capture_still()`` takes a JPEG from the same running camera,
since only one process may own a Pi camera.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Protocol

# picamera2 0.3.26 fixed its V4L2 encoder locking up on a frame that makes no output (low
# bit rates; upstream commit 0c59977, picamera2 #1228/#1230).
PICAMERA2_STALL_FIXED = (0, 3, 26)
# 0.3.13 to 0.3.29 chose the encoder at import by opening /dev/video11: when that failed,
# H264Encoder silently became the software LibavH264Encoder, even on a Pi 0-4.
PICAMERA2_SILENT_FALLBACK = ((0, 3, 13), (0, 3, 29))
UPGRADE = (
    "sudo apt update && sudo apt install --only-upgrade python3-picamera2 "
    "(or provision with hatcam_picamera2_upgrade: true)"
)


class CameraTimeout(Exception):
    """The camera gave no frame (or would not stop) within the time allowed."""


@dataclass
class Still:
    jpeg: bytes
    lux: float
    # Extra camera fields stored beside the image (exposure, gain, ...).
    metadata: dict[str, str] = field(default_factory=dict)


def picamera2_version() -> str:
    """picamera2's version as installed (apt's package carries its metadata); "" if none."""
    try:
        return metadata.version("picamera2")
    except metadata.PackageNotFoundError:
        return ""


def _version(text: str) -> tuple[int, ...] | None:
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", text or "")
    return tuple(int(part) for part in match.groups()) if match else None


def stall_warning(version: str) -> str | None:
    """A picamera2 whose hardware encoder can stall, with the command that upgrades it."""
    parsed = _version(version)
    if parsed is None or parsed >= PICAMERA2_STALL_FIXED:
        return None
    fixed = ".".join(map(str, PICAMERA2_STALL_FIXED))
    return (
        f"picamera2 {version} is older than {fixed}: its hardware H.264 encoder can stall "
        f"at low bit rates with no error (fixed in {fixed}); upgrade: {UPGRADE}"
    )


def backend_info(pi_model: str, version: str, encoder) -> dict[str, str]:
    """What records the video, for the state file and ``hatcam status``."""
    from ...config import board_family

    hardware = any(cls.__name__ == "V4L2Encoder" for cls in type(encoder).__mro__)
    info = {
        "backend": "picamera2",
        "picamera2": version or "unknown",
        "encoder": "hardware H.264" if hardware else "software H.264 (libx264 on the CPU)",
    }
    warnings = []
    family = board_family(pi_model)
    if not hardware and family is not None and family["family"] != "pi5":
        first, last = PICAMERA2_SILENT_FALLBACK
        parsed = _version(version)
        when = " silently" if parsed and first <= parsed <= last else ""
        warnings.append(
            f"picamera2 {version or ''} could not open the {pi_model}'s hardware H.264 "
            f"encoder (/dev/video11) and{when} fell back to software H.264 on the CPU: "
            "frames will be dropped; is the hatcam user in group video, does another "
            "process hold the encoder?"
        )
    stall = stall_warning(version) if hardware else None
    if stall:
        warnings.append(stall)
    if warnings:
        info["warning"] = "; ".join(warnings)
    return info


class FrameOutput(Protocol):
    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False): ...


class Camera(Protocol):
    def start(self, output: FrameOutput) -> None: ...

    def capture_still(self) -> Still: ...

    def stop(self) -> None: ...

    @property
    def failed(self) -> BaseException | None: ...

    # Now on the frames' clock in microseconds (audio is stamped on it), or None while
    # there is none (before picamera2's first frame; the synthetic camera's fast mode).
    def clock_us(self) -> float | None: ...

    # What records the video: {"backend": ..., "encoder": ..., optional "warning": ...}.
    info: dict[str, str]


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
    main_format, buffer_count = settings.camera_buffers
    return PiCamera(
        settings.width,
        settings.height,
        settings.fps,
        settings.bitrate,
        autofocus=settings.camera_autofocus,
        main_format=main_format,
        buffer_count=buffer_count,
        pi_model=settings.pi_model,
    )
