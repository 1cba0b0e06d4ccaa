"""``hatcam fetch`` against a real Azurite, with footage from the device pipeline.

Segments are made by the synthetic camera through the real segmenter and
uploaded by the real uploader; the stitched MP4s are decoded with PyAV.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import os
import pty
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import av
import pytest
from azure.storage.blob import ContentSettings

from hatcam import cli, config
from hatcam.device.camera.synthetic import SyntheticCamera
from hatcam.device.segmenter import Segmenter
from hatcam.device.spool import Spool
from hatcam.device.uploader import Uploader
from hatcam.fetch import listing
from hatcam.segment import probe

from tests.support.http_proxy import HttpProxy

W, H, FPS, SEG = 320, 240, 30, 2.0
DAY = datetime(2026, 11, 21, tzinfo=UTC)
T0 = DAY.replace(hour=8)


# --- footage ------------------------------------------------------------------------


def record(spool_dir: Path, device: str, start: datetime, frames: int, clock_jump=None):
    """One recording run (one camera daemon lifetime) of ``frames`` frames.

    The wall clock names each segment at open: start + k * SEG, plus ``clock_jump``
    (k, seconds) from segment k on, like an NTP correction in the middle of a run.
    """
    counter = itertools.count()

    def wall_clock():
        k = next(counter)
        jump = clock_jump[1] if clock_jump and k >= clock_jump[0] else 0
        return start + timedelta(seconds=SEG * k + jump)

    spool = Spool(spool_dir).ensure()
    segmenter = Segmenter(spool, device, W, H, FPS, SEG, wall_clock=wall_clock)
    camera = SyntheticCamera(W, H, FPS, 300_000, realtime=False, frames=frames)
    camera.start(segmenter)
    assert camera.wait(60)
    segmenter.close()
    return spool


def settings_for(azurite, container: str, spool_dir: Path, device: str = "dev1"):
    return config.parse(
        {
            "BLOB_CONNECTION_STRING": azurite.connection_string(),
            "HATCAM_BLOB_CONTAINER": container,
            "HATCAM_DEVICE": device,
            "HATCAM_SPOOL_DIR": str(spool_dir),
        }
    )


def upload(azurite, container: str, spool: Spool) -> list[str]:
    """Upload every ready segment the way the device does; the blob names."""
    uploader = Uploader(settings_for(azurite, container, spool.root), spool)
    names = []
    for path in spool.ready_segments():
        meta = spool.read_metadata(path)
        names.append(f"{meta['device']}/{meta['start'][:10]}/{path.name}")
        assert uploader.upload(path)
    return names


def raw_h264(path: Path, frames: int) -> Path:
    """A raw Annex B H.264 file like the original hat cam's recordings."""

    class Sink:
        def __init__(self):
            self.fh = open(path, "wb")  # noqa: SIM115 - closed below

        def outputframe(self, data, keyframe=True, timestamp=None):
            self.fh.write(data)

    sink = Sink()
    camera = SyntheticCamera(W, H, FPS, 300_000, realtime=False, frames=frames)
    camera.start(sink)
    assert camera.wait(60)
    sink.fh.close()
    return path


# --- running the command ------------------------------------------------------------


def write_env(tmp_path: Path, **values) -> Path:
    env = tmp_path / "fetch.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return env


def fetch(capsys, env: Path, out: Path, *args: str):
    """Run ``hatcam --env-file env fetch --out out ...``: (exit status, stdout, stderr)."""
    status = cli.main(["--env-file", str(env), "fetch", "--out", str(out), *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def conn_env(tmp_path, azurite, name):
    return write_env(
        tmp_path, BLOB_CONNECTION_STRING=azurite.connection_string(), HATCAM_BLOB_CONTAINER=name
    )


def mp4s(out: Path) -> list[Path]:
    return sorted(out.glob("*.mp4"))


def decode(path: Path) -> tuple[int, float, list[float]]:
    """(decoded frames, duration in seconds, frame times) of an MP4, read with PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [float(frame.pts * frame.time_base) for frame in container.decode(stream)]
        duration = float(stream.duration * stream.time_base)
        assert container.format.name.startswith("mov,mp4")
    return len(times), duration, times


def moov_before_mdat(path: Path) -> bool:
    data = path.read_bytes()
    return 0 < data.find(b"moov") < data.find(b"mdat")


# --- tests --------------------------------------------------------------------------


def test_one_device_stitches_into_one_exact_mp4_and_second_run_downloads_nothing(
    azurite, container, tmp_path, capsys
):
    name, client = container
    upload(azurite, name, record(tmp_path / "a", "dev1", T0, 20 * FPS * 2))  # 20 segments
    upload(azurite, name, record(tmp_path / "b", "dev2", T0, 3 * FPS * 2))
    env, out = conn_env(tmp_path, azurite, name), tmp_path / "footage"

    status, report, _ = fetch(capsys, env, out, "--device", "dev1", "--since", "2026-11-21")

    assert status == 0, report
    [mp4] = mp4s(out)
    assert mp4.name == "dev1_20261121T080000Z.mp4"
    frames, duration, times = decode(mp4)
    assert frames == 20 * 60  # no frame lost or doubled
    assert duration == pytest.approx(40.0, abs=1 / FPS)
    assert times == pytest.approx([i / FPS for i in range(frames)], abs=1e-4)
    assert moov_before_mdat(mp4)  # +faststart: plays while still downloading
    assert "20 segment(s) in range, 1 file(s); downloaded 20" in report
    assert "1200 frames, 20 segment(s)" in report
    first_mtime = mp4.stat().st_mtime_ns

    status, report, _ = fetch(capsys, env, out, "--device", "dev1", "--since", "2026-11-21")

    assert status == 0, report
    assert "downloaded 0 (0 resumed, 0.0 MB), 20 already here" in report
    assert "[unchanged]" in report
    assert mp4.stat().st_mtime_ns == first_mtime
    assert mp4s(out) == [mp4]


def test_every_device_by_default_and_range_limits_what_is_listed(
    azurite, container, tmp_path, capsys
):
    name, _ = container
    upload(azurite, name, record(tmp_path / "a", "dev1", T0, 4 * 60))
    upload(azurite, name, record(tmp_path / "b", "dev2", T0, 3 * 60))
    # Yesterday's footage of dev1 is out of range and must not be fetched.
    upload(azurite, name, record(tmp_path / "c", "dev1", T0 - timedelta(days=1), 2 * 60))
    env, out = conn_env(tmp_path, azurite, name), tmp_path / "footage"

    status, report, _ = fetch(
        capsys, env, out, "--since", "2026-11-21T07:00Z", "--until", "2026-11-21T09:00Z"
    )

    assert status == 0, report
    assert [p.name for p in mp4s(out)] == [
        "dev1_20261121T080000Z.mp4",
        "dev2_20261121T080000Z.mp4",
    ]
    assert decode(out / "dev1_20261121T080000Z.mp4")[0] == 4 * 60
    assert decode(out / "dev2_20261121T080000Z.mp4")[0] == 3 * 60
    assert not (out / ".cache" / "dev1" / "2026-11-20").exists()


def test_a_gap_longer_than_two_segments_starts_a_new_file(azurite, container, tmp_path, capsys):
    name, _ = container
    spool_dir = tmp_path / "spool"
    # Run 1: 10 segments from 08:00:00. The camera is then off for 5 minutes.
    upload(azurite, name, record(spool_dir, "dev1", T0, 10 * 60))
    later = T0 + timedelta(minutes=5, seconds=20)
    upload(azurite, name, record(spool_dir, "dev1", later, 5 * 60))
    # Run 3: the daemon restarted 1 s after run 2 ended: one file, the second kept.
    upload(azurite, name, record(spool_dir, "dev1", later + timedelta(seconds=11), 5 * 60))
    env, out = conn_env(tmp_path, azurite, name), tmp_path / "footage"

    status, report, _ = fetch(capsys, env, out, "--device", "dev1", "--since", "2026-11-21")

    assert status == 0, report
    first, second = mp4s(out)
    assert first.name == "dev1_20261121T080000Z.mp4"
    assert second.name == "dev1_20261121T080520Z.mp4"
    frames, duration, _ = decode(first)
    assert (frames, duration) == (600, pytest.approx(20.0, abs=1 / FPS))
    frames, duration, times = decode(second)
    assert frames == 600
    assert duration == pytest.approx(21.0, abs=1 / FPS)  # 10 s + 1 s held + 10 s
    jumps = [b - a for a, b in itertools.pairwise(times) if b - a > 1.5 / FPS]
    assert jumps == [pytest.approx(1.0 + 1 / FPS, abs=1e-3)]
    assert "gap, new file: " in report and "for 5m 00.0s" in report
    assert "gap kept in the file: " in report and "for 1.00s" in report


def test_a_clock_correction_inside_a_run_does_not_split_or_shift_the_picture(
    azurite, container, tmp_path, capsys
):
    name, _ = container
    # NTP steps the clock forward by an hour at segment 3: names jump, PTS do not.
    upload(azurite, name, record(tmp_path / "s", "dev1", T0, 6 * 60, clock_jump=(3, 3600)))
    env, out = conn_env(tmp_path, azurite, name), tmp_path / "footage"

    status, report, _ = fetch(capsys, env, out, "--device", "dev1", "--since", "2026-11-21")

    assert status == 0, report
    [mp4] = mp4s(out)
    frames, duration, _ = decode(mp4)
    assert (frames, duration) == (360, pytest.approx(12.0, abs=1 / FPS))
    assert "gap" not in report


def test_an_interrupted_download_resumes_and_a_damaged_cache_is_fetched_again(
    azurite, container, tmp_path, capsys
):
    name, client = container
    names = upload(azurite, name, record(tmp_path / "s", "dev1", T0, 5 * 60))
    env, out = conn_env(tmp_path, azurite, name), tmp_path / "footage"
    cache = out / ".cache"
    blobs = {n: client.download_blob(n).readall() for n in names}
    # An earlier run was cut off half-way through segment 2 ...
    partial = cache / (names[1] + ".part")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(blobs[names[1]][: len(blobs[names[1]]) // 2])
    # ... and left garbage in the .part of segment 4 (resume cannot fix that).
    garbage = cache / (names[3] + ".part")
    garbage.write_bytes(b"\0" * 1000)

    status, report, _ = fetch(capsys, env, out, "--device", "dev1")

    assert status == 0, report
    assert "downloaded 5 (1 resumed" in report
    for blob, data in blobs.items():
        assert (cache / blob).read_bytes() == data
    assert not list(cache.rglob("*.part"))
    assert decode(mp4s(out)[0])[0] == 300

    # A cached segment damaged later (same size) is noticed and fetched again.
    damaged = cache / names[2]
    data = bytearray(damaged.read_bytes())
    data[500] ^= 0xFF
    damaged.write_bytes(bytes(data))

    status, report, _ = fetch(capsys, env, out, "--device", "dev1")

    assert status == 0, report
    assert "downloaded 1 (0 resumed" in report and "4 already here" in report
    assert damaged.read_bytes() == blobs[names[2]]


def test_a_blob_not_matching_its_md5_is_reported_and_left_out(azurite, container, tmp_path, capsys):
    name, client = container
    names = upload(azurite, name, record(tmp_path / "s", "dev1", T0, 5 * 60))
    bad = names[2]
    # The stored MD5 no longer matches the content (as if the body were damaged at rest).
    client.get_blob_client(bad).set_http_headers(
        ContentSettings(content_type="video/mp2t", content_md5=hashlib.md5(b"other").digest())
    )
    env, out = conn_env(tmp_path, azurite, name), tmp_path / "footage"

    status, report, err = fetch(capsys, env, out, "--device", "dev1", "--delete-after")

    assert status == 1
    assert f"{bad}: content does not match its stored MD5" in report
    assert "problem" in err
    assert not (out / ".cache" / bad).exists()
    [mp4] = mp4s(out)
    assert decode(mp4)[0] == 4 * 60  # the bad segment is not in the file ...
    assert (
        "gap kept in the file" in report and "1 segment(s) missing" in report
    )  # ... and it says so
    # --delete-after deleted the good blobs only: the bad one stays for a look.
    assert [b.name for b in client.list_blobs()] == [bad]


def test_the_blobs_metadata_describes_each_file_exactly(azurite, container, tmp_path, capsys):
    """fetch plans the MP4 from the metadata before the files arrive: it must be true."""
    name, client = container
    names = upload(azurite, name, record(tmp_path / "s", "dev1", T0, 3 * 60))
    env, out = conn_env(tmp_path, azurite, name), tmp_path / "footage"
    assert fetch(capsys, env, out)[0] == 0
    remotes = {
        r.name: r
        for r in listing.select(client, ["dev1"], None, T0 + timedelta(days=1), None)["dev1"]
    }
    for blob in names:
        assert remotes[blob].contents == probe(out / ".cache" / blob)


@pytest.mark.parametrize("with_older_blob", [False, True])
def test_metadata_that_does_not_match_the_file_is_not_trusted(
    azurite, container, tmp_path, capsys, with_older_blob
):
    name, client = container
    names = upload(azurite, name, record(tmp_path / "s", "dev1", T0, 4 * 60))
    # A device bug: segment 2 claims 50 frames (found out while stitching) ...
    lying = client.get_blob_client(names[1])
    lying.set_blob_metadata({**lying.get_blob_properties().metadata, "frames": "50"})
    if with_older_blob:  # ... or segment 3 predates the pts metadata (stitched after download)
        older = client.get_blob_client(names[2])
        meta = older.get_blob_properties().metadata
        older.set_blob_metadata({k: v for k, v in meta.items() if k != "first_pts"})
    env, out = conn_env(tmp_path, azurite, name), tmp_path / "footage"

    status, report, _ = fetch(capsys, env, out, "--device", "dev1")

    assert status == 0, report
    [mp4] = mp4s(out)
    frames, duration, times = decode(mp4)
    assert frames == 240  # what the files hold, not what the metadata said
    assert times == pytest.approx([i / FPS for i in range(frames)], abs=1e-4)
    assert "240 frames, 4 segment(s)" in report and "gap" not in report


def legacy_blobs(client, tmp_path: Path, names_frames: list[tuple[str, int]]) -> dict:
    made = {}
    for index, (blob, frames) in enumerate(names_frames):
        data = raw_h264(tmp_path / f"legacy{index}.h264", frames).read_bytes()
        client.upload_blob(blob, data)  # the original uploader set no content type or MD5
        made[blob] = data
    return made


def test_legacy_raw_h264_blobs_stitch_at_the_given_frame_rate(azurite, container, tmp_path, capsys):
    name, client = container
    legacy_blobs(
        client,
        tmp_path,
        [
            ("2026-11-20 10:00:00.h264", 95),  # 3.8 s at 25 fps
            ("2026-11-20 10:00:04.h264", 60),  # follows within a second: same file
            ("2026-11-20 11:30:00.h264", 50),  # an hour and a half later: a new file
        ],
    )
    client.upload_blob("notes.txt", b"not video")  # not footage: ignored
    upload(azurite, name, record(tmp_path / "s", "dev1", T0, 2 * 60))
    env, out = conn_env(tmp_path, azurite, name), tmp_path / "footage"

    status, report, _ = fetch(
        capsys, env, out, "--since", "2026-11-20", "--legacy-fps", "25", "--legacy-tz", "UTC"
    )

    assert status == 0, report
    assert [p.name for p in mp4s(out)] == [
        "dev1_20261121T080000Z.mp4",
        "legacy_20261120T100000Z.mp4",
        "legacy_20261120T113000Z.mp4",
    ]
    frames, duration, times = decode(out / "legacy_20261120T100000Z.mp4")
    assert (frames, duration) == (155, pytest.approx(155 / 25, abs=1 / 25))
    assert times == pytest.approx([i / 25 for i in range(155)], abs=1e-4)
    assert decode(out / "legacy_20261120T113000Z.mp4")[:2] == (50, pytest.approx(2.0, abs=0.04))
    assert "legacy: 3 segment(s) in range, 2 file(s)" in report

    # Only the legacy footage, by its pseudo-device name; a second run downloads nothing.
    status, report, _ = fetch(capsys, env, out, "--device", "legacy", "--legacy-tz", "UTC")
    assert status == 0, report
    assert "downloaded 0 (0 resumed, 0.0 MB), 3 already here" in report
    assert "dev1" not in report.split("\n", 1)[1]


def test_delete_after_with_delete_rights_removes_exactly_the_stitched_blobs(
    azurite, container, tmp_path, capsys
):
    name, client = container
    upload(azurite, name, record(tmp_path / "a", "dev1", T0, 4 * 60))
    kept = upload(azurite, name, record(tmp_path / "b", "dev1", T0 + timedelta(hours=2), 2 * 60))
    env = write_env(tmp_path, HATCAM_BLOB_SAS_URL=azurite.sas_url(name, "rld"))
    out = tmp_path / "footage"

    in_range = ["--device", "dev1", "--since", "2026-11-21T07:00Z", "--until", "2026-11-21T09:00Z"]

    status, report, _ = fetch(capsys, env, out, *in_range, "--delete-after")

    assert status == 0, report
    assert decode(mp4s(out)[0])[0] == 4 * 60
    assert "deleted 4 of 4 blob(s)" in report
    assert sorted(b.name for b in client.list_blobs()) == sorted(kept)


def test_delete_after_on_a_later_run_checks_the_existing_mp4_first(
    azurite, container, tmp_path, capsys
):
    name, client = container
    upload(azurite, name, record(tmp_path / "a", "dev1", T0, 3 * 60))
    env = write_env(tmp_path, HATCAM_BLOB_SAS_URL=azurite.sas_url(name, "rld"))
    out = tmp_path / "footage"
    assert fetch(capsys, env, out, "--device", "dev1")[0] == 0
    [mp4] = mp4s(out)
    good = mp4.read_bytes()
    mp4.write_bytes(good[: len(good) // 2].ljust(len(good), b"\0"))  # damaged, same size

    status, report, _ = fetch(capsys, env, out, "--device", "dev1", "--delete-after")

    # The damaged MP4 is noticed and stitched again from the cache before any delete.
    assert status == 0, report
    assert "[written]" in report and "deleted 3 of 3 blob(s)" in report
    assert mp4.read_bytes() == good
    assert not list(client.list_blobs())


def test_delete_after_without_delete_rights_says_so_and_deletes_nothing(
    azurite, container, tmp_path, capsys
):
    name, client = container
    names = upload(azurite, name, record(tmp_path / "a", "dev1", T0, 3 * 60))
    out = tmp_path / "footage"

    # A SAS URL with read + list only: refused before anything is fetched.
    env = write_env(tmp_path, HATCAM_BLOB_SAS_URL=azurite.sas_url(name, "rl"))
    status, _, err = fetch(capsys, env, out, "--device", "dev1", "--delete-after")
    assert status == 2
    assert "sp=rl" in err and "missing d" in err
    assert not out.exists()

    # The same with the SAS inside a connection string.
    token = azurite.sas_url(name, "rl").split("?", 1)[1]
    sas_conn = (
        f"AccountName=devstoreaccount1;BlobEndpoint={azurite.endpoint};"
        f"SharedAccessSignature={token}"
    )
    env = write_env(tmp_path, BLOB_CONNECTION_STRING=sas_conn, HATCAM_BLOB_CONTAINER=name)
    status, _, err = fetch(capsys, env, out, "--device", "dev1", "--delete-after")
    assert status == 2
    assert "--delete-after needs delete rights" in err and "sp=rl" in err
    assert not out.exists()

    # Without --delete-after the read-only credential fetches fine.
    status, report, _ = fetch(capsys, env, out, "--device", "dev1")
    assert status == 0, report
    assert decode(mp4s(out)[0])[0] == 3 * 60
    assert sorted(b.name for b in client.list_blobs()) == sorted(names)


def test_a_refused_delete_stops_at_the_first_blob_and_is_reported(azurite, container, tmp_path):
    """The service's own 403 (rights the SAS URL hides, e.g. a revoked policy)."""
    from hatcam.blob import container_client
    from hatcam.fetch.command import Fetch, build_args

    name, client = container
    names = upload(azurite, name, record(tmp_path / "a", "dev1", T0, 3 * 60))
    settings = config.parse({"HATCAM_BLOB_SAS_URL": azurite.sas_url(name, "rl")})
    job = Fetch(settings, build_args(["--out", str(tmp_path / "out"), "--delete-after"]))
    job.client = container_client(settings)

    assert job.delete(names) == 0
    [problem] = job.problems
    assert "no delete right" in problem and "nothing was deleted" in problem
    assert sorted(b.name for b in client.list_blobs()) == sorted(names)


def test_fetch_on_a_laptop_ignores_the_device_settings(azurite, container, tmp_path, capsys):
    """The laptop needs a blob credential, nothing else: a device setting that the camera
    would refuse (or a computer name that is no device name) does not stop a fetch."""
    name, _ = container
    env = write_env(
        tmp_path,
        BLOB_CONNECTION_STRING=azurite.connection_string(),
        HATCAM_BLOB_CONTAINER=name,
        HATCAM_DEVICE="Alice's Laptop",
        HATCAM_FPS="fast",
    )
    status, report, err = fetch(capsys, env, tmp_path / "footage")
    assert status == 0, err
    assert "no footage in range" in report
    # The camera, given the same file, refuses it.
    assert cli.main(["--env-file", str(env), "check"]) == 2
    assert "HATCAM_FPS: must be a whole number" in capsys.readouterr().err


def test_bad_options_are_refused_with_a_clear_line(azurite, container, tmp_path, capsys):
    name, _ = container
    env, out = conn_env(tmp_path, azurite, name), tmp_path / "footage"
    for args, words in [
        (["--since", "tomorrow-ish"], "not a time"),
        (["--since", "2026-11-21", "--until", "2026-11-20"], "is not before"),
        (["--device", "Bad_Name"], "not a device name"),
        (["--legacy-tz", "Mars/Olympus"], "unknown time zone"),
    ]:
        status, _, err = fetch(capsys, env, out, *args)
        assert status == 2, args
        assert words in err
    status, report, _ = fetch(capsys, env, out, "--device", "nosuch")
    assert status == 0 and "no footage in range" in report


def test_time_words_and_dates_cover_whole_local_days():
    from hatcam.fetch.listing import parse_when

    now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    today = parse_when("today", end=False, now=now)
    assert parse_when("today", end=True, now=now) - today == timedelta(days=1)
    assert today - parse_when("yesterday", end=False, now=now) == timedelta(days=1)
    assert parse_when("yesterday", end=True, now=now) == today
    assert parse_when("2026-11-21T08:30+01:00", end=False) == datetime(
        2026, 11, 21, 7, 30, tzinfo=UTC
    )
    assert parse_when("2026-11-21T08:30Z", end=True) == datetime(2026, 11, 21, 8, 30, tzinfo=UTC)
    assert parse_when("now", end=True, now=now) == now


def test_cache_record_lists_what_was_verified(azurite, container, tmp_path, capsys):
    """verified.json holds each blob's MD5 as the store has it (used to skip re-reads)."""
    name, client = container
    names = upload(azurite, name, record(tmp_path / "a", "dev1", T0, 2 * 60))
    env, out = conn_env(tmp_path, azurite, name), tmp_path / "footage"
    assert fetch(capsys, env, out)[0] == 0
    entries = json.loads((out / ".cache" / "verified.json").read_text())
    for blob in names:
        stored = client.get_blob_client(blob).get_blob_properties().content_settings.content_md5
        assert entries[blob]["md5"] == base64.b64encode(stored).decode()
        assert entries[blob]["info"]["frames"] == 60


def test_a_terminal_gets_a_progress_bar_and_a_pipe_gets_plain_lines(azurite, container, tmp_path):
    name, _ = container
    upload(azurite, name, record(tmp_path / "s", "dev1", T0, 2 * 60))
    env = conn_env(tmp_path, azurite, name)
    command = [sys.executable, "-m", "hatcam.cli", "--env-file", str(env), "fetch", "--out"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HATCAM_")}

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*command, str(tmp_path / "tty")], stdout=follower, stderr=follower, env=clean
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(60) == 0
    os.close(leader)
    shown = b"".join(chunks).decode(errors="replace")
    assert "━" in shown and "2/2 segments" in shown  # rich's bar, bytes and segments

    piped = subprocess.run(
        [*command, str(tmp_path / "pipe")], capture_output=True, text=True, env=clean, timeout=60
    )
    assert piped.returncode == 0, piped.stderr
    assert "━" not in piped.stdout and "\x1b[" not in piped.stdout
    assert "downloading 2 segment(s)" in piped.stdout
    assert "downloaded 2/2 segment(s)" in piped.stdout


# --- README promises: remux, local time, --max-gap, --jobs, exit status ----------------


def nal_units(packet: bytes, length_size: int | None) -> list[bytes]:
    """A packet's H.264 NAL units, without their framing: Annex B start codes (MPEG-TS)
    or ``length_size``-byte lengths (MP4). The trailing zeros a 4-byte start code leaves
    on the unit before it are not the unit's (a NAL unit never ends in a zero byte)."""
    if length_size is None:
        return [u.rstrip(b"\0") for u in packet.split(b"\0\0\1") if u.rstrip(b"\0")]
    units, at = [], 0
    while at < len(packet):
        size = int.from_bytes(packet[at : at + length_size], "big")
        units.append(packet[at + length_size : at + length_size + size])
        at += length_size + size
    return units


def h264_packets(source, fmt: str) -> list[list[bytes]]:
    """Every video packet of a file (path or bytes), as its list of NAL units."""
    source = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    with av.open(source, format=fmt) as container:
        stream = container.streams.video[0]
        extra = stream.codec_context.extradata
        # avcC (MP4) names the length size in its fifth byte; Annex B has no extradata
        # of that shape (it starts with a start code).
        length_size = (extra[4] & 3) + 1 if fmt == "mp4" else None
        return [nal_units(bytes(p), length_size) for p in container.demux(stream) if p.size]


def test_the_mp4_holds_the_segments_h264_byte_for_byte(azurite, container, tmp_path, capsys):
    """ "remuxed (never re-encoded)": every NAL unit the camera encoded is in the MP4 as it
    was uploaded, in order, and nothing else is."""
    name, client = container
    names = upload(azurite, name, record(tmp_path / "s", "dev1", T0, 4 * 60))
    env, out = conn_env(tmp_path, azurite, name), tmp_path / "footage"

    status, report, _ = fetch(capsys, env, out, "--device", "dev1")

    assert status == 0, report
    [mp4] = mp4s(out)
    uploaded = [
        units
        for blob in names
        for units in h264_packets(client.download_blob(blob).readall(), "mpegts")
    ]
    written = h264_packets(mp4, "mp4")
    assert len(written) == len(uploaded) == 240
    for index, (mine, theirs) in enumerate(zip(written, uploaded, strict=True)):
        assert mine == theirs, f"frame {index} differs from the uploaded segment's"


def run_fetch_cli(env: Path, out: Path, *args: str, tz: str) -> subprocess.CompletedProcess:
    """``hatcam fetch`` in its own process, with the time zone ``tz`` (TZ is read once)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HATCAM_")}
    return subprocess.run(
        [sys.executable, "-m", "hatcam.cli", "--env-file", str(env), "fetch", "--out", str(out)]
        + list(args),
        capture_output=True,
        text=True,
        env={**clean, "TZ": tz},
        timeout=120,
    )


def test_since_and_until_are_local_time_unless_they_carry_an_offset(azurite, container, tmp_path):
    name, _ = container
    # Three recordings, 08:00Z, 14:00Z and 16:00Z on 21 November: in Tokyo (UTC+9, no
    # summer time) 17:00 and 23:00 on the 21st, and 01:00 on the 22nd.
    for hour in (8, 14, 16):
        upload(azurite, name, record(tmp_path / f"s{hour}", "dev1", DAY.replace(hour=hour), 120))
    env = conn_env(tmp_path, azurite, name)

    def fetched(out: str, *args: str) -> list[str]:
        done = run_fetch_cli(env, tmp_path / out, "--device", "dev1", *args, tz="Asia/Tokyo")
        assert done.returncode == 0, done.stdout + done.stderr
        return [p.name for p in mp4s(tmp_path / out)]

    # 16:30 to 23:30 Tokyo time is 07:30Z to 14:30Z (read as UTC it would hold none).
    assert fetched("local", "--since", "2026-11-21T16:30", "--until", "2026-11-21T23:30") == [
        "dev1_20261121T080000Z.mp4",
        "dev1_20261121T140000Z.mp4",
    ]
    # With an offset the zone does not matter: 15:30Z to 17:00Z.
    assert fetched(
        "offset", "--since", "2026-11-21T15:30Z", "--until", "2026-11-21T18:00+01:00"
    ) == ["dev1_20261121T160000Z.mp4"]
    # A date is a local day: the 22nd in Tokyo began at 15:00Z on the 21st.
    assert fetched("day", "--since", "2026-11-22", "--until", "2026-11-22") == [
        "dev1_20261121T160000Z.mp4"
    ]


def test_max_gap_splits_at_a_longer_gap_and_keeps_a_shorter_one(
    azurite, container, tmp_path, capsys
):
    name, _ = container
    # 6 s of footage, the camera off for exactly 10 s, 6 s more.
    upload(azurite, name, record(tmp_path / "a", "dev1", T0, 3 * 60))
    upload(azurite, name, record(tmp_path / "b", "dev1", T0 + timedelta(seconds=16), 3 * 60))
    env = conn_env(tmp_path, azurite, name)

    status, report, _ = fetch(capsys, env, tmp_path / "long", "--max-gap", "11")

    assert status == 0, report
    [mp4] = mp4s(tmp_path / "long")
    frames, duration, _ = decode(mp4)
    assert (frames, duration) == (360, pytest.approx(22.0, abs=1 / FPS))  # the gap held
    assert "gap kept in the file: " in report and "for 10.00s" in report

    status, report, _ = fetch(capsys, env, tmp_path / "short", "--max-gap", "9")

    assert status == 0, report
    assert [p.name for p in mp4s(tmp_path / "short")] == [
        "dev1_20261121T080000Z.mp4",
        "dev1_20261121T080016Z.mp4",
    ]
    assert [decode(p)[0] for p in mp4s(tmp_path / "short")] == [180, 180]
    assert "gap, new file: " in report and "for 10.00s" in report


class WatchingProxy(HttpProxy):
    """In front of Azurite: counts blob downloads in flight at once; runs
    ``before_download(path)``, then holds the request ``hold`` seconds, before passing
    one on."""

    def __init__(self, upstream_port: int, before_download=None, hold: float = 1.0):
        super().__init__(upstream_port)
        self.before_download = before_download
        self.hold_download = hold
        self.in_flight = 0
        self.most_in_flight = 0
        self.downloads = 0

    def _exchange(self, client, upstream, head: bytes, pending: bytes) -> bool:
        method, path = head.split(b" ", 2)[:2]
        download = method == b"GET" and b"comp=" not in path and b"restype=" not in path
        if not download:
            return super()._exchange(client, upstream, head, pending)
        with self.lock:
            self.downloads += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.before_download:
                self.before_download(path.decode())
            time.sleep(self.hold_download)  # long enough for every worker to be under way
            return super()._exchange(client, upstream, head, pending)
        finally:
            with self.lock:
                self.in_flight -= 1


def proxied_env(tmp_path, azurite, name, proxy: HttpProxy) -> Path:
    through = azurite.connection_string().replace(f":{azurite.port}/", f":{proxy.port}/")
    return write_env(tmp_path, BLOB_CONNECTION_STRING=through, HATCAM_BLOB_CONTAINER=name)


@pytest.mark.parametrize("jobs", [1, 4])
def test_jobs_n_downloads_n_blobs_at_once(azurite, container, tmp_path, capsys, jobs):
    name, _ = container
    upload(azurite, name, record(tmp_path / "s", "dev1", T0, 8 * 60))  # 8 blobs

    with WatchingProxy(azurite.port) as proxy:
        env = proxied_env(tmp_path, azurite, name, proxy)
        status, report, _ = fetch(capsys, env, tmp_path / "out", "--jobs", str(jobs))

    assert status == 0, report
    assert proxy.downloads == 8
    assert proxy.most_in_flight == jobs, f"{proxy.most_in_flight} downloads at once"
    assert decode(mp4s(tmp_path / "out")[0])[0] == 480


def test_a_failed_download_exits_non_zero_naming_each_blob(azurite, container, tmp_path, capsys):
    name, client = container
    names = upload(azurite, name, record(tmp_path / "s", "dev1", T0, 6 * 60))
    vanishing = [names[1], names[4]]

    def before_download(path: str) -> None:
        # Listed, then deleted by someone else (another --delete-after) before it arrived.
        blob = path.split("?")[0].split(f"/{name}/", 1)[1]
        if blob in vanishing and client.get_blob_client(blob).exists():
            client.delete_blob(blob)

    with WatchingProxy(azurite.port, before_download, hold=0) as proxy:
        env = proxied_env(tmp_path, azurite, name, proxy)
        status, report, err = fetch(capsys, env, tmp_path / "out", "--device", "dev1")

    assert status == 1, report
    problems = report.split("\nproblems:\n", 1)[1].splitlines()
    assert len(problems) == 2, report
    for blob, line in zip(vanishing, problems, strict=True):
        assert line.startswith(f"  {blob}: ") and line.endswith("; not stitched"), line
    assert "2 FAILED" in report and "2 problem(s)" in err
    assert sum(decode(p)[0] for p in mp4s(tmp_path / "out")) == 4 * 60  # the rest is there


def test_an_mp4_that_cannot_be_written_exits_non_zero_naming_it(
    azurite, container, tmp_path, capsys
):
    name, _ = container
    upload(azurite, name, record(tmp_path / "a", "dev1", T0, 2 * 60))
    upload(azurite, name, record(tmp_path / "b", "dev2", T0, 2 * 60))
    env, out = conn_env(tmp_path, azurite, name), tmp_path / "footage"
    # Something in the way of both files (a directory: refused even to root).
    for device in ("dev1", "dev2"):
        (out / f"{device}_20261121T080000Z.mp4").mkdir(parents=True)

    status, report, err = fetch(capsys, env, out)

    assert status == 1, report
    for device in ("dev1", "dev2"):
        assert f"{device}_20261121T080000Z.mp4: could not be written" in report
        assert f"{device}_20261121T080000Z.mp4  [NOT WRITTEN]" in report
    assert "2 problem(s)" in err
