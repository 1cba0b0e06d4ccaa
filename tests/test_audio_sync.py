"""End to end, in real time: the synthetic camera (real H.264, a marked frame a second) and
the synthetic microphone (0.1 % fast, a click at each marked frame's instant) through
capture and the segmenter into 2 s segments, then stitched into one MP4. Everything is
measured from the files: marked frames and clicks found by decoding with PyAV."""

from __future__ import annotations

import time

import pytest

from hatcam.device.audio import AudioFormat
from hatcam.device.audio.capture import AudioCapture
from hatcam.device.audio.synthetic import RealClock, SyntheticMicrophone
from hatcam.device.camera.synthetic import SyntheticCamera
from hatcam.device.segmenter import Segmenter
from hatcam.device.spool import Spool
from hatcam.fetch import stitch

from tests.support.footage import planned
from tests.support.sync import audio_run, boundary_errors, clicks, marked_frames, offsets

FPS = 30
FRAME_S = 1 / FPS
SECONDS = 16
FORMAT = AudioFormat(48000, 1, 64000)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """16 s of sound and picture in 2 s segments, and their stitched MP4."""
    root = tmp_path_factory.mktemp("sync")
    spool = Spool(root / "spool").ensure()
    segmenter = Segmenter(spool, "cam1", 640, 360, FPS, 2.0, audio=FORMAT)
    camera = SyntheticCamera(640, 360, FPS, 1_000_000, realtime=True)
    mic = SyntheticMicrophone(48000, 1, RealClock(), camera.scene, rate_error=0.001)
    capture = AudioCapture(mic, FORMAT, segmenter, camera.clock_us)
    camera.start(segmenter)
    capture.start()
    time.sleep(SECONDS)
    assert capture.stop()
    camera.stop()
    segmenter.close()
    assert capture.failed is None and camera.failed is None
    segments = spool.ready_segments()
    found = planned(spool, "cam1")
    runs, splits = stitch.plan(found, max_gap=10.0)
    assert len(runs) == 1 and not splits
    mp4 = root / "out.mp4"
    stitch.write(runs[0], mp4, reread=True)
    return segments, mp4, runs[0], segmenter


def within_sound(marks: list[float], runs) -> list[float]:
    """The marks while the microphone was recording: capture starts after the camera's
    first frame and stops before its last, so the first mark and the last may be silent."""
    start, end = runs[0].start, runs[-1].next_start
    return [m for m in marks if start + 0.05 <= m <= end - 0.05]


def test_each_click_in_the_segments_is_within_a_frame_of_its_marked_frame(recorded, tmp_path):
    """The segments played one after the other, as a player plays them live (HLS): one
    decoder across the boundaries (alone, a file's first AAC frame decodes faded in, and a
    click right at a boundary would be missed)."""
    segments, _, _, _ = recorded
    assert len(segments) >= SECONDS // 2 - 1
    played = tmp_path / "played.ts"
    played.write_bytes(b"".join(path.read_bytes() for path in segments))
    marks = [t for path in segments for t in marked_frames(path)]
    heard = clicks(played)
    measured = offsets(marks, heard)
    print(
        f"\nsegments: {len(marks)} marked frames, {len(heard)} clicks, offset "
        f"{min(measured) * 1000:+.1f} .. {max(measured) * 1000:+.1f} ms"
    )
    assert len(marks) >= SECONDS - 2
    heard_marks = within_sound(marks, [r for r in map(audio_run, segments) if r])
    assert len(offsets(heard_marks, heard)) == len(heard_marks) >= SECONDS - 3
    assert len(heard) == len(measured)  # no click twice (doubled samples), none unpaired
    assert max(map(abs, measured)) <= FRAME_S


def test_no_audio_sample_is_lost_or_doubled_between_segments(recorded):
    segments, _, _, segmenter = recorded
    runs = [audio_run(path) for path in segments]
    # Capture stops before the camera: the last segment may hold the picture's tail alone.
    if runs[-1] is None:
        runs.pop()
    assert all(runs), "every segment has sound"
    errors = boundary_errors(runs)
    print(f"\nboundaries: {len(errors)}, samples lost/doubled: {errors}")
    assert len(errors) >= SECONDS // 2 - 2
    assert errors == [0] * len(errors)
    assert runs[0].start < 0.1  # sound from the start (capture opens after the camera)
    assert segmenter.audio_gaps == 0


def test_the_stitched_mp4_keeps_sound_and_picture_within_a_frame(recorded):
    segments, mp4, run, _ = recorded
    marks, heard = marked_frames(mp4), clicks(mp4)
    measured = offsets(marks, heard)
    print(
        f"\nstitched MP4: {len(marks)} marked frames, {len(heard)} clicks, offset "
        f"{min(measured) * 1000:+.1f} .. {max(measured) * 1000:+.1f} ms"
    )
    heard_marks = within_sound(marks, [audio_run(mp4)])
    assert len(marks) >= SECONDS - 2
    assert len(offsets(heard_marks, heard)) == len(heard_marks) >= SECONDS - 3
    assert len(heard) == len(measured)
    assert max(map(abs, measured)) <= FRAME_S
    in_segments = sum(r.samples for r in map(audio_run, segments) if r)
    assert audio_run(mp4).samples == in_segments
    assert run.audio_gaps == []
