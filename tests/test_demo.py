"""`make demo` in a short mode: its summary checked against the blob store and the MP4."""

from __future__ import annotations

import io
import json
import statistics
import subprocess
import sys
from pathlib import Path

import av
import pytest
import redis
from azure.storage.blob import ContainerClient

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "tests" / "vpi" / "demo.py"
STATE = ROOT / ".cache" / "demo" / "hostsvc.json"

pytestmark = pytest.mark.root("the virtual Pi needs root")


def demo(*args: str, timeout=1200) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DEMO), *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def kept_demo(tmp_path_factory):
    """A 30 s demo left running (--keep), so the test can look at what it reported on."""
    out = tmp_path_factory.mktemp("demo")
    summary = out / "summary.json"
    run = demo(
        "--seconds", "30", "--out", str(out / "footage"), "--summary-json", str(summary), "--keep"
    )
    try:
        assert run.returncode == 0, run.stdout + run.stderr
        yield run.stdout, json.loads(summary.read_text()), out / "footage"
    finally:
        cleaned = demo("--clean", "--out", str(out / "footage"), timeout=300)
        assert cleaned.returncode == 0, cleaned.stderr


def test_the_summary_is_what_the_blob_store_holds(kept_demo):
    _, summary, _ = kept_demo
    state = json.loads(STATE.read_text())
    client = ContainerClient.from_connection_string(
        f"DefaultEndpointsProtocol=http;AccountName={state['account']};"
        f"AccountKey={state['account_key']};BlobEndpoint={state['blob_endpoint']};",
        state["container"],
    )
    blobs = list(client.list_blobs(name_starts_with=f"{summary['device']}/", include=["metadata"]))
    assert summary["segments_uploaded"] == len(blobs)
    assert summary["queue_left_on_pi"] == 0
    assert summary["segments_recorded"] == len(blobs), "every segment recorded reached the cloud"
    assert summary["frames_in_segments"] == sum(int(b.metadata["frames"]) for b in blobs)
    assert summary["segments_recorded_during_outage"] >= 1
    assert summary["of_which_uploaded_after_it"] == summary["segments_recorded_during_outage"]
    keys = redis.Redis.from_url(state["redis_url"]).keys("image:*")
    assert summary["stills_stored"] == len(keys) > 0


def test_the_mp4_holds_every_frame_with_no_hole_across_the_outage(kept_demo):
    stdout, summary, footage = kept_demo
    [mp4] = sorted(footage.glob("*.mp4"))
    with av.open(str(mp4)) as container:
        stream = container.streams.video[0]
        seconds = float(stream.time_base)
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None)
    with av.open(str(mp4)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == summary["frames_in_segments"] == summary["mp4"][0]["frames"]
    steps = [b - a for a, b in zip(pts, pts[1:], strict=False)]
    interval = statistics.median(steps)
    start, end = summary["outage_in_file_s"]
    slack = 5  # one segment either side of the outage
    across = [
        (a - pts[0]) * seconds
        for a, b in zip(pts, pts[1:], strict=False)
        if b - a > 1.5 * interval and start - slack <= (a - pts[0]) * seconds <= end + slack
    ]
    assert not across, f"hole(s) across the outage at {across} s"
    duration = (pts[-1] - pts[0] + interval) * seconds
    assert abs(duration - summary["mp4"][0]["duration_s"]) < 2 * interval * seconds
    assert "across the outage:             continuous" in stdout


def test_the_stills_are_jpeg_files(kept_demo):
    _, summary, _ = kept_demo
    assert summary["stills_exported"]
    for path in summary["stills_exported"]:
        with av.open(io.BytesIO(Path(path).read_bytes()), format="mjpeg") as jpeg:
            assert next(jpeg.decode(video=0)).width == 640
