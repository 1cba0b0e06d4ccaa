"""stitch.py on real segments from the device pipeline, without the blob store."""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path

import pytest
from test_fetch import FPS, SEG, T0, decode

from hatcam.device.camera.synthetic import SyntheticCamera
from hatcam.device.segmenter import Segmenter
from hatcam.device.spool import Spool
from hatcam.fetch import stitch
from hatcam.segment import probe


def segments(spool_dir: Path, start, frames: int, size=(320, 240)) -> list[stitch.Segment]:
    counter = itertools.count()
    spool = Spool(spool_dir).ensure()
    segmenter = Segmenter(
        spool, "dev1", *size, FPS, SEG,
        wall_clock=lambda: start + timedelta(seconds=SEG * next(counter)),
    )  # fmt: skip
    camera = SyntheticCamera(*size, FPS, 300_000, realtime=False, frames=frames)
    camera.start(segmenter)
    assert camera.wait(60)
    segmenter.close()
    found = []
    for path in spool.ready_segments():
        meta = spool.read_metadata(path)
        name = f"dev1/{meta['start'][:10]}/{path.name}"
        contents = probe(path)
        start_time = T0.fromisoformat(meta["start"])
        boot, seq = path.stem.split("-")[1], int(path.stem.split("-")[2])
        found.append(
            stitch.Segment.from_contents(
                name, path, "dev1", start_time, contents, boot=boot, seq=seq
            )
        )
    return found


def test_a_resolution_change_starts_a_new_file_even_without_a_gap(tmp_path):
    first = segments(tmp_path / "a", T0, 4 * 60)
    second = segments(tmp_path / "b", T0 + timedelta(seconds=8), 2 * 60, size=(640, 360))
    runs, splits = stitch.plan(first + second, stitch.default_max_gap(first + second))
    assert [len(r.items) for r in runs] == [4, 2]
    for run in runs:
        stitch.write(run, tmp_path / run.filename)
    assert decode(tmp_path / runs[0].filename)[0] == 240
    assert decode(tmp_path / runs[1].filename)[0] == 120
    assert splits[0].new_file and splits[0].seconds == pytest.approx(0, abs=0.01)


def test_a_segment_that_lost_frames_after_planning_is_refused_not_stitched(tmp_path):
    found = segments(tmp_path / "a", T0, 3 * 60)
    [run], _ = stitch.plan(found, stitch.default_max_gap(found))
    middle = found[1].path
    middle.write_bytes(middle.read_bytes()[: middle.stat().st_size // 2])  # torn copy
    target = tmp_path / run.filename
    with pytest.raises(ValueError, match=f"{found[1].name}: holds .* frames, not 60"):
        stitch.write(run, target)
    assert not target.exists()
    assert not list(tmp_path.glob(".*.part"))
