"""The README walk-through: camera and uploader daemons together, then status and check."""

from __future__ import annotations

import io
import json
import signal
import time
import uuid

import av

from tests.support.footage import hatcam, start_hatcam


def test_camera_and_uploader_deliver_playable_gap_free_segments(tmp_path, azurite, redis_server):
    container = f"e2e{uuid.uuid4().hex[:8]}"
    settings = {
        "HATCAM_CAMERA": "synthetic",
        "HATCAM_SPOOL_DIR": tmp_path / "spool",
        "HATCAM_RESOLUTION": "320x240",
        "HATCAM_SEGMENT_SECONDS": "2",
        "HATCAM_MIN_FREE_MB": "1",
        "HATCAM_DEVICE": "hat1",
        "BLOB_CONNECTION_STRING": azurite.connection_string(),
        "HATCAM_BLOB_CONTAINER": container,
        "HATCAM_STILLS": "on",
        "REDIS_URL": redis_server.url,
        "IMAGE_CAPTURE_FREQUENCY": "2",
    }
    camera = start_hatcam("camera", settings=settings, log=tmp_path / "camera.log")
    uploader = start_hatcam("upload", settings=settings, log=tmp_path / "upload.log")
    time.sleep(9)
    camera.send_signal(signal.SIGTERM)
    assert camera.wait(20) == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and list((tmp_path / "spool" / "ready").glob("*.ts")):
        time.sleep(0.2)

    status = hatcam("status", "--json", settings=settings)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["queue_segments"] == 0 and info["uploader"]["uploaded"] >= 4
    assert info["camera"]["state"] == "stopped" and info["camera"]["stills"]["stored"] >= 3
    human = hatcam("status", settings=settings).stdout
    assert "queue:         0 segment(s)" in human and "last error:    none" in human
    uploader.send_signal(signal.SIGTERM)
    assert uploader.wait(20) == 0

    client = azurite.container(container, create=False)
    # The segments (live append blobs; each has its closing record <blob>.end beside it).
    blobs = sorted(
        b.name for b in client.list_blobs(name_starts_with="hat1/") if b.name.endswith(".ts")
    )
    assert len(blobs) >= 4
    pts = []
    for name in blobs:
        data = client.download_blob(name).readall()
        with av.open(io.BytesIO(data), format="mpegts") as ts:
            pts += [p.pts for p in ts.demux(video=0) if p.pts is not None]
        with av.open(io.BytesIO(data), format="mpegts") as ts:
            assert sum(1 for _ in ts.decode(video=0)) > 0
    steps = [b - a for a, b in zip(pts, pts[1:], strict=False)]
    # Real-time capture: steps follow the clock, but no frame is missing or repeated.
    assert min(steps) > 0 and max(steps) < 2 * 3000, f"largest step {max(steps)} (1 frame=3000)"


def verdicts(output: str) -> dict[str, str]:
    """`hatcam check` output as {label: "ok ..." | "FAIL ..."}."""
    return {
        label: rest.strip() for label, rest in (line.split(":", 1) for line in output.splitlines())
    }


def test_check_says_what_works(tmp_path, azurite, redis_server):
    azurite.container("checked")
    (tmp_path / "spool").mkdir()
    base = {
        "HATCAM_SPOOL_DIR": tmp_path / "spool",
        "HATCAM_STILLS": "on",
        "REDIS_URL": redis_server.url,
    }
    good = hatcam(
        "check", settings={**base, "HATCAM_BLOB_SAS_URL": azurite.sas_url("checked", "c")}
    )
    assert good.returncode == 0, good.stdout
    lines = verdicts(good.stdout)
    assert (
        lines["blob storage"].startswith("ok")
        and "credential accepted (create-only" in (lines["blob storage"])
    )
    assert lines["redis"].startswith("ok")

    forged = azurite.sas_url("checked", "c").replace("sig=", "sig=AAAA")
    redis_server.stop()
    bad = hatcam("check", settings={**base, "HATCAM_BLOB_SAS_URL": forged})
    assert bad.returncode == 1
    lines = verdicts(bad.stdout)
    assert (
        lines["blob storage"].startswith("FAIL")
        and "credential is wrong" in (lines["blob storage"])
    )
    assert lines["redis"].startswith("FAIL") and "unreachable" in lines["redis"]
    assert "AAAA" not in bad.stdout + bad.stderr


def test_check_before_first_run_with_a_connection_string(tmp_path, azurite):
    settings = {
        "HATCAM_SPOOL_DIR": tmp_path / "not-yet" / "spool",
        "BLOB_CONNECTION_STRING": azurite.connection_string(),
        "HATCAM_BLOB_CONTAINER": f"new{uuid.uuid4().hex[:8]}",
    }
    result = hatcam("check", settings=settings)
    lines = verdicts(result.stdout)
    assert result.returncode == 0, result.stdout
    assert (
        lines["spool"]
        == f"ok   {tmp_path / 'not-yet' / 'spool'}: not there yet; the camera creates it"
    )
    assert lines["blob storage"].endswith("reachable; the uploader creates the container")
    assert lines["redis"].startswith("ok") and "not configured" in lines["redis"]
