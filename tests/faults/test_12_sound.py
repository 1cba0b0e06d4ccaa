"""12. Sound on the provisioned Pi: the camera daemon as the role installs it, on Pi OS
Bookworm's own python3-av (PyAV 10, what a real Pi runs: older than the host's), with the
synthetic microphone (HATCAM_AUDIO_DEVICE=synthetic: no sound card here).

The segments that land in the cloud carry AAC; stitched on the laptop into one MP4, every
click is within one frame (30 fps) of its marked frame, no audio sample is lost or doubled
between the segments, and `hatcam status` says the sound is recording. Then the setting
is taken out again and the camera left stopped, as every case leaves it.
"""

from __future__ import annotations

import time

import pytest

from hatcam.fetch import stitch
from hatcam.segment import SegmentName, probe

from .lab import ENV_FILE
from tests.support.sync import audio_run, boundary_errors, clicks, marked_frames, offsets

SECONDS = 16  # of recording with sound: 4 segments of 4 s
FRAME_30 = 1 / 30


@pytest.fixture
def sound_on(lab):
    lab.sh(f"printf 'HATCAM_AUDIO=on\\nHATCAM_AUDIO_DEVICE=synthetic\\n' >> {ENV_FILE}")
    yield
    lab.systemctl("stop", "hatcam-camera")
    lab.sh(f"sed -i '/^HATCAM_AUDIO/d' {ENV_FILE}")


def test_segments_from_the_pi_carry_sound_in_sync_with_the_picture(lab, sound_on, tmp_path):
    window = lab.window("12 sound (synthetic microphone)").open()
    time.sleep(SECONDS + lab.segment_seconds)
    status, human = lab.hatcam_status()
    window.close()
    figures = window.account()
    window.assert_complete(figures)  # nothing lost or twice, every frame decodes
    window.assert_one_run(figures)
    new = sorted(window.segments, key=lambda s: s.seq)
    assert len(new) >= SECONDS // lab.segment_seconds, [s.name for s in new]
    client = lab.pi.container()
    paths = []
    for seg in new:
        path = tmp_path / seg.name.rsplit("/", 1)[-1]
        path.write_bytes(client.download_blob(seg.name, 0, seg.length).readall())
        paths.append(path)
    runs = [audio_run(path) for path in paths]
    # Capture opens after the camera's first frame and closes before its last: the first
    # and the last segment may hold a little picture alone, every one between has sound.
    middle = runs[1:-1]
    assert middle and all(middle), f"segments without sound: {runs}"
    heard = [r for r in runs if r]
    assert boundary_errors(heard) == [0] * (len(heard) - 1)

    segments = [
        stitch.Segment.from_contents(
            path.name,
            path,
            lab.pi.device,
            SegmentName.parse(path.name).start,
            probe(path),
            boot=seg.boot,
            seq=seg.seq,
        )
        for path, seg in zip(paths, new, strict=True)
    ]
    planned, _ = stitch.plan(segments, max_gap=10.0)
    assert len(planned) == 1
    mp4 = tmp_path / "sound.mp4"
    stitch.write(planned[0], mp4, reread=True)
    marks, found = marked_frames(mp4), clicks(mp4)
    measured = offsets(marks, found)
    worst = max(map(abs, measured))
    figures.notes.update(
        clicks=len(found), marked_frames=len(marks), offset_ms_worst=round(worst * 1000, 1)
    )
    lab.record(figures)
    assert len(measured) == len(found) >= SECONDS - 3  # each click paired, none twice
    assert worst <= FRAME_30
    assert audio_run(mp4).samples == sum(r.samples for r in heard)
    assert planned[0].audio_gaps == []
    sound = (status.get("camera") or {}).get("audio") or {}
    assert sound.get("state") == "recording" and sound.get("gaps") == 0, sound
    assert "sound:         recording (synthetic" in human, human
