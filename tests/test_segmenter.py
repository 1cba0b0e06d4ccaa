"""Segments: gap-free across boundaries, each playable alone, crash-safe."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime

from hatcam.naming import SegmentName
from hatcam.spool import Spool

from footage import SMALL, decoded_frames, metadata, packets, record, start_hatcam

FRAME_PTS = 90_000 // SMALL["fps"]


def test_no_frame_lost_or_doubled_at_segment_boundaries(tmp_path):
    frames = 30 * 12 + 7  # twelve 1 s segments and a short last one
    spool = record(tmp_path / "spool", frames, segment_seconds=1.0)
    segments = spool.ready_segments()
    assert len(segments) == 13
    all_pts = []
    for segment in segments:
        pkts = packets(segment)
        assert pkts[0][1], f"{segment.name} does not start with a keyframe"
        all_pts += [pts for pts, _ in pkts]
        assert metadata(segment)["frames"] == len(pkts)
    assert len(all_pts) == frames, "every frame lands in exactly one segment"
    steps = {b - a for a, b in zip(all_pts, all_pts[1:], strict=False)}
    assert steps == {FRAME_PTS}, f"PTS steps across all files: {sorted(steps)}"


def test_each_segment_plays_on_its_own(tmp_path):
    spool = record(tmp_path / "spool", 30 * 3, segment_seconds=1.0)
    for segment in spool.ready_segments():
        assert decoded_frames(segment) == metadata(segment)["frames"] == 30


def test_names_are_unique_and_ordered_when_the_clock_jumps_back(tmp_path):
    # A Pi without RTC: NTP moves the clock back by an hour between two segments.
    stamps = iter(
        [
            datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC),
            datetime(2026, 5, 1, 12, 0, 1, tzinfo=UTC),
            datetime(2026, 5, 1, 11, 0, 2, tzinfo=UTC),
            datetime(2026, 5, 1, 11, 0, 2, tzinfo=UTC),
        ]
    )
    spool = record(tmp_path / "spool", 30 * 4, segment_seconds=1.0, wall_clock=lambda: next(stamps))
    names = [SegmentName.parse(p.name) for p in spool.ready_segments()]
    assert len({n.blob_name("cam1") for n in names}) == 4, "no name collision"
    assert [n.seq for n in names] == sorted(n.seq for n in names), "queue follows capture order"
    first_pts = [metadata(p)["first_pts"] for p in spool.ready_segments()]
    assert first_pts == sorted(first_pts), "oldest first means capture order, not clock order"


def test_sigterm_closes_the_current_segment(tmp_path):
    spool_dir = tmp_path / "spool"
    settings = {
        "HATCAM_CAMERA": "synthetic",
        "HATCAM_SPOOL_DIR": spool_dir,
        "HATCAM_RESOLUTION": "320x240",
        "HATCAM_SEGMENT_SECONDS": "60",
        "HATCAM_MIN_FREE_MB": "1",
    }
    proc = start_hatcam("camera", settings=settings, log=tmp_path / "camera.log")
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    segments = Spool(spool_dir).ready_segments()
    assert len(segments) == 1 and not list((spool_dir / "recording").iterdir())
    assert decoded_frames(segments[0]) == metadata(segments[0])["frames"] >= 60


def test_sigkill_mid_segment_recovers_a_playable_partial_segment(tmp_path):
    spool_dir = tmp_path / "spool"
    settings = {
        "HATCAM_CAMERA": "synthetic",
        "HATCAM_SPOOL_DIR": spool_dir,
        "HATCAM_RESOLUTION": "320x240",
        "HATCAM_SEGMENT_SECONDS": "3",
        "HATCAM_MIN_FREE_MB": "1",
    }
    log = tmp_path / "camera.log"
    proc = start_hatcam("camera", settings=settings, log=log)
    time.sleep(7.5)  # two closed segments and one half-written
    killed_at = time.time()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = list((spool_dir / "recording").glob("*.ts"))
    assert len(partial) == 1, "the open segment is left in recording/"
    before = Spool(spool_dir).ready_segments()

    restarted = start_hatcam("camera", settings=settings, log=log)
    deadline = time.time() + 20
    while time.time() < deadline and len(Spool(spool_dir).ready_segments()) <= len(before):
        time.sleep(0.2)
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(20) == 0

    ready = {p.name: p for p in Spool(spool_dir).ready_segments()}
    recovered = ready[partial[0].name]
    meta = metadata(recovered)
    assert meta["recovered"] is True
    assert decoded_frames(recovered) >= meta["frames"] - 1 > 0, "the cut segment still plays"
    end = datetime.fromisoformat(meta["end"].replace("Z", "+00:00")).timestamp()
    lost = killed_at - end
    assert lost < 1.5, f"{lost:.2f} s of footage lost to the kill (flushed every second)"
    assert all(name in ready for name in (p.name for p in before)), "nothing queued is lost"
    assert "recovered" in log.read_text()
