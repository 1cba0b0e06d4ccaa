"""``hatcam fetch`` of live segments (append blobs), against a real Azurite.

The blobs are built the way a live device builds them: an append blob created
create-only with the metadata known at open, the segment's real bytes appended in
chunks at their append positions, then the create-only closing record
``<blob>.end``. What the MP4 holds is checked by decoding it and comparing each
picture with the device's own segment files.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from dataclasses import replace
from pathlib import Path

import av
import pytest
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.storage.blob import ContainerClient, ContentSettings

from hatcam import cli
from hatcam.segment import (
    ClosingRecord,
    SegmentName,
    SegmentRecord,
    closing_record_name,
    day_index_of,
    index_line,
    open_blob_metadata,
)

from tests.support.footage import record

CHUNK = 16 * 1024  # a few appends per segment, like the device's once-a-second chunks
TS = 188


# --- the device's side, as the uploader does it -----------------------------------------


def segments(spool) -> list[tuple[Path, SegmentRecord, str]]:
    """(file, record, blob name) of every closed segment, oldest first."""
    found = []
    for path in spool.ready_segments():
        rec = SegmentRecord.from_sidecar(spool.read_metadata(path))
        found.append((path, rec, SegmentName.parse(path.name).blob_name(rec.device)))
    return found


def open_live(client: ContainerClient, blob: str, rec: SegmentRecord):
    c = rec.contents
    meta = open_blob_metadata(rec.device, rec.start, rec.clock_synced, c.width, c.height)
    handle = client.get_blob_client(blob)
    handle.create_append_blob(metadata=meta, match_condition=MatchConditions.IfMissing)
    return handle


def append(handle, data: bytes, offset: int = 0) -> None:
    for at in range(0, len(data), CHUNK):
        chunk = data[at : at + CHUNK]
        handle.append_block(chunk, appendpos_condition=offset + at, validate_content=True)


def close_live(client: ContainerClient, blob: str, rec: SegmentRecord, data: bytes, md5=None):
    closing = ClosingRecord(rec, len(data), md5 or hashlib.md5(data).hexdigest())
    client.upload_blob(
        closing_record_name(blob),
        closing.to_json(),
        metadata=closing.to_metadata(),
        overwrite=False,
    )
    index = client.get_blob_client(day_index_of(blob))  # its line in the day index
    with contextlib.suppress(ResourceExistsError):
        index.create_append_blob(headers={"If-None-Match": "*"})
    index.append_block(index_line(blob, closing))


def send_finished(client: ContainerClient, found) -> list[str]:
    """Each of ``found`` (from ``segments``) sent live and finished with its closing
    record; their blob names."""
    for path, rec, blob in found:
        data = path.read_bytes()
        append(open_live(client, blob, rec), data)
        close_live(client, blob, rec, data)
    return [blob for _, _, blob in found]


def upload_live(client: ContainerClient, spool) -> list[str]:
    """Every segment sent live and finished with its closing record."""
    return send_finished(client, segments(spool))


def upload_whole(client: ContainerClient, spool) -> list[str]:
    """Every segment as one block blob with Content-MD5 and metadata (the older path)."""
    names = []
    for path, rec, blob in segments(spool):
        data = path.read_bytes()
        settings = ContentSettings(
            content_type="video/mp2t", content_md5=hashlib.md5(data).digest()
        )
        client.upload_blob(blob, data, metadata=rec.to_blob_metadata(), content_settings=settings)
        names.append(blob)
    return names


# --- the operator's side ----------------------------------------------------------------


def fetch(capsys, tmp_path: Path, azurite, container: str, out: Path, *args: str):
    env = tmp_path / f"{container}.env"
    env.write_text(
        f"BLOB_CONNECTION_STRING={azurite.connection_string()}\nHATCAM_BLOB_CONTAINER={container}\n"
    )
    status = cli.main(["--env-file", str(env), "fetch", "--out", str(out), *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def pictures(path: Path, fmt: str | None = None) -> list[str]:
    """A hash of every decoded picture, in order."""
    with av.open(str(path), format=fmt) as container:
        return [
            hashlib.md5(frame.to_ndarray().tobytes()).hexdigest()
            for frame in container.decode(video=0)
        ]


def device_pictures(files: list[Path]) -> list[str]:
    """What the device recorded, decoded from its own segment files."""
    return [p for path in files for p in pictures(path, "mpegts")]


def frame_offsets(path: Path) -> list[int]:
    """Where each frame's PES starts in a TS file (byte offsets)."""
    with av.open(str(path), format="mpegts") as container:
        return [p.pos for p in container.demux(video=0) if p.size and p.pts is not None]


def only_mp4(out: Path) -> Path:
    [mp4] = sorted(out.glob("*.mp4"))
    return mp4


# --- tests ------------------------------------------------------------------------------


def test_finished_live_segments_stitch_into_the_same_pictures_as_whole_segments(
    azurite, container, tmp_path, capsys
):
    name, client = container
    spool = record(tmp_path / "spool", 150)
    files = [path for path, _, _ in segments(spool)]
    assert len(files) >= 4
    live = upload_live(client, spool)
    whole_name = f"whole-{uuid.uuid4().hex[:12]}"
    whole_client = azurite.container(whole_name)
    try:
        upload_whole(whole_client, spool)
        status, report, _ = fetch(capsys, tmp_path, azurite, name, tmp_path / "live")
        assert status == 0, report
        status, whole_report, _ = fetch(capsys, tmp_path, azurite, whole_name, tmp_path / "whole")
        assert status == 0, whole_report
    finally:
        whole_client.delete_container()

    mp4 = only_mp4(tmp_path / "live")
    assert mp4.name == only_mp4(tmp_path / "whole").name
    expected = device_pictures(files)
    assert len(expected) == 150
    assert pictures(mp4) == expected
    assert pictures(only_mp4(tmp_path / "whole")) == expected
    assert f"{len(live)} sent live and finished" in report
    assert "unfinished (no closing record)" not in report and "problem" not in report

    # A second run downloads nothing more: the cache is verified by the closing records.
    status, report, _ = fetch(capsys, tmp_path, azurite, name, tmp_path / "live")
    assert status == 0, report
    assert f"downloaded 0 (0 resumed, 0.0 MB), {len(live)} already here" in report
    assert "[unchanged]" in report

    # --delete-after takes each closing record with its segment, and then the emptied
    # day's index: nothing is left over.
    status, report, _ = fetch(capsys, tmp_path, azurite, name, tmp_path / "live", "--delete-after")
    assert status == 0, report
    assert [b.name for b in client.list_blobs()] == []


def test_an_unfinished_segment_cut_mid_packet_still_plays_with_the_rest(
    azurite, container, tmp_path, capsys
):
    name, client = container
    spool = record(tmp_path / "spool", 150)
    found = segments(spool)
    *finished, (last_path, last_rec, last_blob) = found
    send_finished(client, finished)
    # The device died while sending its open segment: the cloud holds a prefix, cut in
    # the middle of a TS packet inside frame k, and no closing record.
    data = last_path.read_bytes()
    offsets = frame_offsets(last_path)
    k = len(offsets) // 2
    cut = (offsets[k] + offsets[k + 1]) // 2 // TS * TS + 100
    assert offsets[k] < cut - 100 and cut < offsets[k + 1] and cut % TS
    handle = open_live(client, last_blob, last_rec)
    append(handle, data[:cut])
    out = tmp_path / "out"

    status, report, err = fetch(capsys, tmp_path, azurite, name, out)

    assert status == 0, report + err
    expected = device_pictures([p for p, _, _ in finished])
    # Frames 0..k-1 of the open segment are whole; frame k was torn and is left out.
    expected += pictures(last_path, "mpegts")[:k]
    assert pictures(only_mp4(out)) == expected
    assert f"unfinished (no closing record): {last_blob}: {k} whole frames kept" in report

    # The device came back and sent the rest: the blob grew, so it is fetched again ...
    append(handle, data[cut:], offset=cut)
    status, report, _ = fetch(capsys, tmp_path, azurite, name, out)
    assert status == 0, report
    assert "downloaded 1 (1 resumed, " in report
    everything = device_pictures([p for p, _, _ in found])
    assert pictures(only_mp4(out)) == everything
    assert f"{len(offsets)} whole frames kept" in report

    # ... and once it is closed, the cached copy verifies against its record: no download.
    close_live(client, last_blob, last_rec, data)
    status, report, _ = fetch(capsys, tmp_path, azurite, name, out)
    assert status == 0, report
    assert f"downloaded 0 (0 resumed, 0.0 MB), {len(found)} already here" in report
    assert "unfinished (no closing record)" not in report
    assert pictures(only_mp4(out)) == everything


@pytest.mark.parametrize("what", ["junk", "a valid extra frame"])
def test_bytes_a_thief_appends_to_a_finished_segment_are_reported_and_left_out(
    azurite, container, tmp_path, capsys, what
):
    name, client = container
    spool = record(tmp_path / "spool", 120)
    found = segments(spool)
    names = upload_live(client, spool)
    files = [path for path, _, _ in found]
    target = names[1]
    # The thief holds the device's credential: create and append, nothing else.
    stolen = ContainerClient.from_container_url(azurite.sas_url(name, "ca"))
    with pytest.raises(HttpResponseError):
        stolen.download_blob(target).readall()  # it cannot read the footage ...
    if what == "junk":
        extra = bytes(range(256)) * 20
    else:  # ... but it can append a well-formed TS frame: the last one of another segment
        other = files[0].read_bytes()
        extra = other[frame_offsets(files[0])[-1] :]
    stolen.get_blob_client(target).append_block(extra)
    out = tmp_path / "out"

    status, report, err = fetch(capsys, tmp_path, azurite, name, out)

    assert status == 1, report
    assert f"{target}: {len(extra)} bytes added after the device finished it; left out" in report
    assert "problem" in err
    assert pictures(only_mp4(out)) == device_pictures(files)  # exactly the device's frames
    assert (out / ".cache" / target).read_bytes() == files[1].read_bytes()

    # The cache stays good, and every run still says what happened to the blob.
    status, report, _ = fetch(capsys, tmp_path, azurite, name, out)
    assert status == 1, report
    assert f"downloaded 0 (0 resumed, 0.0 MB), {len(names)} already here" in report
    assert f"{target}: {len(extra)} bytes added after the device finished it" in report


def test_a_segment_not_matching_its_closing_records_md5_is_reported_and_left_out(
    azurite, container, tmp_path, capsys
):
    name, client = container
    spool = record(tmp_path / "spool", 120)
    found = segments(spool)
    bad = found[1][2]
    for index, (path, rec, blob) in enumerate(found):
        data = path.read_bytes()
        append(open_live(client, blob, rec), data)
        close_live(
            client, blob, rec, data, md5=hashlib.md5(b"other").hexdigest() if index == 1 else None
        )
    out = tmp_path / "out"

    status, report, err = fetch(capsys, tmp_path, azurite, name, out)

    assert status == 1, report
    problems = report.split("\nproblems:\n", 1)[1].splitlines()
    assert len(problems) == 1, report
    assert problems[0].startswith(f"  {bad}: its first {found[1][0].stat().st_size} bytes")
    assert "do not match the closing record's MD5" in problems[0]
    assert "problem" in err
    assert not (out / ".cache" / bad).exists()
    others = [path for index, (path, _, _) in enumerate(found) if index != 1]
    assert pictures(only_mp4(out)) == device_pictures(others)
    assert "1 segment(s) missing" in report


def test_a_closing_record_without_its_segment_is_reported(azurite, container, tmp_path, capsys):
    name, client = container
    spool = record(tmp_path / "spool", 90)
    found = segments(spool)
    upload_live(client, spool)
    # Its segment is gone (deleted by hand, say): the record alone is no footage.
    gone = found[-1][2]
    client.delete_blob(gone)
    out = tmp_path / "out"

    status, report, _ = fetch(capsys, tmp_path, azurite, name, out)

    assert status == 1, report
    assert f"{gone}.end: closing record without its segment" in report
    expected = device_pictures([path for path, _, _ in found[:-1]])
    assert pictures(only_mp4(out)) == expected


def test_a_recovered_segment_whose_record_lacks_the_picture_size_is_still_verified(
    azurite, container, tmp_path, capsys
):
    """A segment salvaged after a crash goes up with a record that has no picture size:
    its closing record still verifies the bytes, and the file itself is read."""
    name, client = container
    spool = record(tmp_path / "spool", 90)
    found = segments(spool)
    for index, (path, rec, blob) in enumerate(found):
        data = path.read_bytes()
        append(open_live(client, blob, rec), data)
        if index == 1:
            bare = replace(rec.contents, width=None, height=None)
            rec = replace(rec, contents=bare, recovered=True)
        close_live(client, blob, rec, data)
    out = tmp_path / "out"

    status, report, _ = fetch(capsys, tmp_path, azurite, name, out)

    assert status == 0, report
    assert f"{len(found)} sent live and finished" in report
    assert pictures(only_mp4(out)) == device_pictures([path for path, _, _ in found])


def test_delete_after_keeps_an_unfinished_segment_which_may_still_grow(
    azurite, container, tmp_path, capsys
):
    name, client = container
    spool = record(tmp_path / "spool", 90)
    *finished, (last_path, last_rec, last_blob) = segments(spool)
    send_finished(client, finished)
    append(open_live(client, last_blob, last_rec), last_path.read_bytes()[: 20 * TS])

    status, report, _ = fetch(capsys, tmp_path, azurite, name, tmp_path / "out", "--delete-after")

    assert status == 0, report
    # The day index stays too: the unfinished segment's folder is not empty.
    assert [b.name for b in client.list_blobs()] == [last_blob, day_index_of(last_blob)]
    total = 2 * len(finished) + 1
    assert f"deleted {total - 1} of {total} blob(s)" in report
    assert "kept 1 unfinished segment(s)" in report


def test_junk_a_thief_appends_to_an_unfinished_segment_does_not_spoil_the_file(
    azurite, container, tmp_path, capsys
):
    """Nothing can verify an unfinished segment, but junk after its frames must not cost
    the frames before it, nor the rest of the file."""
    name, client = container
    spool = record(tmp_path / "spool", 90)
    found = segments(spool)
    *finished, (last_path, last_rec, last_blob) = found
    send_finished(client, finished)
    data = last_path.read_bytes()
    append(open_live(client, last_blob, last_rec), data)
    stolen = ContainerClient.from_container_url(azurite.sas_url(name, "ca"))
    stolen.get_blob_client(last_blob).append_block(b"\x47" + bytes(range(187)) * 30)

    status, report, _ = fetch(capsys, tmp_path, azurite, name, tmp_path / "out")

    assert status == 0, report
    assert f"unfinished (no closing record): {last_blob}" in report
    assert pictures(only_mp4(tmp_path / "out")) == device_pictures([p for p, _, _ in found])
