"""The camera signs what it records: a chained record per segment, checkpoints inside the
open one, records for what a crash left behind; all checked here against the bytes on the
card (and in the cloud), read back independently of the code that wrote them."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
from datetime import UTC, datetime
from pathlib import Path

import av
import pytest

from hatcam import proof
from hatcam.device.camera.synthetic import SyntheticCamera
from hatcam.device.segmenter import Segmenter, SegmentFile, recover
from hatcam.device.signing import Signer
from hatcam.device.spool import Spool
from hatcam.segment import Contents, SegmentName

from tests.support.footage import (
    SMALL,
    hatcam,
    landed_segments,
    record,
    start_hatcam,
    wait_until,
)
from tests.support.sdcard import SdCard

DEVICE = "cam1"


@pytest.fixture
def key(tmp_path):
    return proof.DeviceKey.generate(tmp_path / "device.key")


@pytest.fixture
def ring(key):
    ring = proof.KeyRing()
    ring.add_line(key.public_line(DEVICE))
    return ring


def video_packets(data: bytes) -> list[tuple[int, bytes]]:
    """(byte offset, payload) of every video frame in MPEG-TS bytes, as a reader sees them."""
    import io

    with av.open(io.BytesIO(data), format="mpegts") as container:
        return [(p.pos, bytes(p)) for p in container.demux(video=0) if p.size]


def frames_digest(frames: list[bytes]) -> str:
    digest = proof.FrameDigest()
    for frame in frames:
        digest.add_annexb(frame)
    return digest.hexdigest()


def assert_covers(ring, record: dict, data: bytes, what: str) -> None:
    """``record`` is validly signed and says exactly what bytes [0, size) of ``data`` hold."""
    assert ring.problem(record) is None, f"{what}: {ring.problem(record)}"
    size = record["size"]
    assert size <= len(data), f"{what}: covers {size} bytes of {len(data)}"
    assert hashlib.sha256(data[:size]).hexdigest() == record["sha256"], f"{what}: sha256"
    frames = [payload for pos, payload in video_packets(data) if pos < size][: record["frames"]]
    assert len(frames) == record["frames"], f"{what}: {len(frames)} frames, not {record['frames']}"
    assert frames_digest(frames) == record["frames_sha256"], f"{what}: frames_sha256"


def assert_one_chain(records: list[dict]) -> None:
    """Each record names the one before it; the first starts the chain."""
    assert records[0]["prev"] == ""
    for before, after in zip(records, records[1:], strict=False):
        assert after["prev"] == proof.record_hash(before), (
            f"chain broken between {before['name']} and {after['name']}"
        )


def records_of(spool: Spool) -> list[dict]:
    return [spool.read_metadata(p)["proof"] for p in spool.ready_segments()]


def camera_settings(spool_dir: Path, **extra) -> dict:
    return {
        "HATCAM_CAMERA": "synthetic",
        "HATCAM_DEVICE": DEVICE,
        "HATCAM_SPOOL_DIR": spool_dir,
        "HATCAM_RESOLUTION": "320x240",
        "HATCAM_MIN_FREE_MB": "1",
        **extra,
    }


def run_camera(settings: dict, log: Path, until, what: str, timeout: float = 40) -> None:
    proc = start_hatcam("camera", settings=settings, log=log)
    try:
        wait_until(until, timeout, what, poll=0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]


def test_every_closed_segment_has_a_signed_record_of_its_bytes_chained_across_a_reboot(
    tmp_path, key, ring
):
    spool = Spool(tmp_path / "spool").ensure()
    record(spool.root, 30 * 3 + 7, signer=Signer(key, DEVICE, spool.state))
    # A reboot: a new boot id, a new Segmenter, the same card.
    signer = Signer(key, DEVICE, spool.state)  # read from the card again, as at a start
    after_reboot = Segmenter(
        spool, DEVICE, SMALL["width"], SMALL["height"], SMALL["fps"], 1.0, signer=signer
    )
    after_reboot.boot = "0b00710b"
    camera = SyntheticCamera(SMALL["width"], SMALL["height"], SMALL["fps"], 300_000, False, 67)
    camera.start(after_reboot)
    assert camera.wait(120)
    after_reboot.close()

    segments = spool.ready_segments()
    records = records_of(spool)
    assert len(records) == 7
    for path, rec in zip(segments, records, strict=True):
        data = path.read_bytes()
        assert_covers(ring, rec, data, path.name)
        assert rec["size"] == len(data), "a closed segment's record covers the whole file"
        assert rec["kind"] == "segment" and rec["recovered"] is False
        assert rec["name"] == path.name and rec["device"] == DEVICE
        name = SegmentName.parse(path.name)
        assert (rec["boot"], rec["seq"]) == (name.boot, name.seq)
        with av.open(str(path)) as container:
            assert sum(1 for _ in container.decode(video=0)) == rec["frames"]
    assert_one_chain(records)
    assert {r["boot"] for r in records[4:]} == {"0b00710b"} != {r["boot"] for r in records[:4]}


def test_the_open_segment_carries_checkpoints_that_verify_and_the_chain_survives_a_restart(
    tmp_path, key, ring
):
    spool = Spool(tmp_path / "spool")
    settings = camera_settings(
        spool.root, HATCAM_SEGMENT_SECONDS="2", HATCAM_DEVICE_KEY=tmp_path / "device.key"
    )
    log = tmp_path / "camera.log"
    seen: dict[str, bytes] = {}

    def open_segment_checkpointed():
        """Three segments closed, and the open one holding a checkpoint: copy its bytes."""
        if len(spool.ready_segments()) < 3:
            return False
        for path in spool.recording.glob("*.ts"):
            data = path.read_bytes()
            if len(proof.checkpoints(path)) >= 1:
                seen[path.name] = data
                return True
        return False

    run_camera(settings, log, open_segment_checkpointed, "a checkpoint in the open segment")
    closed_before_restart = len(spool.ready_segments())
    run_camera(settings, log, lambda: len(spool.ready_segments()) >= closed_before_restart + 2, "")

    ((name, data),) = seen.items()
    copy = tmp_path / name
    copy.write_bytes(data)
    found = proof.checkpoints(copy)
    final = spool.read_metadata(spool.ready / name)["proof"]
    for at, checkpoint in found:
        assert checkpoint["kind"] == "checkpoint" and checkpoint["name"] == name
        assert at == checkpoint["size"], "the checkpoint sits at the very offset it covers"
        assert_covers(ring, checkpoint, data, f"checkpoint at {at} in the open segment")
        assert checkpoint["prev"] == final["prev"], "a checkpoint names its segment's prev"

    records = records_of(spool)
    assert_one_chain(records)
    assert len(records) >= closed_before_restart + 2
    for path, rec in zip(spool.ready_segments(), records, strict=True):
        whole = path.read_bytes()
        assert_covers(ring, rec, whole, path.name)
        inside = proof.checkpoints(path)
        if rec["frames"] >= 40:  # not a last one cut short by the stop
            assert inside, f"{path.name}: synced, so checkpointed, once a second"
        for at, checkpoint in inside:
            assert at == checkpoint["size"]
            assert_covers(ring, checkpoint, whole, f"{path.name} checkpoint at {at}")
            assert checkpoint["prev"] == rec["prev"]
    assert "not signed" not in log.read_text()


@pytest.fixture
def card(tmp_path):
    with SdCard(tmp_path / "card", tmp_path / "card-process") as card:
        yield card


@pytest.mark.root("mounts a FUSE file system (the test SD card)")
def test_after_a_sigkill_and_power_cut_the_cut_segment_is_signed_and_the_chain_holds(
    card, tmp_path, key, ring
):
    spool = Spool(card.path)
    settings = camera_settings(
        spool.root, HATCAM_SEGMENT_SECONDS="4", HATCAM_DEVICE_KEY=tmp_path / "device.key"
    )
    log = tmp_path / "camera.log"
    proc = start_hatcam("camera", settings=settings, log=log)

    def checkpointed_twice():
        """Two segments closed, the open one holding two checkpoints (2-3 s old)."""
        if len(spool.ready_segments()) < 2:
            return False
        opened = list(spool.recording.glob("*.ts"))
        return len(opened) == 1 and len(proof.checkpoints(opened[0])) >= 2

    wait_until(checkpointed_twice, 40, "two checkpoints in the open segment", poll=0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (cut,) = spool.recording.glob("*.ts")
    card.power_cut()
    on_card = cut.read_bytes()
    survived = proof.checkpoints(cut)
    assert survived, "the checkpoints synced with the bytes they cover survive the power cut"
    last_at, last = survived[-1]
    assert_covers(ring, last, on_card, "the cut segment's last checkpoint, on the card")

    run_camera(settings, log, lambda: len(spool.ready_segments()) >= 4, "two more segments")

    recovered = spool.read_metadata(spool.ready / cut.name)["proof"]
    assert recovered["recovered"] is True and recovered["kind"] == "segment"
    assert recovered["size"] % 188 == 0 and recovered["size"] <= len(on_card)
    assert (spool.ready / cut.name).read_bytes() == on_card, "recovery leaves the bytes alone"
    assert_covers(ring, recovered, on_card, "the recovered segment's record")
    assert recovered["size"] >= last_at and recovered["frames"] >= last["frames"]
    assert recovered["prev"] == last["prev"], "its checkpoints already named its place"
    assert_one_chain(records_of(spool))


def test_without_a_key_nothing_is_signed_and_the_log_says_so_once(tmp_path):
    spool = Spool(tmp_path / "spool")
    log = tmp_path / "camera.log"
    settings = camera_settings(spool.root, HATCAM_SEGMENT_SECONDS="1")
    run_camera(settings, log, lambda: len(spool.ready_segments()) >= 2, "two segments")
    for path in spool.ready_segments():
        assert "proof" not in spool.read_metadata(path)
        with av.open(str(path)) as container:
            assert [s.type for s in container.streams] == ["video"], "no data stream"
    assert not (spool.state / "chain.json").exists()
    assert log.read_text().count("segments are not signed (footage unverified)") == 1


@pytest.mark.parametrize(
    "problem, make, says",
    [
        ("missing", lambda p: None, "does not exist"),
        ("malformed", lambda p: p.write_text("c2VjcmV0LWJ1dC1ub3QtYS1rZXk=\n"), "does not hold"),
        ("a directory", lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_a_bad_key_is_one_line_naming_the_setting_and_exit_2(tmp_path, problem, make, says):
    path = tmp_path / "device.key"
    make(path)
    spool_dir = tmp_path / "spool"
    result = hatcam("camera", settings=camera_settings(spool_dir, HATCAM_DEVICE_KEY=path))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("hatcam: HATCAM_DEVICE_KEY: "), lines
    assert says in lines[0] and "c2VjcmV0" not in result.stderr
    assert not spool_dir.exists(), "nothing was started"
    relative = hatcam("camera", settings=camera_settings(spool_dir, HATCAM_DEVICE_KEY="k.key"))
    assert relative.returncode == 2
    assert relative.stderr.strip() == (
        "hatcam: HATCAM_DEVICE_KEY: must be an absolute path, got 'k.key'"
    )


def test_keygen_makes_a_private_key_once_and_prints_only_its_public_line(tmp_path):
    path = tmp_path / "device.key"
    made = hatcam("keygen", str(path), "--device", DEVICE, settings={})
    assert made.returncode == 0 and made.stderr == ""
    assert path.stat().st_mode & 0o777 == 0o400
    seed = path.read_text().strip()
    assert len(base64.b64decode(seed)) == 32
    (line,) = made.stdout.splitlines()
    ring = proof.KeyRing()
    assert ring.add_line(line) == proof.DeviceKey.load(path).id
    assert ring.devices() == {DEVICE}

    again = hatcam("keygen", str(path), "--device", DEVICE, settings={})
    assert again.returncode != 0 and again.stdout == ""
    assert again.stderr.strip() == f"hatcam: {path} already holds a key: not replaced"
    assert path.read_text().strip() == seed

    public = hatcam("keygen", str(path), "--device", DEVICE, "--public", settings={})
    assert public.returncode == 0 and public.stdout.splitlines() == [line]
    for result in (made, again, public):
        assert seed not in result.stdout + result.stderr, "the private key is never printed"
    missing = hatcam("keygen", str(tmp_path / "none"), "--device", DEVICE, "--public", settings={})
    assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("mode", ["whole", "live"])
def test_the_signed_record_reaches_the_cloud_in_both_upload_modes(
    tmp_path, key, ring, azurite, mode
):
    import uuid

    spool = Spool(tmp_path / "spool").ensure()
    record(spool.root, 30 * 3 + 7, signer=Signer(key, DEVICE, spool.state))
    files = {p.name: p.read_bytes() for p in spool.ready_segments()}
    sidecars = {p.name: spool.read_metadata(p)["proof"] for p in spool.ready_segments()}
    container = f"s{uuid.uuid4().hex[:12]}"
    client = azurite.container(container)
    credential = (
        {"HATCAM_BLOB_SAS_URL": azurite.sas_url(container, "c")}
        if mode == "whole"
        else {"BLOB_CONNECTION_STRING": azurite.connection_string()}
    )
    settings = {
        "HATCAM_SPOOL_DIR": spool.root,
        "HATCAM_DEVICE": DEVICE,
        "HATCAM_BLOB_CONTAINER": container,
        "HATCAM_RETRY_MAX_SECONDS": "1",
        **credential,
    }
    log = tmp_path / "upload.log"
    proc = start_hatcam("upload", settings=settings, log=log)
    try:
        wait_until(lambda: not spool.ready_segments(), 60, "the spool to drain")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    landed = landed_segments(client, f"{DEVICE}/")
    assert len(landed) == len(files)
    for blob in landed:
        name = Path(blob.name).name
        carried = json.loads(blob.metadata["proof"])
        assert carried == sidecars[name]
        cloud = client.download_blob(blob.name).readall()
        assert cloud == files[name]
        assert_covers(ring, carried, cloud, f"{blob.name} ({mode})")
        size = sum(len(k) + len(v) for k, v in blob.metadata.items())
        assert size < 8192, f"{blob.name}: {size} bytes of metadata (Azure allows 8 KiB)"
        assert all(v.isascii() for v in blob.metadata.values())
    assert_one_chain([json.loads(b.metadata["proof"]) for b in landed])
    print(f"{mode}: metadata of {size} bytes a segment")


def test_a_segment_torn_mid_frame_is_signed_over_its_whole_packets_and_complete_frames(
    tmp_path, key, ring
):
    """A card may keep part of a write: the record covers no torn packet or frame."""
    source = Spool(tmp_path / "source").ensure()
    record(source.root, 60 + 7, segment_seconds=2.0)
    original = source.ready_segments()[0]
    whole = original.read_bytes()
    positions = [pos for pos, _ in video_packets(whole)]
    payloads = [payload for _, payload in video_packets(whole)]
    cut_in = 40  # cut half way through frame 40: frames 0-39 are whole
    cut_at = (positions[cut_in] + positions[cut_in + 1]) // 2 + 7  # not on a packet edge
    spool = Spool(tmp_path / "spool").ensure()
    torn = spool.recording / original.name
    torn.write_bytes(whole[:cut_at])

    recover(spool, DEVICE, SMALL["fps"], Signer(key, DEVICE, spool.state))

    rec = spool.read_metadata(spool.ready / original.name)["proof"]
    assert rec["recovered"] is True and rec["prev"] == ""
    assert rec["size"] == cut_at // 188 * 188
    assert_covers(ring, rec, whole[:cut_at], "the torn segment's record")
    assert rec["frames"] == cut_in
    assert rec["frames_sha256"] == frames_digest(payloads[:cut_in]), "the frames as recorded"


def test_a_crash_between_signing_and_committing_a_segment_does_not_fork_the_chain(
    tmp_path, key, ring
):
    """The chain names a segment's record before the segment is committed; killed in
    between, the segment is recovered, and its new record takes the old one's place."""
    spool = Spool(tmp_path / "spool").ensure()
    record(spool.root, 30 * 2, signer=Signer(key, DEVICE, spool.state))
    signer = Signer(key, DEVICE, spool.state)
    name = SegmentName(datetime.now(UTC), "0b00710b", spool.next_seq())
    segment = SegmentFile(spool.recording / name.filename, name, 320, 240, 30, signer)
    camera = SyntheticCamera(320, 240, 30, 300_000, realtime=False, frames=30)
    frames = Collect()
    camera.start(frames)
    assert camera.wait(60)
    for index, (data, keyframe, _) in enumerate(frames.frames):
        segment.write(data, keyframe, index * 3000)
    segment.close()
    contents = Contents(segment.frames, segment.first_pts, segment.last_pts, 320, 240)
    lost = signer.segment(segment.segment_fields(contents))  # then the power goes

    recover(spool, DEVICE, SMALL["fps"], Signer(key, DEVICE, spool.state))
    records = records_of(spool)
    assert [r["name"] for r in records][-1] == name.filename
    assert records[-1]["recovered"] is True and records[-1]["prev"] == lost["prev"]
    assert_one_chain(records)
    assert_covers(ring, records[-1], (spool.ready / name.filename).read_bytes(), "recovered")


class Collect:
    def __init__(self):
        self.frames = []

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        self.frames.append((bytes(frame), bool(keyframe), int(timestamp)))
