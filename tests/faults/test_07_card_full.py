"""4. Card full: the spool on a small filesystem (a 3 MB tmpfs mounted over it inside
the guest), a 1 MB floor and a higher bit rate so it fills in seconds, uploads blocked by
a network cut. With ``pause`` the camera pauses at the floor and resumes by itself once
uploads free space, leaving one hole in the video of exactly the frames it says it did
not record; with ``drop-oldest`` the oldest unsent segments go, each logged. Neither
daemon restarts (same MainPID and NRestarts from the window's start to its end)."""

from __future__ import annotations

import re
import time

import pytest

from .conftest import SETTINGS
from .lab import NAME_RE, SPOOL

SIZE_MB, FLOOR_MB, BITRATE = 3, 1, 1_000_000
CARD = {"hatcam_min_free_mb": FLOOR_MB, "hatcam_bitrate": BITRATE}
RESUME_RE = re.compile(r"recording resumes \((\d+) frames not recorded\)")


@pytest.fixture(scope="module")
def small_card(pi, lab):
    """The spool on a 3 MB tmpfs (its sequence counter carried over and back)."""
    lab.systemctl("stop", "hatcam-camera")
    lab.wait_drained()
    lab.systemctl("stop", "hatcam-upload")
    lab.sh(
        f"""set -e
        seq=$(cat {SPOOL}/state/seq)
        mount -t tmpfs -o size={SIZE_MB}m,mode=0750,uid=$(id -u hatcam),gid=$(id -g hatcam) \\
            faults-card {SPOOL}
        install -d -o hatcam -g hatcam -m 0750 {SPOOL}/state {SPOOL}/ready {SPOOL}/recording
        echo "$seq" > {SPOOL}/state/seq
        chown hatcam:hatcam {SPOOL}/state/seq"""
    )
    try:
        yield
    finally:
        pi.restore_network()
        lab.systemctl("stop", "hatcam-camera")
        lab.wait_drained()
        lab.systemctl("stop", "hatcam-upload")
        lab.sh(
            f"""set -e
            seq=$(cat {SPOOL}/state/seq)
            umount {SPOOL}
            echo "$seq" > {SPOOL}/state/seq"""
        )
        pi.provision(
            **{
                k: SETTINGS[k]
                for k in ("hatcam_min_free_mb", "hatcam_bitrate", "hatcam_disk_policy")
            }
        )
        assert lab.active("hatcam-camera") and lab.active("hatcam-upload")


def fill(pi, lab, policy: str):
    """Provision the policy, record, cut the link so the card fills."""
    pi.provision(hatcam_disk_policy=policy, **CARD)
    assert lab.sh(f"findmnt -n -o SOURCE {SPOOL}").strip() == "faults-card"
    window = lab.window(f"card full: {policy}").open()
    lab.wait_new_blob(window.known)
    pi.cut_network()
    return window


def test_pause_pauses_and_resumes_by_itself(pi, lab, small_card):
    window = fill(pi, lab, "pause")
    try:
        lab.wait(
            lambda: lab.state("camera").get("state", "").startswith("paused"),
            90,
            "the camera to pause at the disk floor",
        )
        time.sleep(6)
        paused = lab.state("camera")
        assert paused["state"].startswith("paused"), paused
        free_paused = float(lab.sh(f"df -k --output=avail {SPOOL} | tail -1")) / 1000
    finally:
        pi.restore_network()
    back = time.time()
    lab.wait(
        lambda: lab.state("camera").get("state") == "recording",
        120,
        "the camera to resume by itself",
    )
    resumed_after = time.time() - back
    at_resume = lab.seq()
    lab.wait(lambda: lab.seq() >= at_resume + 1, 60, "a segment after the resume")
    window.close()
    window.assert_same_processes()
    final = lab.state("camera")  # written as it stopped by the process the window started
    lines = [m for _, m in lab.journal(window.t0, units=("hatcam-camera",))]
    figures = window.account(
        paused_frames=final["frames_dropped"], resumed_s_after_link_back=round(resumed_after, 1)
    )
    window.assert_complete(figures)
    paused_lines = [m for m in lines if "disk floor reached: recording paused" in m]
    not_recorded = [int(m[1]) for m in map(RESUME_RE.search, lines) if m]
    assert len(paused_lines) == len(not_recorded) == 1, f"paused/resumed: {lines}"
    # The pause is one hole in the video, of exactly the frames the camera says it did not
    # record (its count; the "resumes" line is written before the wait for a keyframe),
    # and nothing else is missing from the window's video.
    assert figures.runs == 1, f"the camera started again: {figures.breaks}"
    assert len(figures.gaps) == 1, f"holes in the video (seq a, seq b, frames): {figures.gaps}"
    hole = figures.gaps[0][2]
    assert hole == figures.frames_missing == final["frames_dropped"], (
        f"hole {hole} frames, {figures.frames_missing} missing in all, the camera says "
        f"{final['frames_dropped']} dropped"
    )
    assert final["frames_dropped"] >= not_recorded[0] > 0, (final, not_recorded)
    _, shown = lab.hatcam_status()  # what the wearer reads
    assert f"frames lost:   {final['frames_dropped']} this run" in shown, shown
    assert free_paused < FLOOR_MB + 0.6
    lab.note("card full: pause", hole_frames=round(hole), hole_s=round(hole / lab.fps, 1))


def test_drop_oldest_drops_the_oldest_unsent_each_logged(pi, lab, small_card):
    window = fill(pi, lab, "drop-oldest")
    cut = time.time()
    try:
        lab.wait(
            lambda: (
                sum(
                    "dropped oldest unsent segment" in m
                    for _, m in lab.journal(cut, units=("hatcam-camera",))
                )
                >= 3
            ),
            120,
            "three segments dropped at the floor",
        )
        assert lab.state("camera").get("state") == "recording"
    finally:
        pi.restore_network()
    lab.wait_drained()
    window.close()
    window.assert_same_processes()
    lines = [m for _, m in lab.journal(window.t0, units=("hatcam-camera",))]
    dropped_lines = [m for m in lines if "dropped oldest unsent segment" in m]
    dropped = [int(NAME_RE.search(m)[3]) for m in dropped_lines]
    figures = window.account()
    assert len(dropped) == len(set(dropped)), "a segment was dropped (logged) twice"
    landed = {s.seq for s in window.segments}
    landed_anyway = sorted(set(dropped) & landed)  # its upload was in flight when dropped
    assert sorted(figures.lost_seqs) == sorted(set(dropped) - landed), (
        f"lost {figures.lost_seqs}, dropped {dropped}"
    )
    assert figures.duplicated == 0 and not figures.bad_md5 and not figures.decode_mismatch
    assert figures.runs == 1, f"the camera started again: {figures.breaks}"
    # The oldest unsent went first: those not wholly in the cloud before the cut (a live
    # segment only partly sent counts as unsent), from the front.
    unsent = sorted(
        q
        for q in range(window.seq0 + 1, window.seq1 + 1)
        if not any(s.seq == q and s.created.timestamp() < cut for s in window.segments)
    )
    # The uploader holds the segment it is sending (the oldest, its request hanging on the
    # cut link); the disk policy leaves that one to it and drops the next oldest.
    n = len(dropped)
    assert sorted(dropped) in (unsent[:n], unsent[1 : n + 1]), (dropped, unsent)
    # Holes in the video only where segments were dropped.
    for a, b, _ in figures.gaps:
        assert set(range(a + 1, b)) <= set(dropped), (a, b, dropped)
    assert not any("disk floor reached" in m for m in lines), "drop-oldest paused"
    lab.note(
        "card full: drop-oldest", dropped_logged=len(dropped), dropped_but_landed=len(landed_anyway)
    )
