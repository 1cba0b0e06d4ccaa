"""A card that stalls must not cost the camera frames: the writer is off the encoder thread.

The synthetic camera runs in real time with picamera2's pool of 6 buffers; the spool is
on the test SD card, which holds up one write or sync on demand. What was recorded is
read back from the files: every frame's counter (drawn into its picture by the camera)
and its PTS, each segment decoded alone.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import av
import pytest

from hatcam.device.camera.synthetic import SyntheticCamera
from hatcam.device.segmenter import QUEUE_SECONDS, Segmenter
from hatcam.device.spool import Spool

from tests.support.sdcard import SdCard

on_the_card = pytest.mark.root("mounts a FUSE file system (the test SD card)")

W, H, FPS = 320, 240, 30
FRAME_PTS = 90_000 // FPS
QUEUE_FULL = "frames dropped (write queue full"


@pytest.fixture
def card(tmp_path):
    with SdCard(tmp_path / "card", tmp_path / "card-process") as card:
        yield card


def record_through_a_stall(card, what, seconds, queue_seconds=QUEUE_SECONDS):
    """Real-time recording onto the card; after 2.5 s the card holds up the next
    ``what`` by ``seconds``; recording goes on 3 s past the stall."""
    spool = Spool(card.path).ensure()
    segmenter = Segmenter(spool, "cam1", W, H, FPS, 2.0, queue_seconds=queue_seconds)
    camera = SyntheticCamera(W, H, FPS, 300_000, realtime=True)
    camera.start(segmenter)
    time.sleep(2.5)
    card.stall(what, seconds, count=1)
    time.sleep(seconds + 3.0)
    camera.stop()
    segmenter.close()
    assert camera.failed is None and segmenter.failed is None
    assert card.stats()[f"stalled_{what}s"] == 1, "the card held up the writer once"
    return spool, camera, segmenter


def counter(frame: av.VideoFrame) -> int:
    """The synthetic camera's frame counter, drawn as a column of 16 bits."""
    plane = frame.planes[0]
    luma, stride = bytes(plane), plane.line_size
    return sum((luma[(11 + bit * 8) * stride + 11] > 128) << bit for bit in range(16))


def recorded(spool: Spool) -> list[tuple[int, int, bool]]:
    """(counter, pts, keyframe) of every frame in the segments, each decoded alone."""
    found = []
    for segment in spool.ready_segments():
        with av.open(str(segment)) as container:
            keys = {p.pts: p.is_keyframe for p in container.demux(video=0) if p.pts is not None}
        with av.open(str(segment)) as container:
            frames = [(counter(f), f.pts, keys[f.pts]) for f in container.decode(video=0)]
        assert len(frames) == len(keys), f"{segment.name}: every frame decodes"
        assert frames[0][2], f"{segment.name} starts with a keyframe"
        found += frames
    return found


def holes(frames) -> list[tuple[int, int, int]]:
    """(frames missing, PTS step in frames, index after the hole) for each hole."""
    found = []
    for i, (before, after) in enumerate(zip(frames, frames[1:], strict=False), start=1):
        missing = after[0] - before[0] - 1
        if missing:
            found.append((missing, (after[1] - before[1]) / FRAME_PTS, i))
    return found


@on_the_card
@pytest.mark.parametrize("what", ["write", "sync"])
def test_a_card_stalled_half_a_second_costs_no_frame(card, what):
    spool, camera, segmenter = record_through_a_stall(card, what, 0.5)

    frames = recorded(spool)
    assert [c for c, _, _ in frames] == list(range(len(frames))), holes(frames)
    steps = {b[1] - a[1] for a, b in zip(frames, frames[1:], strict=False)}
    assert steps == {FRAME_PTS}, f"PTS steps: {sorted(steps)}"
    assert len(frames) >= 5.5 * FPS * 0.9, f"only {len(frames)} frames in 6 s"
    assert camera.frames_dropped == 0 and segmenter.frames_dropped == 0


@on_the_card
def test_a_stall_longer_than_the_queue_drops_frames_counted_logged_and_seen_as_a_hole(card, caplog):
    caplog.set_level(logging.WARNING, logger="hatcam.segmenter")
    spool, camera, segmenter = record_through_a_stall(card, "sync", QUEUE_SECONDS + 3)

    frames = recorded(spool)
    found = holes(frames)
    assert len(found) == 1, f"one hole, where the card stalled: {found}"
    missing, pts_step, after = found[0]
    print(f"{missing} frames dropped by the queue in a {QUEUE_SECONDS + 3:g} s stall")
    assert missing == segmenter.frames_dropped > 0
    assert pts_step == missing + 1, "timestamps go on through the hole"
    assert frames[after][2], "the video resumes at a keyframe (a P-frame would not decode)"
    # The camera lost nothing: the frames were dropped by the queue, and said so.
    assert camera.frames_dropped == 0
    lines = [r.getMessage() for r in caplog.records if QUEUE_FULL in r.getMessage()]
    assert lines == [
        f"the card was slower than the camera: {missing} frames dropped "
        f"(write queue full, it holds {QUEUE_SECONDS:g} s)"
    ]


@on_the_card
def test_the_old_inline_writer_loses_frames_in_the_cameras_buffer_pool_on_the_same_stall(card):
    """The baseline (the write on the encoder thread, as before the queue): six camera
    buffers hold 0.2 s at 30 fps, so a 0.5 s stall costs frames. This is what makes the
    camera faithful, and the queue necessary."""
    spool, camera, segmenter = record_through_a_stall(card, "sync", 0.5, queue_seconds=0)

    frames = recorded(spool)
    found = holes(frames)
    lost = sum(missing for missing, _, _ in found)
    print(f"the inline writer lost {lost} frames in {len(found)} hole(s) to a 0.5 s stall")
    assert lost == camera.frames_dropped > 0, f"holes {found}, camera lost {camera.frames_dropped}"
    assert all(step == missing + 1 for missing, step, _ in found), "timestamps skip the lost"
    assert segmenter.frames_dropped == 0, "the segmenter wrote all it was given"
    assert segmenter.camera_skipped == lost, "the gaps in the camera's timestamps are counted"


class Frames:
    """An output that only notes when each frame came."""

    def __init__(self):
        self.times: list[float] = []

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        self.times.append(time.monotonic())


def test_sigusr1_stalls_the_synthetic_camera_without_an_exception_as_picamera2_hangs():
    camera = SyntheticCamera(W, H, FPS, 300_000, realtime=True)
    output = Frames()
    camera.start(output)
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGUSR1)
    stalled_at = time.monotonic()
    time.sleep(2.0)
    late = [t for t in output.times if t > stalled_at + 0.5]
    assert len(output.times) >= 15 and not late, f"{len(late)} frames came after the stall"
    assert camera.failed is None, "a hung camera raises nothing"
    assert camera.frames_dropped >= FPS, "the sensor's frames find no free buffer"
    camera.stop()


def test_a_writer_that_fails_says_so_and_the_camera_goes_on(tmp_path, caplog):
    def room():
        raise RuntimeError("statvfs exploded")

    segmenter = Segmenter(Spool(tmp_path / "spool").ensure(), "cam1", W, H, FPS, 1.0, room=room)
    camera = SyntheticCamera(W, H, FPS, 300_000, realtime=False, frames=3 * FPS)
    camera.start(segmenter)
    assert camera.wait(60), "a dead writer never holds up the camera"
    segmenter.close()
    assert camera.failed is None
    assert isinstance(segmenter.failed, RuntimeError)
    assert "the segment writer failed: statvfs exploded" in caplog.text
