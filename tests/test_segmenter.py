"""Segments: gap-free across boundaries, each playable alone, safe from crashes and power cuts."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime

import pytest

from hatcam.device.spool import Spool
from hatcam.segment import SegmentName

from tests.support.footage import (
    SMALL,
    decoded_frames,
    metadata,
    packets,
    record,
    start_hatcam,
    wait_until,
)
from tests.support.sdcard import SdCard

FRAME_PTS = 90_000 // SMALL["fps"]


@pytest.fixture
def card(tmp_path):
    """The spool's SD card: a power cut keeps only what was synced (see sdcard.py)."""
    with SdCard(tmp_path / "card", tmp_path / "card-process") as card:
        yield card


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


@pytest.mark.root("mounts a FUSE file system (the test SD card)")
def test_sigkill_and_power_cut_mid_segment_recover_a_playable_partial_segment(card, tmp_path):
    """The camera dies and the card loses whatever was not synced (a real power cut):
    the open segment comes back playable, short of at most about a second."""
    spool_dir = card.path
    settings = {
        "HATCAM_CAMERA": "synthetic",
        "HATCAM_SPOOL_DIR": spool_dir,
        "HATCAM_RESOLUTION": "320x240",
        "HATCAM_SEGMENT_SECONDS": "3",
        "HATCAM_MIN_FREE_MB": "1",
    }
    log = tmp_path / "camera.log"
    proc = start_hatcam("camera", settings=settings, log=log)

    def half_way():
        """Two segments closed, the open one 1.5-2.5 s old: past its first sync (1 s
        after it opened), well before it closes."""
        if len(Spool(spool_dir).ready_segments()) < 2:
            return False
        names = [SegmentName.parse(p.name) for p in (spool_dir / "recording").glob("*.ts")]
        ages = [time.time() - n.start.timestamp() for n in names if n]
        return len(ages) == 1 and 1.5 <= ages[0] <= 2.5

    wait_until(half_way, 30, "the open segment to be half way", poll=0.02)
    killed_at = time.time()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = Spool(spool_dir).ready_segments()
    written = {p.name: p.stat().st_size for p in (spool_dir / "recording").glob("*.ts")}
    card.power_cut()
    partial = list((spool_dir / "recording").glob("*.ts"))
    assert [p.name for p in partial] == list(written), "the open segment is still on the card"
    kept = partial[0].stat().st_size
    print(f"open segment: {kept} of {written[partial[0].name]} bytes written survive the cut")

    restarted = start_hatcam("camera", settings=settings, log=log)
    deadline = time.time() + 20
    while time.time() < deadline and len(Spool(spool_dir).ready_segments()) <= len(before):
        time.sleep(0.2)
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(20) == 0

    ready = {p.name: p for p in Spool(spool_dir).ready_segments()}
    assert kept > 0 and partial[0].name in ready, "the synced part of the open segment is kept"
    recovered = ready[partial[0].name]
    meta = metadata(recovered)
    assert meta["recovered"] is True
    assert decoded_frames(recovered) >= meta["frames"] - 1 > 0, "the cut segment still plays"
    end = datetime.fromisoformat(meta["end"].replace("Z", "+00:00")).timestamp()
    lost = killed_at - end
    print(f"footage lost to the kill and power cut: {lost:.2f} s")
    assert lost < 1.5, f"{lost:.2f} s of footage lost to the power cut (synced every second)"
    assert all(name in ready for name in (p.name for p in before)), "nothing queued is lost"
    assert "recovered" in log.read_text()


@pytest.mark.root("mounts a FUSE file system (the test SD card)")
def test_a_segment_the_cloud_confirmed_stays_gone_after_a_power_cut(card):
    """Removed after upload: a power cut must not bring it back (it would be sent again,
    and a live one would look appended to by someone else)."""
    spool = record(card.path, 30 * 2 + 7, segment_seconds=1.0)
    uploaded, *kept = spool.ready_segments()
    spool.remove(uploaded)

    card.power_cut()

    names = sorted(p.name for p in spool.ready.iterdir())
    assert uploaded.name not in names and uploaded.with_suffix(".json").name not in names
    assert [p.name for p in spool.ready_segments()] == [p.name for p in kept]


@pytest.mark.root("mounts a FUSE file system (the test SD card)")
def test_segments_committed_to_ready_survive_a_power_cut_whole(card):
    spool = record(card.path, 30 * 3 + 7, segment_seconds=1.0)
    on_card = {p.name: p.read_bytes() for p in spool.ready.iterdir()}
    last_seq = max(SegmentName.parse(p.name).seq for p in spool.ready_segments())

    card.power_cut()

    after = {p.name: p.read_bytes() for p in spool.ready.iterdir()}
    assert sorted(after) == sorted(on_card), "every committed segment and sidecar is there"
    for name, data in on_card.items():
        assert after[name] == data, f"{name}: {len(after[name])} of {len(data)} bytes kept"
    segments = spool.ready_segments()
    assert len(segments) == 4
    for segment in segments:
        assert decoded_frames(segment) == metadata(segment)["frames"] > 0
    assert not list(spool.recording.iterdir())
    assert spool.next_seq() > last_seq, "a sequence number is never handed out twice"
