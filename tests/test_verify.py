"""`hatcam verify` on a real MP4: real H.264 segments from the real segmenter, records
signed with a real device key, stitched by fetch's own stitch code, and checked by the
command a third party runs (a subprocess), with nothing but the MP4, its report and the
public key."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest

from hatcam import proof
from hatcam.fetch import stitch
from hatcam.segment import Contents, SegmentName, iso, probe

from tests.support.footage import record

DEVICE = "cam1"


def sign_segments(paths: list[Path], key: proof.DeviceKey) -> list[dict]:
    """The chained records the camera makes for its closed segments (fields as the
    contract in hatcam.proof names them), read back from the files themselves."""
    records, prev = [], ""
    for path in paths:
        name = SegmentName.parse(path.name)
        contents = probe(path)
        digest = proof.FrameDigest()
        with av.open(str(path), format="mpegts") as container:
            for packet in container.demux(video=0):
                if packet.size:
                    digest.add_annexb(bytes(packet))
        seconds = (contents.last_pts - contents.first_pts + 3000) / 90_000
        end = name.start.timestamp() + seconds
        signed = key.sign(
            {
                "kind": "segment",
                "device": DEVICE,
                "boot": name.boot,
                "seq": name.seq,
                "name": path.name,
                "start": iso(name.start),
                "end": iso(name.start.fromtimestamp(end, name.start.tzinfo)),
                "frames": contents.frames,
                "first_pts": contents.first_pts,
                "last_pts": contents.last_pts,
                "size": path.stat().st_size,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "frames_sha256": digest.hexdigest(),
                "prev": prev,
            }
        )
        records.append(signed)
        prev = proof.record_hash(signed)
    return records


def stitch_with_report(paths, records, key, target: Path) -> Path:
    """One MP4 from the segments, as fetch stitches it, and its report beside it: each
    record with the MP4 samples it covers (the shape fetch's report has)."""
    segments = []
    for path in paths:
        name = SegmentName.parse(path.name)
        segments.append(
            stitch.Segment.from_contents(
                path.name, path, DEVICE, name.start, probe(path), boot=name.boot, seq=name.seq
            )
        )
    [run], _ = stitch.plan(segments, stitch.default_max_gap(segments))
    stitch.write(run, target)
    entries, at = [], 0
    by_name = {r["name"]: r for r in records}
    for placed in run.items:
        frames = placed.segment.frames
        entries.append(
            {
                "record": by_name[placed.segment.name],
                "status": "verified",
                "mp4": {"first_sample": at, "samples": frames},
            }
        )
        at += frames
    report = target.with_name(target.name + ".proof.json")
    report.write_text(
        json.dumps(
            {
                "device": DEVICE,
                "keys": [key.public_line(DEVICE)],
                "segments": entries,
                "gaps": [],
            },
            indent=1,
        )
    )
    return report


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Four one-second segments, signed and stitched: (dir, segment paths, records)."""
    base = tmp_path_factory.mktemp("verify")
    spool = record(base / "spool", frames=120, segment_seconds=1.0, device=DEVICE)
    paths = sorted(spool.ready.glob("*.ts"))
    assert len(paths) == 4
    key = proof.DeviceKey.generate(base / "device.key")
    (base / "cam1.pub").write_text(key.public_line(DEVICE) + "\n")
    records = sign_segments(paths, key)
    mp4 = base / "cam1.mp4"
    stitch_with_report(paths, records, key, mp4)
    return base, paths, records, key


@pytest.fixture
def case(made, tmp_path):
    """A fresh copy of the MP4, its report and the public key, to tamper with."""
    base, paths, records, key = made
    for name in ("cam1.mp4", "cam1.mp4.proof.json", "cam1.pub"):
        shutil.copy(base / name, tmp_path / name)
    return tmp_path, paths, records, key


def verify(where: Path, *extra: str, key: Path | None = None) -> tuple[int, list[str]]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hatcam.cli",
            "verify",
            str(where / "cam1.mp4"),
            "--key",
            str(key or where / "cam1.pub"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert not result.stderr.strip() or result.returncode, result.stderr
    return result.returncode, result.stdout.splitlines()


def report_of(where: Path) -> dict:
    return json.loads((where / "cam1.mp4.proof.json").read_text())


def write_report(where: Path, report: dict) -> None:
    (where / "cam1.mp4.proof.json").write_text(json.dumps(report))


def test_verify_accepts_the_mp4_fetch_wrote_with_one_verified_range(case):
    where, paths, records, _ = case
    status, lines = verify(where)
    assert status == 0, lines
    verified = [line for line in lines if line.startswith("verified")]
    assert len(verified) == 1 and "4 segment(s), 120 frames" in verified[0], lines
    assert records[0]["start"][:19] in verified[0] and records[-1]["end"][11:19] in verified[0]
    assert not [line for line in lines if line.startswith("missing")]
    assert lines[-1].startswith("OK: all 120 frames of cam1.mp4")
    with av.open(str(where / "cam1.mp4")) as container:  # independently: the MP4 plays
        assert sum(1 for _ in container.decode(video=0)) == 120


def flip_in_sample(mp4: Path, index: int) -> None:
    """One bit in the middle of sample ``index``'s first slice, in the MP4 file itself."""
    with av.open(str(mp4)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
        pos, data = packets[index].pos, bytes(packets[index])
    at = 0
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        if data[at + 4] & 0x1F in (1, 5):
            break
        at += 4 + length
    else:
        raise AssertionError("no slice in the sample")
    offset = pos + at + 4 + length // 2
    blob = bytearray(mp4.read_bytes())
    assert blob[pos : pos + len(data)] == data  # the sample is where the demuxer said
    blob[offset] ^= 0x01
    mp4.write_bytes(bytes(blob))


def test_one_frames_bytes_changed_in_the_mp4_is_refused_naming_its_segment(case):
    where, paths, records, _ = case
    flip_in_sample(where / "cam1.mp4", 30 + 30 + 12)  # a frame of the third segment
    status, lines = verify(where)
    assert status == 1, lines
    assert lines[-1].startswith(f"REFUSED: segment {paths[2].name}"), lines
    assert "differ from what the camera signed" in lines[-1]


def test_a_record_removed_from_the_report_is_refused_and_its_time_reported_missing(case):
    where, paths, records, _ = case
    report = report_of(where)
    del report["segments"][1]
    write_report(where, report)
    status, lines = verify(where)
    assert status == 1, lines
    assert lines[-1] == "REFUSED: MP4 samples 30-59 are covered by no validly signed record"
    missing = [line for line in lines if line.startswith("missing")]
    assert (
        len(missing) == 1
        and records[0]["end"] in missing[0]
        and records[2]["start"] in (missing[0])
    )
    assert "a break in the device's chain" in missing[0]


def test_a_wrong_key_is_refused(case, tmp_path_factory):
    where, *_ = case
    other = proof.DeviceKey.generate(tmp_path_factory.mktemp("other") / "device.key")
    (where / "other.pub").write_text(other.public_line(DEVICE) + "\n")
    status, lines = verify(where, key=where / "other.pub")
    assert status == 1, lines
    ignored = [line for line in lines if line.startswith("ignored")]
    assert len(ignored) == 4 and all("signed by an unknown key" in line for line in ignored)
    assert lines[-1].startswith(
        "REFUSED: MP4 samples 0-119 are covered by no validly signed record"
    )
    assert "signed by an unknown key" in lines[-1]


def test_a_record_whose_signature_was_tampered_with_is_refused_naming_it(case):
    where, paths, records, _ = case
    report = report_of(where)
    signed = report["segments"][3]["record"]
    raw = bytearray(base64.b64decode(signed["sig"]))
    raw[10] ^= 0x01
    signed["sig"] = base64.b64encode(bytes(raw)).decode()
    write_report(where, report)
    status, lines = verify(where)
    assert status == 1, lines
    assert lines[-1] == (
        f"REFUSED: MP4 samples 90-119 are covered by no validly signed record (the report "
        f"gives them to segment {paths[3].name} (seq {records[3]['seq']}, boot "
        f"{records[3]['boot']}): bad signature)"
    )


def test_a_record_whose_fields_were_changed_is_refused_even_with_its_samples(case):
    """The report's own claims are not trusted: a record saying more frames than signed."""
    where, paths, records, _ = case
    report = report_of(where)
    report["segments"][0]["record"]["frames"] = 29
    report["segments"][0]["mp4"]["samples"] = 29
    write_report(where, report)
    status, lines = verify(where)
    assert status == 1 and "bad signature" in lines[-1], lines


def test_a_segment_left_out_of_the_mp4_is_reported_missing_with_its_time_and_accepted(
    made, tmp_path
):
    """As fetch does with an altered segment: its record stays in the report, its frames
    are not in the MP4; what the MP4 holds still verifies, and the hole is named."""
    base, paths, records, key = made
    kept = [0, 1, 3]
    mp4 = tmp_path / "cam1.mp4"
    report = stitch_with_report([paths[i] for i in kept], [records[i] for i in kept], key, mp4)
    data = json.loads(report.read_text())
    data["segments"].insert(2, {"record": records[2], "status": "altered"})
    report.write_text(json.dumps(data))
    shutil.copy(base / "cam1.pub", tmp_path / "cam1.pub")
    status, lines = verify(tmp_path)
    assert status == 0, lines
    missing = [line for line in lines if line.startswith("missing")]
    assert len(missing) == 1 and paths[2].name in missing[0], lines
    assert "not in this MP4" in missing[0]
    verified = [line for line in lines if line.startswith("verified")]
    assert [re.search(r"(\d+) segment", line)[1] for line in verified] == ["2", "1"], lines


def test_another_cameras_genuine_footage_spliced_in_is_refused(case, tmp_path_factory):
    """Signed, unaltered, but by another device: an MP4 is one camera's footage."""
    where, paths, records, _ = case
    other = proof.DeviceKey.generate(tmp_path_factory.mktemp("cam2") / "device.key")
    (where / "cam2.pub").write_text(other.public_line("cam2") + "\n")
    keys = where / "keys"
    keys.mkdir()
    for name in ("cam1.pub", "cam2.pub"):
        shutil.copy(where / name, keys / name)
    report = report_of(where)
    theirs = {k: v for k, v in records[1].items() if k not in ("v", "key", "sig")}
    report["segments"][1]["record"] = other.sign({**theirs, "device": "cam2"})
    write_report(where, report)
    status, lines = verify(where, key=keys)
    assert status == 1, lines
    assert lines[-1] == "REFUSED: frames of several devices in one MP4: cam1, cam2"


def test_a_report_that_cannot_be_read_is_a_clear_error_not_a_verdict(case):
    where, *_ = case
    (where / "cam1.mp4.proof.json").write_text("{not json")
    status, lines = verify(where)
    assert status == 2 and lines == [lines[0]] and "not readable as JSON" in lines[0]


def test_a_segment_cut_short_verifies_up_to_its_last_checkpoint(made, tmp_path):
    """The device destroyed while recording: the open segment never got its record, only
    checkpoints; the MP4 holds its frames up to the last one, and they verify."""
    base, paths, records, key = made
    cut, kept = paths[3], 17  # the checkpoint covers the first 17 frames
    digest, pts = proof.FrameDigest(), []
    with av.open(str(cut), format="mpegts") as container:
        for packet in container.demux(video=0):
            if packet.size and len(pts) < kept:
                digest.add_annexb(bytes(packet))
                pts.append(packet.pts)
            elif packet.size and len(pts) == kept:
                pts.append(packet.pts)  # one more, for the MP4 that holds it
    checkpoint = key.sign(
        {
            **{k: v for k, v in records[3].items() if k not in ("v", "key", "sig")},
            "kind": "checkpoint",
            "frames": kept,
            "last_pts": pts[kept - 1],
            "frames_sha256": digest.hexdigest(),
        }
    )

    def stitched(frames_of_cut: int) -> None:
        """The MP4 with the cut segment's first ``frames_of_cut`` frames, and the report."""
        segments = []
        for path in paths:
            name = SegmentName.parse(path.name)
            contents = probe(path)
            if path == cut:
                contents = Contents(frames_of_cut, pts[0], pts[frames_of_cut - 1], 320, 240)
            segments.append(
                stitch.Segment.from_contents(
                    path.name,
                    path,
                    DEVICE,
                    name.start,
                    contents,
                    boot=name.boot,
                    seq=name.seq,
                    cut=path == cut,
                )
            )
        [run], _ = stitch.plan(segments, stitch.default_max_gap(segments))
        stitch.write(run, tmp_path / "cam1.mp4")
        entries = [
            {"record": r, "mp4": {"first_sample": 30 * i, "samples": r["frames"]}}
            for i, r in enumerate([*records[:3], checkpoint])
        ]
        (tmp_path / "cam1.mp4.proof.json").write_text(json.dumps({"segments": entries}))

    shutil.copy(base / "cam1.pub", tmp_path / "cam1.pub")
    stitched(kept)
    status, lines = verify(tmp_path)
    assert status == 0, lines
    assert lines[-1].startswith(f"OK: all {90 + kept} frames"), lines
    assert len(lines) == 2 and f"4 segment(s), {90 + kept} frames" in lines[0], lines

    # One frame more in the MP4 than the checkpoint covers: that frame is not verified.
    stitched(kept + 1)
    status, lines = verify(tmp_path)
    assert status == 1, lines
    assert lines[-1] == (
        f"REFUSED: MP4 samples {90 + kept}-{90 + kept} are covered by no validly signed record"
    )
