"""The real camera, through picamera2 (from Pi OS's apt, imported only here).

Kept thin on purpose: it cannot run off a Pi. picamera2's H264Encoder calls
``outputframe`` on its outputs; ``_SegmenterOutput`` hands those calls to our
segmenter unchanged. Read against picamera2 0.3.12 to 0.3.36: what it does not
bound (a still, a stop) is bounded here, and the threads that carry frames are
watched, since a dead one stops the video without a word.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time

import simplejpeg  # a dependency of picamera2 in every version
from picamera2 import Picamera2
from picamera2.encoders import H264Encoder
from picamera2.outputs import Output

from . import CameraTimeout, Still, backend_info, picamera2_version

log = logging.getLogger("hatcam.camera")

STILL_TIMEOUT = 10.0  # seconds for a frame to come for a still (a frame is due every 1/fps s)
STOP_TIMEOUT = 10.0  # seconds for picamera2 to stop and close before the daemon goes on
JPEG_QUALITY = 90  # picamera2's own default
# simplejpeg's names for picamera2's packed RGB formats (libcamera names them by word order).
RGB_LAYOUT = {"XBGR8888": "RGBX", "XRGB8888": "BGRX", "BGR888": "RGB", "RGB888": "BGR"}


class _SegmenterOutput(Output):
    """Hands picamera2's frames to the segmenter; remembers what killed the thread."""

    def __init__(self, segmenter):
        super().__init__()
        self.segmenter = segmenter
        self.error: BaseException | None = None

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        try:
            self.segmenter.outputframe(frame, keyframe, timestamp, packet, audio)
        except BaseException as exc:
            # The exception ends picamera2's thread (its encoder's on a Pi 0-4, its camera
            # loop's on a Pi 5); ``failed`` reports it with this as the reason.
            self.error = exc
            raise


def make_encoder(encoder_class, bitrate: int, fps: int):
    """H.264 with SPS/PPS before every keyframe, a keyframe every second (segments split
    there and play alone), told the frame rate: picamera2's software encoder (a Pi 5's)
    otherwise assumes 30 fps for its rate control and stream rate."""
    return encoder_class(bitrate=bitrate, repeat=True, iperiod=fps, framerate=fps)


def encode_jpeg(buffer, config: dict) -> bytes:
    """A JPEG from a copied main-stream buffer (1-D bytes) and its stream configuration."""
    fmt, (width, height), stride = config["format"], config["size"], config["stride"]
    if fmt == "YUV420":
        # Planes as picamera2 lays them out: Y (stride wide), then U and V (stride / 2).
        frame = buffer[: stride * height * 3 // 2]
        y = frame.reshape(height * 3 // 2, stride)[:height, :width]
        half = frame.reshape(height * 3, stride // 2)
        u = half[2 * height : 2 * height + height // 2, : width // 2]
        v = half[2 * height + height // 2 : 3 * height, : width // 2]
        return simplejpeg.encode_jpeg_yuv_planes(y, u, v, JPEG_QUALITY)
    if fmt not in RGB_LAYOUT:
        raise ValueError(f"stills from a {fmt} main stream are not supported")
    depth = len(RGB_LAYOUT[fmt])
    pixels = buffer[: stride * height].reshape(height, stride)[:, : width * depth]
    image = pixels.reshape(height, width, depth).copy()  # contiguous for simplejpeg
    return simplejpeg.encode_jpeg(image, JPEG_QUALITY, RGB_LAYOUT[fmt], "420")


class PiCamera:
    def __init__(
        self,
        width,
        height,
        fps,
        bitrate,
        autofocus=False,
        main_format: str | None = None,
        buffer_count: int | None = None,
        pi_model: str = "",
    ):
        self.picam2 = Picamera2()
        main = {"size": (width, height)}
        options = {}
        if main_format:
            main["format"] = main_format
        if buffer_count:
            # Little camera memory (a Zero): no raw stream of our own, so libcamera keeps
            # only its few internal raw buffers instead of one per buffer here.
            options.update(buffer_count=buffer_count, raw=None)
        config = self.picam2.create_video_configuration(
            main=main, controls={"FrameRate": fps}, **options
        )
        self.picam2.configure(config)
        self.encoder = make_encoder(H264Encoder, bitrate, fps)
        self.autofocus = autofocus
        self.info = backend_info(pi_model, picamera2_version(), self.encoder)
        log.info(
            "picamera2 %s, %s on %s%s",
            self.info["picamera2"],
            self.info["encoder"],
            pi_model or "a board not known",
            f", {buffer_count} {main_format} buffers" if buffer_count else "",
        )
        if "warning" in self.info:
            log.warning("%s", self.info["warning"])
        self._output: _SegmenterOutput | None = None
        self._running = False
        self._failed: BaseException | None = None
        self._still_thread: threading.Thread | None = None

    def start(self, output) -> None:
        self._output = _SegmenterOutput(output)
        self.picam2.start_recording(self.encoder, self._output)
        self._running = True
        if self.autofocus and "AfMode" in self.picam2.camera_controls:
            from libcamera import controls

            self.picam2.set_controls({"AfMode": controls.AfModeEnum.Continuous})

    def clock_us(self) -> float | None:
        """Now on the frames' clock (microseconds), None before the first frame.

        picamera2 stamps a frame with its SensorTimestamp minus the first frame's
        (Encoder._timestamp, encoder.firsttimestamp, in us); libcamera defines
        SensorTimestamp on CLOCK_BOOTTIME (control_ids_core.yaml), so now is BOOTTIME
        minus that first timestamp. It counts through a suspend, as the frames do."""
        first = getattr(self.encoder, "firsttimestamp", None)
        if first is None:
            return None
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME) / 1000 - first

    @property
    def failed(self) -> BaseException | None:
        """Set once a thread that carries frames has died: no frame will come again."""
        if self._failed is None and self._running:
            self._failed = self._dead_thread()
        return self._failed

    def _dead_thread(self) -> BaseException | None:
        why = f" ({self._output.error!r})" if self._output and self._output.error else ""
        # V4L2Encoder (the Pi 0-4's hardware encoder) hands frames on from its own thread;
        # when it dies, the camera loop soon blocks waiting for an encoder buffer.
        encoder_thread = getattr(self.encoder, "thread", None)
        if encoder_thread is not None and not encoder_thread.is_alive():
            return RuntimeError(f"picamera2's H.264 encoder thread has ended{why}")
        # The camera loop (NullPreview's thread) runs process_requests, and with it the
        # software encoder on a Pi 5; an exception there ends it.
        loop = getattr(getattr(self.picam2, "_preview", None), "thread", None)
        if loop is not None and not loop.is_alive():
            return RuntimeError(f"picamera2's camera loop has ended{why}")
        return None

    def capture_still(self, timeout: float = STILL_TIMEOUT) -> Still:
        """A JPEG of the next frame. The frame is copied and its buffer given back before
        the encode; a camera that gives no frame within ``timeout`` raises CameraTimeout.

        The wait runs on a helper thread: picamera2's capture_request queues its job under
        the lock its camera loop holds while stuck in an encoder, so not even picamera2's
        own wait(job, timeout) could bound it. A frame that comes late is released there."""
        if self._still_thread is not None and self._still_thread.is_alive():
            raise CameraTimeout("the previous still is still waiting for a frame from the camera")
        got: dict = {}

        def grab() -> None:
            try:
                request = self.picam2.capture_request()
                try:
                    got["buffer"] = request.make_buffer("main")  # a copy
                    got["config"] = dict(request.config["main"])
                    got["metadata"] = request.get_metadata()
                finally:
                    request.release()
            except BaseException as exc:
                got["error"] = exc

        self._still_thread = threading.Thread(target=grab, name="hatcam-still", daemon=True)
        self._still_thread.start()
        self._still_thread.join(timeout)
        if self._still_thread.is_alive():
            raise CameraTimeout(f"no frame from the camera for a still within {timeout:g} s")
        if "error" in got:
            raise got["error"]
        meta = got["metadata"]
        jpeg = encode_jpeg(got["buffer"], got["config"])
        extra = {
            key: str(meta[name])
            for key, name in (
                ("exposure_time", "ExposureTime"),
                ("analogue_gain", "AnalogueGain"),
                ("colour_temperature", "ColourTemperature"),
            )
            if name in meta
        }
        return Still(jpeg, float(meta.get("Lux", 0.0)), extra)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop and close, bounded: picamera2 joins its encoder thread with no timeout, and
        a camera loop stuck in an encoder never lets go of its lock."""
        self._running = False
        errors: list[BaseException] = []

        def stop_and_close() -> None:
            for step in (self.picam2.stop_recording, self.picam2.close):
                try:
                    step()
                except Exception as exc:
                    errors.append(exc)

        thread = threading.Thread(target=stop_and_close, name="hatcam-camera-stop", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            # picamera2 also closes the camera at exit, which would hang the same way.
            atexit.unregister(self.picam2.close)
            log.error("picamera2 did not stop within %g s; exiting without it", timeout)
        elif errors:
            log.error("picamera2 stopped with an error: %s", errors[0])
