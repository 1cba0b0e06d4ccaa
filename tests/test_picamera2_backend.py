"""The picamera2 backend against the real picamera2 package (libcamera itself is Pi-only).

picamera2 installs from PyPI off the Pi, but its libcamera bindings exist only in
Pi OS; they are stubbed so picamera2's own Output and Encoder classes can carry
real H.264 into our segmenter, exactly as on the device.
"""

from __future__ import annotations

import atexit
import io
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from hatcam.device.camera.synthetic import SyntheticCamera
from hatcam.device.segmenter import Segmenter
from hatcam.device.spool import Spool

from tests.support.footage import SMALL, packets


class _Anything:
    """Stands in for any libcamera object: the camera itself cannot exist here."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()

    def __call__(self, *args, **kwargs):
        return _Anything()

    def __iter__(self):
        return iter(())

    def __mro_entries__(self, bases):
        return (object,)


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()


def stub_libcamera():
    for name in ("libcamera", "pykms", "kms"):
        sys.modules.setdefault(name, _StubModule(name))
    from hatcam.device.camera import picam

    return picam


@pytest.fixture(scope="module")
def picam():
    return stub_libcamera()


def test_segmenter_output_is_a_real_picamera2_output(picam):
    from picamera2.outputs import Output

    assert issubclass(picam._SegmenterOutput, Output)


def test_h264_from_picamera2s_encoder_plumbing_lands_in_gap_free_segments(picam, tmp_path):
    from picamera2.encoders import H264Encoder

    spool = Spool(tmp_path / "spool").ensure()
    segmenter = Segmenter(spool, "pi", SMALL["width"], SMALL["height"], SMALL["fps"], 1.0)
    encoder = H264Encoder(bitrate=300_000, repeat=True, iperiod=SMALL["fps"])
    encoder.output = picam._SegmenterOutput(segmenter)
    # picamera2's Encoder.outputframe fans each encoded frame out to its outputs.
    camera = SyntheticCamera(
        SMALL["width"], SMALL["height"], SMALL["fps"], 300_000, realtime=False, frames=95
    )
    camera.start(encoder)
    assert camera.wait(60) and camera.failed is None
    segmenter.close()
    segments = spool.ready_segments()
    assert len(segments) == 4
    pts = [p for segment in segments for p, _ in packets(segment)]
    assert len(pts) == 95 and {b - a for a, b in zip(pts, pts[1:], strict=False)} == {3000}


def test_picamera2_says_clearly_that_there_is_no_camera(picam):
    with pytest.raises(RuntimeError, match="camera"):
        picam.PiCamera(640, 480, 30, 1_000_000)


# --- the backend around picamera2: frame rate, failures, stills, stop, buffers ---------
#
# What cannot exist here is the camera (sensor + libcamera); FakePicamera2 stands in for
# it with picamera2's own thread structure (read in its source, 0.3.12 to 0.3.36): a
# camera loop thread (NullPreview.thread) running process_requests, where a Pi 5's
# software encoder encodes and outputs; on a Pi 0-4 the V4L2 encoder's own thread
# (encoder.thread) outputs. An exception in an output ends that thread, silently.
# Requests hold one of a small pool of camera buffers until released.


def _encoded_frames(count=60):
    """Real H.264 frames (bytes, keyframe, timestamp) to replay as the encoder's output."""
    frames = []

    class Collect:
        def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
            frames.append((frame, keyframe, timestamp))

    camera = SyntheticCamera(
        SMALL["width"], SMALL["height"], SMALL["fps"], 300_000, realtime=False, frames=count
    )
    camera.start(Collect())
    assert camera.wait(60) and camera.failed is None
    return frames


class FakeRequest:
    """A CompletedRequest: holds one camera buffer until release()."""

    def __init__(self, camera):
        self.camera = camera
        self.config = {"main": dict(camera.main)}
        self.released = False

    def make_buffer(self, name):
        assert not self.released, "a released buffer belongs to the camera again"
        return np.copy(self.camera.image)  # picamera2 copies out too

    def get_metadata(self):
        return {"Lux": 321.5, "ExposureTime": 10000, "AnalogueGain": 2.0}

    def release(self):
        if not self.released:
            self.released = True
            self.camera.held -= 1
            self.camera.pool.release()


class FakePicamera2:
    """The camera, standing in for sensor + libcamera, with picamera2's threads."""

    software = False  # True: a Pi 5 (the camera loop encodes); False: a Pi 0-4 (V4L2)
    made: list = []

    def __init__(self):
        self.camera_controls = {}
        self.stalled = threading.Event()  # set: the sensor delivers no frame
        self.hang_on_stop = False
        self.stop_event = threading.Event()
        self.closed = False
        self.held = 0
        self.kwargs = {}
        self._preview = None
        atexit.register(self.close)  # as picamera2 0.3.2x and later do
        FakePicamera2.made.append(self)

    def create_video_configuration(self, main=None, controls=None, buffer_count=6, **kw):
        self.kwargs = {"main": main, "controls": controls, "buffer_count": buffer_count, **kw}
        return {"main": main, "buffer_count": buffer_count}

    def configure(self, config):
        width, height = config["main"]["size"]
        fmt = config["main"].get("format", "XBGR8888")
        self.pool = threading.BoundedSemaphore(config["buffer_count"])
        if fmt == "YUV420":
            stride = (width + 63) // 64 * 64
            y = np.tile(np.linspace(16, 235, width, dtype=np.uint8), (height, 1))
            y = np.pad(y, ((0, 0), (0, stride - width)))
            chroma = np.full(stride * height // 2, 128, dtype=np.uint8)
            self.image = np.concatenate([y.ravel(), chroma])
        else:
            stride = width * 4
            self.image = np.zeros(stride * height, dtype=np.uint8)
            self.image[0::4] = 200  # red in XBGR8888's byte order (R, G, B, X)
        self.main = {"size": (width, height), "format": fmt, "stride": stride}

    def start_recording(self, encoder, output):
        encoder.output = output  # picamera2's own Encoder fans frames out to its outputs
        frames = _encoded_frames()
        if self.software:
            loop = threading.Thread(target=self._replay, args=(encoder, frames), daemon=True)
        else:
            encoder.thread = threading.Thread(
                target=self._replay, args=(encoder, frames), daemon=True
            )
            encoder.thread.start()
            loop = threading.Thread(target=self.stop_event.wait, daemon=True)
        self._preview = SimpleNamespace(thread=loop)
        loop.start()

    def _replay(self, encoder, frames):
        index = 0
        while not self.stop_event.is_set():
            frame, keyframe, _ = frames[index % len(frames)]
            encoder.outputframe(frame, keyframe, index * 33_333)  # no try: picamera2 has none
            index += 1
            time.sleep(0.002)

    def capture_request(self):
        while self.stalled.is_set():
            time.sleep(0.01)
        self.pool.acquire()
        self.held += 1
        return FakeRequest(self)

    def stop_recording(self):
        if self.hang_on_stop:
            threading.Event().wait()  # V4L2Encoder._stop joins its thread with no timeout
        self.stop_event.set()

    def close(self):
        if self.hang_on_stop:
            threading.Event().wait()  # close() stops the camera loop, which never ends
        atexit.unregister(self.close)
        self.closed = True


class Frames:
    """The segmenter's seat: counts frames; raises from the Nth on, as a failing one does."""

    def __init__(self, fail_at=None):
        self.count = 0
        self.fail_at = fail_at

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        self.count += 1
        if self.fail_at is not None and self.count >= self.fail_at:
            raise OSError(28, "No space left on device")


@pytest.fixture
def fake(picam, monkeypatch):
    FakePicamera2.made = []
    FakePicamera2.software = False
    monkeypatch.setattr(picam, "Picamera2", FakePicamera2)
    yield FakePicamera2
    for made in FakePicamera2.made:
        made.stop_event.set()
        atexit.unregister(made.close)


def wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_encoder_is_told_the_frame_rate(picam, fake, monkeypatch):
    from picamera2.encoders import LibavH264Encoder

    # A Pi 5's software encoder assumes 30 fps unless told (picamera2's default argument).
    assert LibavH264Encoder(bitrate=1_000_000).framerate == 30
    monkeypatch.setattr(picam, "H264Encoder", LibavH264Encoder)
    camera = picam.PiCamera(640, 480, 50, 2_000_000, pi_model="Raspberry Pi 5 Model B Rev 1.0")
    assert camera.encoder.framerate == 50 and camera.encoder.iperiod == 50
    assert camera.info["encoder"].startswith("software H.264")
    assert "warning" not in camera.info


# The dying thread's traceback is what picamera2 prints too; expected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("software", [False, True], ids=["pi4 encoder thread", "pi5 camera loop"])
def test_a_thread_that_dies_makes_the_camera_fail_so_the_daemon_exits(picam, fake, software):
    fake.software = software
    camera = picam.PiCamera(320, 240, 30, 1_000_000, pi_model="Raspberry Pi 4 Model B Rev 1.4")
    output = Frames(fail_at=40)
    camera.start(output)
    wait_for(lambda: output.count >= 10)
    assert camera.failed is None, "frames flow: not failed"
    wait_for(lambda: camera.failed is not None)
    where = "camera loop" if software else "encoder thread"
    assert where in str(camera.failed) and "No space left on device" in str(camera.failed)
    count = output.count
    time.sleep(0.2)
    assert output.count == count, "no frame comes after the thread died"


@pytest.mark.parametrize("fmt", ["YUV420", None], ids=["zero yuv420", "xbgr8888"])
def test_a_still_is_copied_out_and_its_buffer_given_back_before_the_jpeg_encode(
    picam, fake, monkeypatch, fmt
):
    camera = picam.PiCamera(320, 240, 30, 1_000_000, main_format=fmt, buffer_count=4)
    camera.start(Frames())
    cam2 = fake.made[-1]
    held_while_encoding = []
    for name in ("encode_jpeg", "encode_jpeg_yuv_planes"):
        real = getattr(picam.simplejpeg, name)

        def spy(*args, _real=real, **kw):
            held_while_encoding.append(cam2.held)
            return _real(*args, **kw)

        monkeypatch.setattr(picam.simplejpeg, name, spy)
    still = camera.capture_still()
    assert held_while_encoding == [0], "the camera buffer was held during the JPEG encode"
    image = Image.open(io.BytesIO(still.jpeg))
    assert image.format == "JPEG" and image.size == (320, 240)
    if fmt is None:
        assert image.convert("RGB").getpixel((160, 120))[0] > 150, "red stays red"
    else:
        row = [image.convert("L").getpixel((x, 120)) for x in (10, 310)]
        assert row[0] < row[1], "the luma gradient survives"
    assert still.lux == 321.5 and still.metadata["exposure_time"] == "10000"


def test_a_still_with_no_frame_times_out_with_a_clear_error_and_the_late_frame_goes_back(
    picam, fake
):
    camera = picam.PiCamera(320, 240, 30, 1_000_000)
    camera.start(Frames())
    cam2 = fake.made[-1]
    cam2.stalled.set()
    started = time.monotonic()
    with pytest.raises(picam.CameraTimeout, match="no frame from the camera for a still"):
        camera.capture_still(timeout=0.5)
    assert time.monotonic() - started < 5
    with pytest.raises(picam.CameraTimeout, match="previous still is still waiting"):
        camera.capture_still(timeout=0.5)
    cam2.stalled.clear()  # the frame comes late: the helper gives its buffer back
    wait_for(lambda: camera._still_thread is not None and not camera._still_thread.is_alive())
    assert cam2.held == 0
    assert camera.capture_still(timeout=5).jpeg[:2] == b"\xff\xd8"


STOP_HANG = """
import logging, sys, time
sys.path.insert(0, sys.argv[1])
from tests.test_picamera2_backend import FakePicamera2, Frames, stub_libcamera
logging.basicConfig(level=logging.INFO, format="%(message)s")
picam = stub_libcamera()
picam.Picamera2 = FakePicamera2
camera = picam.PiCamera(320, 240, 30, 1_000_000)
camera.start(Frames())
FakePicamera2.made[-1].hang_on_stop = True
started = time.monotonic()
camera.stop(timeout=0.5)
print(f"stop returned after {time.monotonic() - started:.1f} s", flush=True)
"""


def test_stop_is_bounded_when_picamera2_hangs_and_the_daemon_can_exit(tmp_path):
    """picamera2 joins its encoder thread with no timeout and closes the camera at exit:
    the daemon must still stop, say so, and exit (in a process of its own, to see it)."""
    root = str(Path(__file__).resolve().parent.parent)
    result = subprocess.run(
        [sys.executable, "-c", STOP_HANG, root], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "picamera2 did not stop within 0.5 s; exiting without it" in result.stderr
    assert "stop returned after" in result.stdout


def test_a_zero_records_yuv420_in_as_many_buffers_as_fit_without_a_raw_stream(picam, fake):
    from hatcam import config
    from hatcam.device.camera import open_camera

    settings = config.parse(
        {
            "HATCAM_CAMERA": "picamera2",
            "HATCAM_PI_MODEL": "Raspberry Pi Zero W Rev 1.1",
            "HATCAM_RESOLUTION": "1920x1080",
        }
    )
    open_camera(settings)
    kwargs = fake.made[-1].kwargs
    assert kwargs["main"] == {"size": (1920, 1080), "format": "YUV420"}
    assert kwargs["buffer_count"] == 6 and kwargs["raw"] is None
    pi4 = config.parse({"HATCAM_CAMERA": "picamera2", "HATCAM_PI_MODEL": "Raspberry Pi 4"})
    open_camera(pi4)
    assert fake.made[-1].kwargs.keys() == {"main", "controls", "buffer_count"}, "defaults"


def test_info_names_the_encoder_and_warns_of_a_fallback_or_a_stalling_picamera2(picam):
    from picamera2.encoders import LibavH264Encoder
    from picamera2.encoders.h264_encoder import H264Encoder as V4L2H264Encoder

    from hatcam.device.camera import backend_info

    pi4, pi5 = "Raspberry Pi 4 Model B Rev 1.4", "Raspberry Pi 5 Model B Rev 1.0"
    hardware, software = V4L2H264Encoder(), LibavH264Encoder()
    assert backend_info(pi4, "0.3.31", hardware) == {
        "backend": "picamera2",
        "picamera2": "0.3.31",
        "encoder": "hardware H.264",
    }
    fallback = backend_info(pi4, "0.3.20", software)
    assert fallback["encoder"].startswith("software H.264")
    assert "silently fell back to software H.264" in fallback["warning"]
    stall = backend_info(pi4, "0.3.22", hardware)["warning"]
    assert "older than 0.3.26" in stall and "apt install --only-upgrade python3-picamera2" in stall
    assert "warning" not in backend_info(pi5, "0.3.22", software), "a Pi 5 has no V4L2 encoder"


def test_hatcam_check_names_a_picamera2_that_can_stall_with_the_upgrade(monkeypatch, capsys):
    from hatcam import config
    from hatcam.device import check

    settings = config.parse(
        {"HATCAM_CAMERA": "picamera2", "HATCAM_PI_MODEL": "Raspberry Pi 4 Model B Rev 1.4"}
    )
    monkeypatch.setattr(check, "picamera2_version", lambda: "0.3.22")
    check.run_checks(settings)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("camera:"))
    assert line.split()[1] == "warn", line
    assert "picamera2 0.3.22 is older than 0.3.26" in line
    assert "sudo apt update && sudo apt install --only-upgrade python3-picamera2" in line
    monkeypatch.setattr(check, "picamera2_version", lambda: "0.3.31")
    check.run_checks(settings)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("camera:"))
    assert line.split()[1] == "ok" and "picamera2 0.3.31" in line
