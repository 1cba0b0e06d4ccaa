"""The real camera, through picamera2 (from Pi OS's apt, imported only here).

Kept thin on purpose: it cannot run off a Pi. picamera2's H264Encoder calls
``outputframe`` on its outputs; ``_SegmenterOutput`` hands those calls to our
segmenter unchanged.
"""

from __future__ import annotations

import io

from picamera2 import Picamera2
from picamera2.encoders import H264Encoder
from picamera2.outputs import Output

from . import Still


class _SegmenterOutput(Output):
    def __init__(self, segmenter):
        super().__init__()
        self.segmenter = segmenter

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        self.segmenter.outputframe(frame, keyframe, timestamp, packet, audio)


class PiCamera:
    failed = None

    def __init__(self, width, height, fps, bitrate, autofocus=False):
        self.picam2 = Picamera2()
        config = self.picam2.create_video_configuration(
            main={"size": (width, height)}, controls={"FrameRate": fps}
        )
        self.picam2.configure(config)
        # A keyframe (with SPS/PPS) every second: segments split there and play alone.
        self.encoder = H264Encoder(bitrate=bitrate, repeat=True, iperiod=fps)
        self.autofocus = autofocus

    def start(self, output) -> None:
        self.picam2.start_recording(self.encoder, _SegmenterOutput(output))
        if self.autofocus and "AfMode" in self.picam2.camera_controls:
            from libcamera import controls

            self.picam2.set_controls({"AfMode": controls.AfModeEnum.Continuous})

    def capture_still(self) -> Still:
        request = self.picam2.capture_request()
        try:
            buf = io.BytesIO()
            request.save("main", buf, format="jpeg")
            meta = request.get_metadata()
        finally:
            request.release()
        extra = {
            key: str(meta[name])
            for key, name in (
                ("exposure_time", "ExposureTime"),
                ("analogue_gain", "AnalogueGain"),
                ("colour_temperature", "ColourTemperature"),
            )
            if name in meta
        }
        return Still(buf.getvalue(), float(meta.get("Lux", 0.0)), extra)

    def stop(self) -> None:
        self.picam2.stop_recording()
        self.picam2.close()
