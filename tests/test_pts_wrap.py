"""A run longer than 26.5 hours: MPEG-TS PTS are 33 bits at 90 kHz and wrap at 2**33.

Nobody waits a day here: real H.264 from the synthetic camera goes through the real
segmenter with its capture timestamps moved, the first second at the run's start and
the rest a few seconds (or a minute) before the wrap, so the following segments cross
it. FFmpeg's demuxer guesses at the wrap from each file's first PTS alone: a file that
starts within 60 s of it comes back with negative PTS, one that starts earlier with
PTS past 2**33, and the next file starts again near 0. Both kinds are made here.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import av
import pytest
from test_fetch import FPS, T0, H, W, decode
from test_fetch_live import (
    TS,
    append,
    device_pictures,
    fetch,
    frame_offsets,
    open_live,
    pictures,
    segments,
    send_finished,
    upload_whole,
)

from hatcam.device.camera.synthetic import SyntheticCamera
from hatcam.device.segmenter import Segmenter, recover, salvage
from hatcam.device.spool import Spool
from hatcam.fetch import stitch
from hatcam.segment import CLOCK, WRAP, SegmentRecord, probe

from tests.support.footage import planned

FRAME = CLOCK // FPS  # one frame, in 90 kHz ticks
WRAP_US = WRAP * 1_000_000 / CLOCK  # the wrap, in microseconds of capture time
START_US = 10**9  # the camera's monotonic clock at the run's first frame


class AcrossTheWrap:
    """Between the synthetic camera and the segmenter: frame ``FPS`` on (after one
    second) is captured ``lead`` seconds before the wrap. From the wrap on, the wall
    clock that names the segments is ``clock_jump`` seconds ahead of the capture clock
    (an NTP correction), so placing by the wall clock instead shows in the MP4."""

    def __init__(self, lead: float, clock_jump: float = 0.0):
        self.jump_us = round(WRAP_US - lead * 1_000_000) - 1_000_000
        self.clock_jump = clock_jump
        self.segmenter: Segmenter | None = None
        self.first: int | None = None
        self.index = 0
        self.now_us = 0  # capture time of the frame being written, from the run's start

    def wall_clock(self):
        jump = self.clock_jump if self.now_us >= WRAP_US else 0.0
        return T0 + timedelta(microseconds=self.now_us, seconds=jump)

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        self.first = timestamp if self.first is None else self.first
        self.now_us = timestamp - self.first + (self.jump_us if self.index >= FPS else 0)
        self.index += 1
        self.segmenter.outputframe(frame, keyframe, START_US + self.now_us)


def record_across_wrap(
    spool_dir: Path, lead: float, after: float, seg: float, clock_jump: float = 0.0
) -> Spool:
    """One run: a second at its start, then from ``lead`` s before the wrap to ``after``
    s past it, in segments of ``seg`` seconds."""
    spool = Spool(spool_dir).ensure()
    timing = AcrossTheWrap(lead, clock_jump)
    timing.segmenter = Segmenter(spool, "dev1", W, H, FPS, seg, wall_clock=timing.wall_clock)
    frames = FPS + round((lead + after) * FPS)
    camera = SyntheticCamera(W, H, FPS, 300_000, realtime=False, frames=frames)
    camera.start(timing)
    assert camera.wait(120), "synthetic camera did not finish"
    timing.segmenter.close()
    assert camera.failed is None
    return spool


def records(spool: Spool) -> list[tuple[Path, dict]]:
    """Every segment in ready/ with its sidecar, as the device wrote it on the card."""
    return [(p, json.loads(p.with_suffix(".json").read_text())) for p in spool.ready_segments()]


def file_pts(path: Path) -> list[int]:
    """The PTS the file holds, on the 33-bit clock (FFmpeg's own wrap guess undone)."""
    with av.open(str(path), format="mpegts") as container:
        return [p.pts % WRAP for p in container.demux(video=0) if p.size and p.pts is not None]


def decoded(path: Path) -> int:
    with av.open(str(path), format="mpegts") as container:
        return sum(1 for _ in container.decode(video=0))


def assert_continuous(mp4: Path, frames: int) -> None:
    """Every frame there, one frame apart: no hold, no jump, no reordering at the wrap."""
    count, duration, times = decode(mp4)
    assert count == frames, f"{mp4.name}: {count} frames, expected {frames}"
    steps = [round((b - a) * FPS, 3) for a, b in zip(times, times[1:], strict=False)]
    odd = [(i, s) for i, s in enumerate(steps) if s != 1.0]
    assert not odd, f"{mp4.name}: frame steps other than 1/{FPS} s (frame, frames): {odd[:5]}"
    assert duration == pytest.approx(frames / FPS, abs=1 / FPS)


# Each kind of file FFmpeg reads differently near the wrap: (lead, after, segment length).
SHORT = (5.0, 4.0, 2.0)  # 2 s segments starting within 60 s of the wrap: negative PTS
LONG = (75.0, 20.0, 80.0)  # the crossing segment starts 75 s before: PTS past 2**33


@pytest.fixture(scope="module", params=[SHORT, LONG], ids=["negative", "past-2**33"])
def footage(request, tmp_path_factory) -> Spool:
    """A run across the wrap; the wall clock is corrected by 3 s there, so a segment placed
    by the wall clock rather than the capture clock shows as a 3 s hold."""
    return record_across_wrap(tmp_path_factory.mktemp("wrap"), *request.param, clock_jump=3.0)


# --- the device's records and files -------------------------------------------------------


def test_the_device_records_keep_counting_past_the_wrap_and_files_hold_it_modulo_2_33(footage):
    found = records(footage)
    pts = [(meta["first_pts"], meta["last_pts"]) for _, meta in found]
    flat = [value for pair in pts for value in pair]
    assert flat == sorted(flat) and len(set(flat)) == len(flat), f"not monotonic: {pts}"
    assert flat[-1] > WRAP, "the run never went past the wrap"
    crossing = [p for p, (first, last) in zip(found, pts, strict=True) if first < WRAP < last]
    assert len(crossing) == 1, "no segment crosses the wrap"
    for path, meta in found:
        # The muxer writes the 33-bit clock: the device's count modulo 2**33, frame by frame.
        held = file_pts(path)
        assert held[0] == meta["first_pts"] % WRAP and held[-1] == meta["last_pts"] % WRAP
        assert len(held) == meta["frames"] == decoded(path)
        span = SegmentRecord.from_sidecar(meta).end - SegmentRecord.from_sidecar(meta).start
        assert span.total_seconds() == pytest.approx(meta["frames"] / FPS, abs=1e-3)


def test_probe_reads_each_segment_near_the_wrap_with_its_true_frames_and_span(footage):
    for path, meta in records(footage):
        contents = probe(path)
        assert contents.frames == meta["frames"] == decoded(path), path.name
        # The span, never negative: last minus first is every frame's interval.
        assert contents.last_pts - contents.first_pts == (meta["frames"] - 1) * FRAME, path.name
        # The file's own count: the device's modulo 2**33, not FFmpeg's guess at the wrap.
        assert 0 <= contents.first_pts < WRAP, f"{path.name}: first PTS {contents.first_pts}"
        assert contents.first_pts == meta["first_pts"] % WRAP, path.name
    for path, meta in records(footage):
        # Told the device's count, it reads on the device's count.
        near = probe(path, near=meta["first_pts"])
        assert (near.first_pts, near.last_pts) == (meta["first_pts"], meta["last_pts"])


# --- stitching -------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["crossing", "after"])
def test_a_segment_recovered_after_a_crash_near_the_wrap_is_stitched_in_its_place(
    footage, tmp_path, which
):
    spool = Spool(tmp_path / "spool").ensure()
    for path, _ in records(footage):
        shutil.copy(path, spool.ready / path.name)
        shutil.copy(path.with_suffix(".json"), spool.ready / f"{path.stem}.json")
    found = records(spool)
    [index] = [i for i, (_, m) in enumerate(found) if m["first_pts"] < WRAP < m["last_pts"]]
    index += which == "after"
    crashed, meta = found[index]
    # The camera died while writing this segment: what reached the card is cut in the
    # middle (past the wrap), and it has no record.
    offsets = frame_offsets(crashed)
    held = file_pts(crashed)
    past = [i for i, pts in enumerate(held) if pts < held[0]] if which == "crossing" else held
    keep = len(held) - len(past) + len(past) // 2  # frames before this one are whole
    torn = spool.recording / crashed.name
    torn.write_bytes(crashed.read_bytes()[: offsets[keep] // TS * TS + 100])
    crashed.unlink()
    crashed.with_suffix(".json").unlink()

    recover(spool, "dev1", FPS)

    rec = SegmentRecord.from_sidecar(json.loads((spool.ready / f"{torn.stem}.json").read_text()))
    assert rec.recovered
    assert rec.contents.frames == decoded(spool.ready / torn.name) == keep
    assert rec.duration == pytest.approx(keep / FPS, abs=1e-3)
    lost = meta["frames"] - keep if index + 1 < len(found) else 0  # a hole, if not at the end

    runs, splits = stitch.plan(planned(spool, "dev1"), max_gap=10.0)

    # The 26.5 h the capture clock skipped after the first second splits the file once.
    assert len(runs) == 2 and len(splits) == 1, [(g.seconds, g.new_file) for g in splits]
    run = runs[1]
    assert [p.segment.name for p in run.items] == [p.name for p, _ in found[1:]]
    # The frames the crash took are the one gap, of their true length.
    assert [round(g.seconds, 3) for g in run.gaps] == ([round(lost / FPS, 3)] if lost else [])
    stitch.write(run, tmp_path / run.filename)
    count, duration, times = decode(tmp_path / run.filename)
    frames = sum(p.segment.frames for p in run.items)
    assert count == frames
    assert duration == pytest.approx((frames + lost) / FPS, abs=1 / FPS)
    steps = sorted({round((b - a) * FPS, 3) for a, b in zip(times, times[1:], strict=False)})
    assert steps == ([1.0, lost + 1.0] if lost else [1.0]), f"frame steps in frames: {steps}"


def test_a_segment_closed_early_past_the_wrap_keeps_the_device_count_in_its_record(
    footage, tmp_path
):
    spool = Spool(tmp_path / "spool").ensure()
    found = records(footage)
    [(path, meta)] = [(p, m) for p, m in found if m["first_pts"] < WRAP < m["last_pts"]]
    # The card refused a write past the wrap: the camera salvages what the file holds,
    # knowing the segment's first PTS on its own count.
    torn = spool.recording / path.name
    torn.write_bytes(path.read_bytes()[: path.stat().st_size // 2 // TS * TS])

    salvage(spool, "dev1", FPS, torn, "closed early", meta["first_pts"])

    rec = json.loads((spool.ready / f"{path.stem}.json").read_text())
    assert rec["recovered"] and rec["first_pts"] == meta["first_pts"]
    assert meta["first_pts"] < rec["last_pts"] <= meta["last_pts"]
    assert rec["last_pts"] - rec["first_pts"] == (rec["frames"] - 1) * FRAME


def test_gaps_near_the_wrap_are_reported_and_a_restart_is_not_read_as_a_wrap(tmp_path):
    spool = record_across_wrap(tmp_path / "spool", *SHORT)
    found = records(spool)
    [index] = [i for i, (_, m) in enumerate(found) if m["first_pts"] < WRAP < m["last_pts"]]
    # The segment after the crossing one never arrived.
    missing, missing_meta = found[index + 1]
    missing.unlink()
    missing.with_suffix(".json").unlink()
    segments_ = planned(spool, "dev1")
    # The daemon restarted 5 s after the last segment: a new run, PTS from 0 again.
    last = segments_[-1]
    restart = Spool(tmp_path / "restart").ensure()
    at = last.end + timedelta(seconds=5)
    again = Segmenter(restart, "dev1", W, H, FPS, 2.0, wall_clock=lambda: at)
    camera = SyntheticCamera(W, H, FPS, 300_000, realtime=False, frames=2 * FPS)
    camera.start(again)
    assert camera.wait(60)
    again.close()
    [(path, meta)] = records(restart)
    stamp, boot, _ = path.stem.split("-")
    renamed = path.with_name(f"{stamp}-{boot}-{last.seq + 1:06d}.ts")
    path.rename(renamed)
    path.with_suffix(".json").rename(renamed.with_suffix(".json"))
    rec = SegmentRecord.from_sidecar(meta)
    segments_.append(
        stitch.Segment.from_contents(
            renamed.name, renamed, "dev1", rec.start, rec.contents, boot=last.boot, seq=last.seq + 1
        )
    )

    runs, splits = stitch.plan(segments_, max_gap=30.0)

    # The first second, then the rest: one new file, at the 26.5 h the capture clock skipped.
    splits_s = [round(g.seconds, 1) for g in splits]
    assert len(runs) == 2 and len(splits) == 1, f"new files at gaps of {splits_s} s"
    run = runs[1]
    # The missing segment: its true length, counted, right after the wrap.
    first_gap, restart_gap = run.gaps
    assert first_gap.missing == 1
    assert first_gap.seconds == pytest.approx(missing_meta["frames"] / FPS, abs=1e-3)
    # The restart is placed by the wall clock (5 s later), not read as a wrap.
    assert restart_gap.missing == 0
    assert restart_gap.seconds == pytest.approx(5.0, abs=2e-3)
    frames = sum(s.frames for s in segments_[1:]) + missing_meta["frames"]
    assert run.duration == pytest.approx(frames / FPS + 5, abs=2e-3)


@pytest.mark.parametrize("upload", ["whole", "live, the last one unfinished"])
def test_fetch_stitches_a_run_across_the_wrap_into_one_continuous_mp4(
    azurite, container, tmp_path, capsys, caplog, upload
):
    name, client = container
    # The crossing segment starts 75 s before the wrap; the wall clock is corrected by 3 s
    # at the wrap: only the capture clock puts the next segment right after it.
    spool = record_across_wrap(tmp_path / "spool", *LONG, clock_jump=3.0)
    found = segments(spool)
    assert len(found) == 3
    files = [path for path, _, _ in found]
    if upload == "whole":
        upload_whole(client, spool)
        expected = device_pictures(files[1:])
    else:
        *finished, (last_path, last_rec, last_blob) = found
        send_finished(client, finished)
        offsets = frame_offsets(last_path)
        keep = len(offsets) // 2
        append(open_live(client, last_blob, last_rec), last_path.read_bytes()[: offsets[keep]])
        expected = device_pictures(files[1:2]) + pictures(last_path, "mpegts")[:keep]
    out = tmp_path / "out"

    status, report, err = fetch(capsys, tmp_path, azurite, name, out)

    assert status == 0, report + err
    first, across = sorted(out.glob("*.mp4"))
    assert_continuous(first, FPS)
    assert_continuous(across, len(expected))
    assert pictures(across) == expected  # every picture, in the order it was recorded
    assert "gap kept in the file" not in report, report
    # Planned from the blobs' metadata while downloading, not demuxed all over again.
    assert "metadata failed" not in caplog.text, caplog.text
    # The one gap: the 26.5 h the capture clock skipped after the run's first second.
    assert "gap, new file:" in report and "for 26h 29m 2" in report, report
