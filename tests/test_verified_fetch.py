"""Verified fetch: every segment checked against the device's signed, chained records,
from the cloud (real Azurite) and straight off a card's spool (real directories).

The footage is real H.264 from the synthetic camera through the real segmenter, signed
as the device signs it (hatcam.proof's contract: a record per segment in its sidecar,
chained by ``prev``; checkpoints muxed inside an open segment as timed-ID3 PRIV frames).
What the MP4 holds is checked by decoding it against the device's own segment files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import av
import pytest
from azure.storage.blob import ContainerClient, ContentSettings

from hatcam import cli, proof
from hatcam.segment import SegmentName, SegmentRecord, parse_iso

from tests.support.footage import record
from tests.test_fetch_live import (
    append,
    close_live,
    device_pictures,
    open_live,
    pictures,
    segments,
    upload_live,
    upload_whole,
)

TB = Fraction(1, 90_000)
T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
SEG = 1.0


# --- the device's side: signed footage, as the contract says -----------------------------


def clock(start: datetime, seconds: float = SEG):
    moments = iter(range(10_000))
    return lambda: start + timedelta(seconds=seconds * next(moments))


def frames_sha256(path: Path, upto: int | None = None) -> tuple[str, int]:
    """The frame digest of a TS file's video packets (the first ``upto``): (hex, count)."""
    digest, count = proof.FrameDigest(), 0
    with av.open(str(path), format="mpegts") as container:
        for packet in container.demux(video=0):
            if packet.size and packet.pts is not None and (upto is None or count < upto):
                digest.add_annexb(bytes(packet))
                count += 1
    return digest.hexdigest(), count


def fields_of(path: Path, meta: dict, prev: str, size: int | None = None) -> dict:
    name = SegmentName.parse(path.name)
    data = path.read_bytes()[:size]
    return {
        "kind": "segment",
        "device": meta["device"],
        "boot": name.boot,
        "seq": name.seq,
        "name": path.name,
        "start": meta["start"],
        "end": meta["end"],
        "frames": meta["frames"],
        "first_pts": meta["first_pts"],
        "last_pts": meta["last_pts"],
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "frames_sha256": frames_sha256(path)[0],
        "prev": prev,
    }


def sign_spool(spool, key: proof.DeviceKey | None, prev: str = "", boot: str | None = None):
    """Sign every unsigned ready segment, in sequence order, chained from ``prev`` (under
    boot id ``boot`` when given: the segments are renamed as that boot names them).
    Returns the last record's hash (the next ``prev``)."""
    for path in spool.ready_segments():
        meta = spool.read_metadata(path)
        if "proof" in meta or meta.get("signed") is False:
            continue
        if boot is not None:
            name = SegmentName.parse(path.name)
            renamed = path.with_name(SegmentName(name.start, boot, name.seq).filename)
            path.with_suffix(".json").rename(renamed.with_suffix(".json"))
            path = path.rename(renamed)
        if key is None:  # footage from before the device had a key
            meta["signed"] = False
        else:
            meta["proof"] = key.sign(fields_of(path, meta, prev))
            prev = proof.record_hash(meta["proof"])
        path.with_suffix(".json").write_text(json.dumps(meta))
    return prev


def mux_with_checkpoints(src: Path, dst: Path, key, device: str, prev: str, every=10):
    """``src``'s frames muxed again as the camera writes an open segment: a signed
    checkpoint after every ``every``-th frame, at the byte offset it covers. Returns
    (offset, frames covered) of each checkpoint."""
    with av.open(str(src), format="mpegts") as container:
        packets = [
            (bytes(p), p.pts, p.is_keyframe)
            for p in container.demux(video=0)
            if p.size and p.pts is not None
        ]
    name = SegmentName.parse(dst.name)
    marks = []
    part = dst.with_name(dst.name + ".part")
    with open(dst, "wb") as fh:
        options = {"flush_packets": "1", "max_interleave_delta": "1"}
        out = av.open(fh, "w", format="mpegts", container_options=options)
        video = out.add_stream("h264", rate=30)
        video.width, video.height, video.time_base = 320, 240, TB
        data = out.add_data_stream("timed_id3")
        data.time_base = TB
        for index, (payload, pts, _) in enumerate(packets):
            packet = av.Packet(payload)
            packet.stream, packet.time_base = video, TB
            packet.pts = packet.dts = pts
            out.mux(packet)
            if index % every == every - 1:
                fh.flush()
                at = fh.tell()
                # What is on the card so far (the muxer may still hold the last frame).
                part.write_bytes(dst.read_bytes()[:at])
                digest, frames = frames_sha256(part)
                with av.open(str(part), format="mpegts") as written:
                    last = [p.pts for p in written.demux(video=0) if p.pts is not None][-1]
                start = name.start
                fields = {
                    "kind": "checkpoint",
                    "device": device,
                    "boot": name.boot,
                    "seq": name.seq,
                    "name": dst.name,
                    "start": start.isoformat().replace("+00:00", "Z"),
                    "end": (start + timedelta(seconds=frames / 30)).isoformat(),
                    "frames": frames,
                    "first_pts": packets[0][1],
                    "last_pts": last,
                    "size": at,
                    "sha256": hashlib.sha256(part.read_bytes()).hexdigest(),
                    "frames_sha256": digest,
                    "prev": prev,
                }
                tag = av.Packet(proof.id3_priv(key.sign(fields)))
                tag.stream, tag.time_base = data, TB
                tag.pts = tag.dts = pts - 1
                out.mux(tag)
                marks.append((at, frames))
        out.close()
    part.unlink()
    return marks


@pytest.fixture
def keys(tmp_path):
    """Two devices' keys, and the directory of public keys fetch is given."""
    folder = tmp_path / "keys"
    folder.mkdir()
    made = {}
    for device in ("dev1", "dev2"):
        key = proof.DeviceKey.generate(tmp_path / f"{device}.key")
        (folder / f"{device}-{key.id}.pub").write_text(key.public_line(device) + "\n")
        made[device] = key
    return folder, made


def signed_footage(tmp_path, key, frames=150, device="dev1", start=T0, folder="spool"):
    spool = record(tmp_path / folder, frames, SEG, device=device, wall_clock=clock(start))
    sign_spool(spool, key)
    return spool


# --- the operator's side -----------------------------------------------------------------


def fetch(capsys, tmp_path, azurite, container, out, *args, keys=None):
    env = tmp_path / "fetch.env"
    lines = []
    if container is not None:
        lines += [
            f"BLOB_CONNECTION_STRING={azurite.connection_string()}",
            f"HATCAM_BLOB_CONTAINER={container}",
        ]
    if keys is not None:
        lines.append(f"HATCAM_KEYS_DIR={keys}")
    env.write_text("".join(line + "\n" for line in lines))
    status = cli.main(["--env-file", str(env), "fetch", "--out", str(out), *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def only_mp4(out: Path) -> Path:
    [mp4] = sorted(out.glob("*.mp4"))
    return mp4


def assert_samples_match_their_records(mp4, report) -> None:
    """Each segment's samples in the MP4 hash to its signed frames digest: checkable from
    the MP4 alone."""
    with av.open(str(mp4)) as opened:
        samples = [bytes(p) for p in opened.demux(video=0) if p.size]
    for entry in report["segments"]:
        at, count = entry["mp4"]["first_sample"], entry["mp4"]["samples"]
        digest = proof.FrameDigest()
        for sample in samples[at : at + count]:
            digest.add_length_prefixed(sample)
        assert digest.hexdigest() == entry["record"]["frames_sha256"]


def proof_report(mp4: Path) -> dict:
    return json.loads(mp4.with_name(mp4.name + ".proof.json").read_text())


def statuses(report: dict) -> dict[str, str]:
    return {s["name"].rpartition("/")[2]: s["status"] for s in report["segments"]}


def iso(text: str) -> datetime:
    return parse_iso(text)


# --- tests -------------------------------------------------------------------------------


def test_verified_footage_stitches_with_a_report_that_places_every_signed_frame(
    azurite, container, tmp_path, capsys, keys
):
    name, client = container
    folder, key = keys
    spool = signed_footage(tmp_path, key["dev1"])
    found = segments(spool)
    upload_whole(client, spool)
    out = tmp_path / "out"

    status, text, err = fetch(capsys, tmp_path, azurite, name, out, keys=folder)

    assert status == 0, text + err
    mp4 = only_mp4(out)
    assert pictures(mp4) == device_pictures([p for p, _, _ in found])
    assert f"verified: {len(found)} segment(s)" not in text  # said as a range, not a count
    assert f"{len(found)} segment(s), signed by dev1's key" in text
    report = proof_report(mp4)
    assert report["keys"] == [key["dev1"].public_line("dev1")]
    assert set(statuses(report).values()) == {"verified"} and report["gaps"] == []
    assert_samples_match_their_records(mp4, report)


def test_a_segment_deleted_from_the_container_shows_as_missing_with_its_time_range(
    azurite, container, tmp_path, capsys, keys
):
    name, client = container
    folder, key = keys
    spool = signed_footage(tmp_path, key["dev1"])
    found = segments(spool)
    upload_whole(client, spool)
    gone = found[2]
    client.delete_blob(gone[2])  # the account key can delete: the chain still tells
    out = tmp_path / "out"

    status, text, _ = fetch(capsys, tmp_path, azurite, name, out, keys=folder)

    assert status == 1, text
    before, after = found[1][1], found[3][1]
    assert f"MISSING: dev1: segment(s) between {found[1][2]} and {found[3][2]}" in text
    kept = [p for i, (p, _, _) in enumerate(found) if i != 2]
    assert pictures(only_mp4(out)) == device_pictures(kept)
    [gap] = proof_report(only_mp4(out))["gaps"]
    assert iso(gap["from"]) == before.end and iso(gap["to"]) == after.start
    assert gap["to"] != gap["from"] and gone[1].start >= iso(gap["from"])


def test_a_byte_flipped_in_a_blob_shows_as_altered_and_the_mp4_leaves_it_out(
    azurite, container, tmp_path, capsys, keys
):
    name, client = container
    folder, key = keys
    spool = signed_footage(tmp_path, key["dev1"])
    found = segments(spool)
    upload_whole(client, spool)
    path, rec, blob = found[1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    # Whoever holds the account key replaces it, with a fresh MD5 and the same metadata.
    client.upload_blob(
        blob,
        bytes(data),
        overwrite=True,
        metadata=rec.to_blob_metadata(),
        content_settings=ContentSettings(content_md5=hashlib.md5(data).digest()),
    )
    out = tmp_path / "out"

    status, text, _ = fetch(capsys, tmp_path, azurite, name, out, keys=folder)

    assert status == 1, text
    assert f"ALTERED: {blob}: its bytes do not match its record's SHA-256; left out" in text
    kept = [p for i, (p, _, _) in enumerate(found) if i != 1]
    assert pictures(only_mp4(out)) == device_pictures(kept)
    report = proof_report(only_mp4(out))
    [altered] = [s for s in report["segments"] if s["status"] == "altered"]
    assert altered["mp4"] is None and altered["record"] == rec.proof
    assert "MISSING" not in text  # its record is valid: the chain is whole


@pytest.mark.parametrize("signed", ["by its own key", "by its key as dev1", "not at all"])
def test_a_segment_uploaded_under_another_devices_prefix_is_reported_and_left_out(
    azurite, container, tmp_path, capsys, keys, signed
):
    name, client = container
    folder, key = keys
    spool = signed_footage(tmp_path, key["dev1"])
    found = segments(spool)
    upload_whole(client, spool)
    # A stolen dev2 (its real key, its create-only credential) records and slips a
    # segment in among dev1's, between its second and third.
    thief = record(tmp_path / "thief", 30, SEG, device="dev2", wall_clock=clock(T0))
    [(path, rec, _)] = segments(thief)
    when = found[1][1].start + timedelta(milliseconds=500)
    fake = SegmentName(when, "0badc0de", 2).blob_name("dev1")
    meta = rec.to_blob_metadata()
    if signed != "not at all":
        forged = fields_of(path, thief.read_metadata(path), prev="")
        if signed == "by its key as dev1":
            forged = {**forged, "device": "dev1", "name": fake.rpartition("/")[2]}
        meta["proof"] = json.dumps(key["dev2"].sign(forged))
    meta["device"] = "dev1"
    stolen = ContainerClient.from_container_url(azurite.sas_url(name, "c"))
    data = path.read_bytes()
    stolen.upload_blob(
        fake,
        data,
        metadata=meta,
        content_settings=ContentSettings(content_md5=hashlib.md5(data).digest()),
    )
    out = tmp_path / "out"

    status, text, _ = fetch(capsys, tmp_path, azurite, name, out, keys=folder)

    assert status == 1, text
    word = "BAD SIGNATURE" if signed == "by its key as dev1" else "NO VALID RECORD"
    assert f"{word}: {fake}: " in text and "; left out" in text
    assert pictures(only_mp4(out)) == device_pictures([p for p, _, _ in found])
    assert statuses(proof_report(only_mp4(out)))[fake.rpartition("/")[2]] in (
        "bad_signature",
        "no_valid_record",
    )

    # Asked for, it is stitched, and still reported.
    status, text, _ = fetch(
        capsys, tmp_path, azurite, name, tmp_path / "all", "--include-unverified", keys=folder
    )
    assert status == 1 and "stitched (--include-unverified)" in text
    assert len(pictures(only_mp4(tmp_path / "all"))) == 150 + 30


@pytest.mark.parametrize("sent", ["live", "whole"])
def test_bytes_appended_to_a_finished_blob_are_reported_and_ignored(
    azurite, container, tmp_path, capsys, keys, sent
):
    name, client = container
    folder, key = keys
    spool = signed_footage(tmp_path, key["dev1"], frames=90)
    found = segments(spool)
    files = [p for p, _, _ in found]
    extra = files[0].read_bytes()[-188 * 20 :]  # a well-formed frame of another segment
    if sent == "live":
        names = upload_live(client, spool)
        stolen = ContainerClient.from_container_url(azurite.sas_url(name, "ca"))
        stolen.get_blob_client(names[1]).append_block(extra)
    else:  # whoever holds the account key writes it again, longer, with a fresh MD5
        names = upload_whole(client, spool)
        data = files[1].read_bytes() + extra
        client.upload_blob(
            names[1],
            data,
            overwrite=True,
            metadata=found[1][1].to_blob_metadata(),
            content_settings=ContentSettings(content_md5=hashlib.md5(data).digest()),
        )
    out = tmp_path / "out"

    status, text, _ = fetch(capsys, tmp_path, azurite, name, out, keys=folder)

    assert status == 1, text
    assert f"appended: {names[1]}: {len(extra)} bytes after the device's; cut off" in text
    assert pictures(only_mp4(out)) == device_pictures(files)
    report = proof_report(only_mp4(out))
    [entry] = [s for s in report["segments"] if s["name"] == names[1]]
    assert entry["status"] == "verified" and entry["appended_bytes"] == len(extra)


def unfinished(tmp_path, spool, key, prev_from: int = -1):
    """The spool's last segment as the device was writing it when it died: remuxed with
    signed checkpoints (chained after the segment before it); (file, checkpoints)."""
    found = segments(spool)
    last = found[-1][0]
    chain_prev = found[prev_from - 1][1].proof
    target = tmp_path / "open" / last.name
    target.parent.mkdir(exist_ok=True)
    marks = mux_with_checkpoints(last, target, key, "dev1", proof.record_hash(chain_prev))
    return target, marks


def test_an_unfinished_live_blob_verifies_to_its_last_checkpoint(
    azurite, container, tmp_path, capsys, keys
):
    name, client = container
    folder, key = keys
    spool = signed_footage(tmp_path, key["dev1"], frames=90)
    found = segments(spool)
    *finished, (_, last_rec, last_blob) = found
    upload_live_some = [(p, r, b) for p, r, b in finished]
    for path, rec, blob in upload_live_some:
        data = path.read_bytes()
        append(open_live(client, blob, rec), data)
        close_live(client, blob, rec, data)
    open_file, marks = unfinished(tmp_path, spool, key["dev1"])
    assert len(marks) == 3
    data = open_file.read_bytes()
    # The device died a little after its second checkpoint: the cloud has up to there.
    cut = marks[1][0] + 188 * 5 + 50
    append(open_live(client, last_blob, last_rec), data[:cut])
    out = tmp_path / "out"

    status, text, err = fetch(capsys, tmp_path, azurite, name, out, keys=folder)

    assert status == 0, text + err
    expected = device_pictures([p for p, _, _ in finished])
    expected += pictures(open_file, "mpegts")[: marks[1][1]]
    assert pictures(only_mp4(out)) == expected
    assert f"unfinished: {last_blob}: verified up to its last checkpoint ({marks[1][1]} " in text
    entry = [s for s in proof_report(only_mp4(out))["segments"] if s["name"] == last_blob][0]
    assert entry["status"] == "checkpoint" and entry["record"]["size"] == marks[1][0]
    assert entry["mp4"]["samples"] == marks[1][1]


def test_a_device_reboot_in_the_middle_keeps_the_chain_whole(
    azurite, container, tmp_path, capsys, keys
):
    name, client = container
    folder, key = keys
    spool = record(tmp_path / "spool", 60, SEG, device="dev1", wall_clock=clock(T0))
    prev = sign_spool(spool, key["dev1"], boot="aaaaaaaa")
    # Rebooted: a new boot id, timestamps from 0 again, the sequence goes on.
    record(tmp_path / "spool", 60, SEG, device="dev1", wall_clock=clock(T0 + timedelta(seconds=3)))
    sign_spool(spool, key["dev1"], prev=prev, boot="bbbbbbbb")
    found = segments(spool)
    assert {SegmentName.parse(p.name).boot for p, _, _ in found} == {"aaaaaaaa", "bbbbbbbb"}
    upload_whole(client, spool)
    out = tmp_path / "out"

    status, text, err = fetch(capsys, tmp_path, azurite, name, out, keys=folder)

    assert status == 0, text + err
    assert "MISSING" not in text
    assert pictures(only_mp4(out)) == device_pictures([p for p, _, _ in found])
    report = proof_report(only_mp4(out))
    assert set(statuses(report).values()) == {"verified"} and report["gaps"] == []


def test_the_same_footage_from_the_card_and_the_cloud_stitches_to_the_same_mp4(
    azurite, container, tmp_path, capsys, keys
):
    name, client = container
    folder, key = keys
    spool = signed_footage(tmp_path, key["dev1"], frames=150)
    found = segments(spool)
    upload_whole(client, spool)

    status, cloud_text, _ = fetch(capsys, tmp_path, azurite, name, tmp_path / "c", keys=folder)
    assert status == 0, cloud_text
    status, card_text, err = fetch(
        capsys, tmp_path, azurite, None, tmp_path / "k", "--from-card", str(spool.root),
        keys=folder,
    )  # fmt: skip
    assert status == 0, card_text + err

    cloud_mp4, card_mp4 = only_mp4(tmp_path / "c"), only_mp4(tmp_path / "k")
    assert cloud_mp4.name == card_mp4.name
    assert cloud_mp4.read_bytes() == card_mp4.read_bytes()
    assert pictures(card_mp4) == device_pictures([p for p, _, _ in found])
    assert set(statuses(proof_report(card_mp4)).values()) == {"verified"}


def test_card_and_cloud_merge_each_segment_once_with_a_crashed_segment_to_its_checkpoint(
    azurite, container, tmp_path, capsys, keys
):
    """The cloud has the older segments (the card dropped them once sent), the card the
    newer ones not yet sent, and in recording/ the one a crash cut short."""
    name, client = container
    folder, key = keys
    spool = signed_footage(tmp_path, key["dev1"], frames=180)
    found = segments(spool)
    open_file, marks = unfinished(tmp_path, spool, key["dev1"])
    *finished, (last_path, _, _) = found
    upload_whole_some(client, finished[:4])
    card = tmp_path / "card"
    shutil.copytree(spool.root, card)
    for path, _, _ in finished[:2]:  # sent and confirmed: gone from the card
        (card / "ready" / path.name).unlink()
        (card / "ready" / path.with_suffix(".json").name).unlink()
    (card / "ready" / last_path.name).unlink()  # still open when the camera crashed
    (card / "ready" / last_path.with_suffix(".json").name).unlink()
    cut = marks[-1][0] + 188 * 8  # past the checkpoint, into the frame after it
    (card / "recording" / last_path.name).write_bytes(open_file.read_bytes()[:cut])
    out = tmp_path / "out"

    status, text, err = fetch(
        capsys, tmp_path, azurite, name, out, "--from-card", str(card), keys=folder
    )

    assert status == 0, text + err
    expected = device_pictures([p for p, _, _ in finished])
    expected += pictures(open_file, "mpegts")[: marks[-1][1]]
    assert pictures(only_mp4(out)) == expected
    report = proof_report(only_mp4(out))
    sources = [s["source"] for s in report["segments"]]
    assert sources[:2] == ["cloud", "cloud"] and sources[-1] == "card"
    assert len(report["segments"]) == len(found)
    assert report["segments"][-1]["status"] == "checkpoint"


def upload_whole_some(client, found) -> None:
    for path, rec, blob in found:
        data = path.read_bytes()
        client.upload_blob(
            blob,
            data,
            metadata=rec.to_blob_metadata(),
            content_settings=ContentSettings(content_md5=hashlib.md5(data).digest()),
        )


def test_pre_key_footage_still_stitches_marked_unverified(
    azurite, container, tmp_path, capsys, keys
):
    name, client = container
    folder, key = keys
    spool = record(tmp_path / "spool", 60, SEG, device="dev1", wall_clock=clock(T0))
    sign_spool(spool, None)  # before the device had a key
    record(tmp_path / "spool", 60, SEG, device="dev1", wall_clock=clock(T0 + timedelta(seconds=2)))
    sign_spool(spool, key["dev1"])  # its first record: prev ""
    found = segments(spool)
    upload_whole(client, spool)
    out = tmp_path / "out"

    status, text, err = fetch(capsys, tmp_path, azurite, name, out, keys=folder)

    assert status == 0, text + err
    assert pictures(only_mp4(out)) == device_pictures([p for p, _, _ in found])
    assert "unverified: 2 segment(s) from before dev1 had a key" in text
    marks = [s["status"] for s in proof_report(only_mp4(out))["segments"]]
    assert marks == ["unverified"] * 2 + ["verified"] * 2

    # Without any key for it, the device's footage stitches as it always did.
    status, text, _ = fetch(capsys, tmp_path, azurite, name, tmp_path / "nokeys")
    assert status == 0, text
    assert "unverified: no key registered for dev1" in text
    assert pictures(only_mp4(tmp_path / "nokeys")) == device_pictures([p for p, _, _ in found])


def test_a_bad_keys_directory_is_refused_with_one_line(azurite, container, tmp_path, capsys):
    name, _ = container
    status, _, err = fetch(
        capsys, tmp_path, azurite, name, tmp_path / "o", "--keys", str(tmp_path / "nope")
    )
    assert (
        status == 2 and err.strip() == f"hatcam fetch: --keys: {tmp_path / 'nope'} does not exist"
    )


_ = SegmentRecord  # the sidecar's record type, read through tests.test_fetch_live.segments


def test_segments_the_camera_daemon_signed_itself_verify(
    azurite, container, tmp_path, capsys, keys
):
    """The real device side (hatcam.device.signing through the segmenter), not this file's
    signing helper: its records verify, chain, and place every frame in the MP4."""
    from hatcam.device.signing import Signer
    from hatcam.device.spool import Spool

    name, client = container
    folder, key = keys
    spool = Spool(tmp_path / "spool").ensure()
    signer = Signer(key["dev1"], "dev1", spool.state)
    record(spool.root, 120, SEG, device="dev1", wall_clock=clock(T0), signer=signer)
    found = segments(spool)
    assert all(rec.proof for _, rec, _ in found)
    upload_whole(client, spool)
    out = tmp_path / "out"

    status, text, err = fetch(capsys, tmp_path, azurite, name, out, keys=folder)

    assert status == 0, text + err
    mp4 = only_mp4(out)
    assert pictures(mp4) == device_pictures([p for p, _, _ in found])
    report = proof_report(mp4)
    assert set(statuses(report).values()) == {"verified"} and report["gaps"] == []
    assert_samples_match_their_records(mp4, report)


def test_a_card_whose_camera_died_mid_segment_verifies_to_the_daemons_last_checkpoint(
    tmp_path, capsys, keys
):
    """The real camera daemon's open segment (checkpoints at each sync), copied off the
    card as a power cut leaves it: recording/ verifies up to its last checkpoint."""
    from hatcam.device.camera.synthetic import SyntheticCamera
    from hatcam.device.segmenter import Segmenter
    from hatcam.device.signing import Signer
    from hatcam.device.spool import Spool

    folder, key = keys
    spool = Spool(tmp_path / "spool").ensure()
    segmenter = Segmenter(
        spool, "dev1", 320, 240, 30, 60.0, wall_clock=clock(T0),
        signer=Signer(key["dev1"], "dev1", spool.state),
    )  # fmt: skip
    camera = SyntheticCamera(320, 240, 30, 300_000, realtime=True, frames=100)
    camera.start(segmenter)
    assert camera.wait(60)
    card = tmp_path / "card"
    shutil.copytree(spool.root, card)  # the power cut: what the card held, nothing closed
    segmenter.close()
    [open_file] = list((card / "recording").glob("*.ts"))
    marks = proof.checkpoints(open_file)
    assert len(marks) >= 2  # a checkpoint at each sync, about once a second
    last_at, last = marks[-1]

    status, text, err = fetch(
        capsys, tmp_path, None, None, tmp_path / "out", "--from-card", str(card), keys=folder
    )

    assert status == 0, text + err
    mp4 = only_mp4(tmp_path / "out")
    assert pictures(mp4) == pictures(open_file, "mpegts")[: last["frames"]]
    [entry] = proof_report(mp4)["segments"]
    assert entry["status"] == "checkpoint" and entry["source"] == "card"
    assert entry["record"]["size"] == last_at
