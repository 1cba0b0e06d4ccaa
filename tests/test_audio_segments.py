"""Sound in the segments: every audio sample in exactly one segment, in the segment whose
picture it belongs with, carried through the records, the stitch and the proof."""

from __future__ import annotations

import av
import pytest

from hatcam.device.segmenter import Segmenter
from hatcam.device.spool import Spool
from hatcam.proof import AudioDigest
from hatcam.segment import CLOCK

from tests.support.footage import SMALL, metadata
from tests.support.sound import FORMAT, PACKET_US, aac_packets, camera_frames, feed

FRAME_TICKS = CLOCK // SMALL["fps"]
SECONDS = 6


@pytest.fixture(scope="module")
def frames():
    return camera_frames(SMALL["fps"] * SECONDS)


@pytest.fixture(scope="module")
def sound():
    return aac_packets(round(SECONDS * 1e6 / PACKET_US) + 2)


def segmenter(spool_dir, **kw) -> Segmenter:
    spool = Spool(spool_dir).ensure()
    return Segmenter(
        spool, "cam1", SMALL["width"], SMALL["height"], SMALL["fps"], 1.0, audio=FORMAT, **kw
    )


def streams(path):
    """(video pts, audio [(pts, raw unit)], decoded audio samples) of one file."""
    with av.open(str(path)) as container:
        video = [p.pts for p in container.demux(video=0) if p.pts is not None]
    with av.open(str(path)) as container:
        audio = []
        for p in container.demux(audio=0):
            if p.pts is not None and p.size:
                digest = AudioDigest()
                digest.add_adts(bytes(p))
                audio.append((p.pts, bytes(p)))
    with av.open(str(path)) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
    return video, audio, samples


def test_no_audio_sample_is_lost_or_doubled_at_segment_boundaries(tmp_path, frames, sound):
    seg = segmenter(tmp_path / "spool")
    given = feed(seg, frames, sound, lag_us=120_000)
    seg.close()
    segments = seg.spool.ready_segments()
    assert len(segments) == SECONDS
    run_start = frames[0][2]
    expected = [round((ts - run_start) * CLOCK / 1e6) for ts, _ in given]
    got = []
    for i, path in enumerate(segments):
        video, audio, samples = streams(path)
        assert audio, f"{path.name} has no audio"
        next_start = streams(segments[i + 1])[0][0] if i + 1 < len(segments) else None
        pts = [p for p, _ in audio]
        assert min(pts) >= video[0], f"{path.name}: audio before its first frame"
        if next_start is not None:
            assert max(pts) < next_start, f"{path.name}: audio of the next segment's range"
            # and nothing of this range was left for later: the next audio is past it
        assert samples == len(audio) * 1024, "every packet decodes to its 1024 samples"
        meta = metadata(path)
        assert meta["audio_packets"] == len(audio)
        assert (meta["audio_first_pts"], meta["audio_last_pts"]) == (min(pts), max(pts))
        got += pts
    # Only what fell before the first frame or after the last one's segment closed is not held.
    inside = [p for p in expected if p >= 0]
    assert got == inside[: len(got)], "every packet once, in order"
    assert len(inside) - len(got) <= 120_000 / PACKET_US + 1, "only the tail after close"
    assert seg.audio_gaps == 0
