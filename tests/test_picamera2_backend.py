"""The picamera2 backend against the real picamera2 package (libcamera itself is Pi-only).

picamera2 installs from PyPI off the Pi, but its libcamera bindings exist only in
Pi OS; they are stubbed so picamera2's own Output and Encoder classes can carry
real H.264 into our segmenter, exactly as on the device.
"""

from __future__ import annotations

import sys
import types

import pytest

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


@pytest.fixture(scope="module")
def picam():
    for name in ("libcamera", "pykms", "kms"):
        sys.modules.setdefault(name, _StubModule(name))
    from hatcam.device.camera import picam

    return picam


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
