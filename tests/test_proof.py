"""The proof contract (hatcam.proof): signatures, the key ring, the frame digest that
survives the MP4 remux, and checkpoints carried inside a real MPEG-TS segment."""

from __future__ import annotations

import hashlib
from fractions import Fraction

import av
import pytest

from hatcam import proof
from hatcam.device.camera.synthetic import SyntheticCamera

TB = Fraction(1, 90_000)


class Frames:
    """Collects what the encoder hands out, as picamera2's outputframe receives it."""

    def __init__(self):
        self.frames: list[tuple[bytes, bool, int]] = []

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        self.frames.append((bytes(frame), bool(keyframe), int(timestamp)))


@pytest.fixture(scope="module")
def frames():
    out = Frames()
    camera = SyntheticCamera(320, 240, 30, 300_000, realtime=False, frames=90)
    camera.start(out)
    camera.wait()
    return out.frames


@pytest.fixture
def key(tmp_path):
    return proof.DeviceKey.generate(tmp_path / "device.key")


def ring_of(*keys_and_devices) -> proof.KeyRing:
    ring = proof.KeyRing()
    for key, device in keys_and_devices:
        ring.add_line(key.public_line(device))
    return ring


def test_a_signed_record_verifies_with_its_devices_key_and_not_once_changed(key):
    record = key.sign({"kind": "segment", "device": "cam1", "seq": 7, "sha256": "ab" * 32})
    ring = ring_of((key, "cam1"))
    assert ring.problem(record) is None
    assert ring.problem({**record, "seq": 8}) == "bad signature"
    assert ring.problem({**record, "sig": record["sig"][:-4] + "AAA="}) == "bad signature"


def test_a_record_naming_another_device_or_an_unknown_key_is_refused(key, tmp_path):
    thief = proof.DeviceKey.generate(tmp_path / "thief.key")
    ring = ring_of((key, "cam1"), (thief, "cam2"))
    forged = thief.sign({"kind": "segment", "device": "cam1", "seq": 1})
    assert ring.problem(forged) == "signed by cam2's key, but names device cam1"
    stranger = proof.DeviceKey.generate(tmp_path / "stranger.key")
    unknown = stranger.sign({"kind": "segment", "device": "cam1"})
    assert ring.problem(unknown).startswith("signed by an unknown key")


def test_the_key_file_is_private_never_replaced_and_loads_the_same_key(key, tmp_path):
    path = tmp_path / "device.key"
    assert path.stat().st_mode & 0o777 == 0o400
    with pytest.raises(FileExistsError):
        proof.DeviceKey.generate(path)
    again = proof.DeviceKey.load(path)
    assert again.id == key.id and again.public == key.public


def test_a_rotated_key_ring_still_verifies_old_records(key, tmp_path):
    old = key.sign({"kind": "segment", "device": "cam1", "seq": 1})
    new_key = proof.DeviceKey.generate(tmp_path / "device-2.key")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / f"cam1-{key.id}.pub").write_text(key.public_line("cam1") + "\n")
    (keys / f"cam1-{new_key.id}.pub").write_text(new_key.public_line("cam1") + "\n")
    ring = proof.KeyRing.load(keys)
    assert ring.problem(old) is None
    assert ring.problem(new_key.sign({"kind": "segment", "device": "cam1", "seq": 2})) is None


def test_the_chain_hash_changes_with_any_field_and_with_the_signature(key):
    a = key.sign({"kind": "segment", "device": "cam1", "seq": 1, "prev": ""})
    assert proof.record_hash(a) == proof.record_hash(dict(reversed(list(a.items()))))
    assert proof.record_hash(a) != proof.record_hash({**a, "seq": 2})
    assert proof.record_hash(a) != proof.record_hash({**a, "sig": "x"})


def mux_ts(path, frames, with_checkpoints: dict | None = None) -> list[int]:
    """Frames into MPEG-TS as the segmenter muxes them; with a record muxed after every
    30th frame when ``with_checkpoints`` is given; the byte offsets before each one."""
    offsets = []
    with open(path, "wb") as fh:
        options = {"flush_packets": "1", "max_interleave_delta": "1"}
        out = av.open(fh, "w", format="mpegts", container_options=options)
        video = out.add_stream("h264", rate=30)
        video.width, video.height, video.time_base = 320, 240, TB
        data = out.add_data_stream("timed_id3") if with_checkpoints is not None else None
        if data is not None:
            data.time_base = TB
        for index, (frame, _keyframe, timestamp) in enumerate(frames):
            packet = av.Packet(frame)
            packet.stream, packet.time_base = video, TB
            packet.pts = packet.dts = pts = round(timestamp * 9 / 100)
            out.mux(packet)
            if data is not None and index % 30 == 29:
                offsets.append(fh.tell())
                tag = av.Packet(proof.id3_priv({**with_checkpoints, "n": len(offsets)}))
                tag.stream, tag.time_base = data, TB
                tag.pts = tag.dts = pts - 1  # before the frame: it is not held back
                out.mux(tag)
        out.close()
    return offsets


def test_the_frame_digest_is_the_same_from_the_encoder_the_ts_and_the_mp4(frames, tmp_path):
    from_encoder = proof.FrameDigest()
    for frame, _, _ in frames:
        from_encoder.add_annexb(frame)
    ts, mp4 = tmp_path / "a.ts", tmp_path / "a.mp4"
    mux_ts(ts, frames)
    from_ts = proof.FrameDigest()
    with av.open(str(ts)) as src, av.open(str(mp4), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.size:
                from_ts.add_annexb(bytes(packet))
                packet.stream = stream
                dst.mux(packet)
    from_mp4, samples = proof.FrameDigest(), []
    with av.open(str(mp4)) as src:
        for packet in src.demux(video=0):
            if packet.size:
                samples.append(bytes(packet))
                from_mp4.add_length_prefixed(bytes(packet))
    assert len(samples) == len(frames)
    assert from_encoder.hexdigest() == from_ts.hexdigest() == from_mp4.hexdigest()

    flipped = proof.FrameDigest()
    for index, sample in enumerate(samples):
        if index == 40:
            sample = flip_in_slice(sample)
        flipped.add_length_prefixed(sample)
    assert flipped.hexdigest() != from_mp4.hexdigest()


def flip_in_slice(sample: bytes) -> bytes:
    """One bit of the first slice's data flipped (an MP4 sample: length-prefixed NALs)."""
    at = 0
    while at < len(sample):
        length = int.from_bytes(sample[at : at + 4], "big")
        if sample[at + 4] & 0x1F in (1, 5):
            middle = at + 4 + length // 2
            return sample[:middle] + bytes([sample[middle] ^ 1]) + sample[middle + 1 :]
        at += 4 + length
    raise AssertionError("no slice in the sample")


def test_checkpoints_inside_the_segment_are_found_at_their_offsets_even_in_a_cut_file(
    frames, key, tmp_path
):
    ts = tmp_path / "b.ts"
    offsets = mux_ts(ts, frames, key.sign({"kind": "checkpoint", "device": "cam1"}))
    found = proof.checkpoints(ts)
    assert [at for at, _ in found] == offsets and len(offsets) == 3
    assert [record["n"] for _, record in found] == [1, 2, 3]
    assert all(record["kind"] == "checkpoint" for _, record in found)
    # The video is untouched by them: same frames decode.
    with av.open(str(ts)) as container:
        assert sum(1 for _ in container.decode(video=0)) == len(frames)

    cut = tmp_path / "cut.ts"
    cut.write_bytes(ts.read_bytes()[: offsets[1] + 200])  # inside the second checkpoint
    assert [at for at, _ in proof.checkpoints(cut)] == offsets[:1]
    assert hashlib.sha256(ts.read_bytes()[: offsets[0]]).hexdigest()  # the prefix it covers
