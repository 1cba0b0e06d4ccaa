"""A full card: the floor policy works and the camera daemon keeps running."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import pytest

from hatcam.device.spool import Spool

from tests.support.footage import start_hatcam, wait_until

pytestmark = pytest.mark.root("mounting a small tmpfs needs root")


@pytest.fixture
def small_card(tmp_path):
    """The spool on a 12 MB filesystem, like a nearly full SD card."""
    mount = tmp_path / "card"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def camera_settings(spool_dir, policy):
    return {
        "HATCAM_CAMERA": "synthetic",
        "HATCAM_SYNTHETIC_PACE": "fast",
        "HATCAM_SPOOL_DIR": spool_dir,
        "HATCAM_RESOLUTION": "320x240",
        "HATCAM_BITRATE": "2000000",
        "HATCAM_SEGMENT_SECONDS": "1",
        "HATCAM_MIN_FREE_MB": "6",
        "HATCAM_DISK_POLICY": policy,
    }


def camera_state(spool_dir):
    try:
        return json.loads((spool_dir / "state" / "camera.json").read_text())["state"]
    except (OSError, ValueError, KeyError):
        return None


def test_pause_stops_at_the_floor_and_resumes_when_uploads_free_space(small_card, tmp_path):
    spool_dir = small_card / "spool"
    spool = Spool(spool_dir)
    log = tmp_path / "camera.log"
    proc = start_hatcam("camera", settings=camera_settings(spool_dir, "pause"), log=log)
    try:
        wait_until(
            lambda: camera_state(spool_dir) == "paused (disk floor reached)",
            60,
            "the camera to pause at the floor",
        )
        queued = [p.name for p in spool.ready_segments()]
        time.sleep(3)
        assert [p.name for p in spool.ready_segments()] == queued, "nothing dropped or added"
        assert shutil.disk_usage(small_card).free / 1e6 >= 5, "the floor holds"
        # The uploader sends the oldest half: space comes back, recording resumes by itself.
        for segment in spool.ready_segments()[: len(queued) // 2 + 1]:
            spool.remove(segment)
        wait_until(
            lambda: any(p.name not in queued for p in spool.ready_segments()),
            30,
            "recording to resume",
        )
        assert proc.poll() is None, "the daemon never exits for a full card"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    text = log.read_text()
    assert "recording paused until space is freed" in text and "recording resumes" in text


def test_drop_oldest_keeps_recording_and_logs_each_drop(small_card, tmp_path):
    spool_dir = small_card / "spool"
    spool = Spool(spool_dir)
    log = tmp_path / "camera.log"
    proc = start_hatcam("camera", settings=camera_settings(spool_dir, "drop-oldest"), log=log)
    try:
        wait_until(
            lambda: log.read_text().count("dropped oldest unsent segment") >= 3, 60, "three drops"
        )
        seqs_before = [int(p.stem.rsplit("-", 1)[1]) for p in spool.ready_segments()]
        time.sleep(2)
        seqs_after = [int(p.stem.rsplit("-", 1)[1]) for p in spool.ready_segments()]
        assert max(seqs_after) > max(seqs_before), "still recording"
        assert proc.poll() is None
        assert camera_state(spool_dir) == "recording"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    dropped = [
        line.split("segment ")[1].split(" ")[0]
        for line in log.read_text().splitlines()
        if "dropped oldest unsent segment" in line
    ]
    remaining = {p.name for p in spool.ready_segments()}
    assert not remaining & set(dropped), "what was dropped is gone, each drop was logged"
    assert min(int(n.rsplit("-", 1)[1].split(".")[0]) for n in remaining) > max(
        int(n.rsplit("-", 1)[1].split(".")[0]) for n in dropped[:1]
    ), "the oldest go first"


def test_a_card_filled_by_something_else_never_crashes_the_camera(small_card, tmp_path):
    # No floor at all, and another program takes half the card: writes hit ENOSPC.
    filler = small_card / "filler"
    filler.write_bytes(b"\0" * 6_000_000)
    spool_dir = small_card / "spool"
    spool = Spool(spool_dir)
    log = tmp_path / "camera.log"
    settings = {**camera_settings(spool_dir, "pause"), "HATCAM_MIN_FREE_MB": "0"}
    proc = start_hatcam("camera", settings=settings, log=log)
    try:
        wait_until(lambda: "closing it early" in log.read_text(), 60, "a write to fail")
        time.sleep(2)
        assert proc.poll() is None, "the camera daemon keeps running on a full card"
        filler.unlink()  # space comes back
        wait_until(lambda: "recording again" in log.read_text(), 30, "recording to go on")
        salvaged = [p for p in spool.ready_segments() if spool.read_metadata(p).get("recovered")]
        assert salvaged, "the segment cut short by the full card is kept and queued"
        before = {p.name for p in spool.ready_segments()}
        wait_until(lambda: {p.name for p in spool.ready_segments()} - before, 30, "new segments")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    text = log.read_text()
    assert "Traceback" not in text
    assert text.count("cannot start a segment") <= 1, "one line when it starts failing"
